"""Functions that build a tensor: from data (``tensor``), filled (``zeros``, ``ones``, ``full``,
``empty``, their ``*_like`` forms, ``arange``), random (``randn``, ``rand``, ``randint``,
``randperm``), or from several tensors (``stack``, ``cat``: recorded, each backward right
under its forward).

They take torch's keywords: ``dtype`` (for floating values the default dtype, float32 unless
``set_default_dtype`` changed it; int64 for integers), ``device`` (the CPU or None), ``requires_grad``. Sizes are ints or
one tuple (``zeros(2, 3)``, ``zeros((2, 3))``, ``zeros(size=(2, 3))``). The random ones draw
from this rank's generator (``mpdist.random``), the one that ``manual_seed`` seeds and
parameter initialisation uses; ``generator=`` takes a numpy ``Generator`` instead.
"""

from __future__ import annotations

import numbers
from collections.abc import Sequence
from typing import Any

import numpy as np

from mpdist.autograd._tensor import Tensor, _make, overridden
from mpdist.autograd._tensor_base import TensorBase, _raw
from mpdist.autograd.device import check_device
from mpdist.autograd.dtypes import default_complex_dtype, get_default_dtype
from mpdist.random import default_generator

_INT = np.dtype(np.int64)


def _new(
    data: np.ndarray, dtype: Any, device: Any, requires_grad: bool, default: np.dtype | None = None
) -> Tensor:
    """The leaf a factory returns: ``data`` cast to ``dtype`` (else ``default``, else as is)."""
    check_device(device)
    target = dtype if dtype is not None else default
    if target is not None and data.dtype != np.dtype(target):
        data = data.astype(target)
    return Tensor(data, requires_grad=requires_grad)


def _size(name: str, size: Sequence[Any]) -> tuple[int, ...]:
    """A size given as ints or as one sequence of ints, checked."""
    if len(size) == 1 and isinstance(size[0], (tuple, list)):
        size = tuple(size[0])
    dims = []
    for n in size:
        if isinstance(n, bool) or not isinstance(n, (int, np.integer)):
            raise TypeError(
                f"{name}(): size must be ints or one tuple of ints, got {type(n).__name__}"
            )
        if n < 0:
            raise RuntimeError(f"{name}: Dimension size must be non-negative.")
        dims.append(int(n))
    return tuple(dims)


def _sized(name: str, dims: tuple[Any, ...], size: Any) -> tuple[int, ...]:
    """The size from positional ints or the ``size=`` keyword (not both)."""
    if size is not None:
        if dims:
            raise TypeError(f"{name}() got the size both positionally and as size=")
        dims = (size,)
    return _size(name, dims)


def _has_float64(data: Any) -> bool:
    """Whether nested data holds a numpy value (array, scalar or Tensor) of 64-bit floats or
    complex, whose precision torch keeps; Python floats alone take the default dtype."""
    if isinstance(data, (np.ndarray, np.generic, TensorBase)):
        return np.dtype(data.dtype).kind in "fc" and np.dtype(data.dtype).itemsize >= 8
    if isinstance(data, (list, tuple)):
        return any(_has_float64(x) for x in data)
    return False


def tensor(
    data: Any,
    *,
    dtype: Any = None,
    device: Any = None,
    requires_grad: bool = False,
    pin_memory: bool = False,
) -> Tensor:
    """A new leaf tensor holding a copy of ``data`` (never sharing its memory). Without
    ``dtype``: an ndarray or Tensor keeps its dtype; Python floats give float32 and ints int64,
    as torch's default dtype does."""
    raw = data.data if isinstance(data, TensorBase) else data
    arr = np.array(raw, dtype=dtype, copy=True)
    if dtype is None and not isinstance(raw, np.ndarray) and not _has_float64(raw):
        if arr.dtype == np.float64:
            arr = arr.astype(get_default_dtype())
        elif arr.dtype == np.complex128:
            arr = arr.astype(default_complex_dtype())
    return _new(arr, None, device, requires_grad)


def _made(
    make: Any, name: str, dims: Any, size: Any, dtype: Any, device: Any, requires_grad: bool
) -> Tensor:
    """``make(shape, dtype)`` (np.zeros, np.ones, np.empty) as a tensor of the default dtype
    unless ``dtype``, the shape given as ``*dims`` or ``size=``."""
    shape = _sized(name, dims, size)
    return _new(
        make(shape, dtype=get_default_dtype() if dtype is None else dtype),
        None,
        device,
        requires_grad,
    )


def zeros(
    *dims: Any, size: Any = None, dtype: Any = None, device: Any = None, requires_grad: bool = False
) -> Tensor:
    """A tensor of zeros (the default dtype unless ``dtype``)."""
    return _made(np.zeros, "zeros", dims, size, dtype, device, requires_grad)


def ones(
    *dims: Any, size: Any = None, dtype: Any = None, device: Any = None, requires_grad: bool = False
) -> Tensor:
    """A tensor of ones (the default dtype unless ``dtype``)."""
    return _made(np.ones, "ones", dims, size, dtype, device, requires_grad)


def empty(
    *dims: Any, size: Any = None, dtype: Any = None, device: Any = None, requires_grad: bool = False
) -> Tensor:
    """A tensor whose values are whatever the memory held (the default dtype unless ``dtype``)."""
    return _made(np.empty, "empty", dims, size, dtype, device, requires_grad)


def _fill_dtype(value: Any) -> np.dtype:
    """The dtype torch gives ``full`` for a fill value: bool, int64, float32 or complex64."""
    if isinstance(value, (bool, np.bool_)):
        return np.dtype(bool)
    if isinstance(value, numbers.Integral):
        return _INT
    if isinstance(value, numbers.Real):
        return get_default_dtype()
    if isinstance(value, numbers.Complex):
        return default_complex_dtype()
    return np.asarray(value).dtype


def full(
    size: Any,
    fill_value: Any,
    *,
    dtype: Any = None,
    device: Any = None,
    requires_grad: bool = False,
) -> Tensor:
    """A tensor of ``size`` filled with ``fill_value``; its dtype follows the value (bool,
    int64, float32) unless ``dtype`` says otherwise."""
    shape = _size("full", (size,))
    value = _raw(fill_value)
    arr = np.full(shape, value, dtype=_fill_dtype(value) if dtype is None else dtype)
    return _new(arr, None, device, requires_grad)


def _like(input: Any, dtype: Any) -> tuple[tuple[int, ...], np.dtype]:
    """The shape and dtype a ``*_like`` factory copies."""
    arr = input.data if isinstance(input, TensorBase) else np.asarray(input)
    return arr.shape, np.dtype(dtype) if dtype is not None else arr.dtype


def zeros_like(
    input: Any, *, dtype: Any = None, device: Any = None, requires_grad: bool = False, **_: Any
) -> Tensor:
    """Zeros with ``input``'s shape and dtype (``memory_format=`` etc. accepted, unused)."""
    shape, dt = _like(input, dtype)
    return _new(np.zeros(shape, dt), None, device, requires_grad)


def ones_like(
    input: Any, *, dtype: Any = None, device: Any = None, requires_grad: bool = False, **_: Any
) -> Tensor:
    """Ones with ``input``'s shape and dtype."""
    shape, dt = _like(input, dtype)
    return _new(np.ones(shape, dt), None, device, requires_grad)


def empty_like(
    input: Any, *, dtype: Any = None, device: Any = None, requires_grad: bool = False, **_: Any
) -> Tensor:
    """Uninitialised values with ``input``'s shape and dtype."""
    shape, dt = _like(input, dtype)
    return _new(np.empty(shape, dt), None, device, requires_grad)


def full_like(
    input: Any,
    fill_value: Any,
    *,
    dtype: Any = None,
    device: Any = None,
    requires_grad: bool = False,
    **_: Any,
) -> Tensor:
    """``fill_value`` in ``input``'s shape and dtype (the value cast to it, as torch does)."""
    shape, dt = _like(input, dtype)
    return _new(np.full(shape, _raw(fill_value), dtype=dt), None, device, requires_grad)


def _random_like(name: str, input: Any, dtype: Any) -> tuple[tuple[int, ...], np.dtype]:
    """The shape and dtype of a random ``*_like`` factory: a real floating dtype only."""
    shape, dt = _like(input, dtype)
    if dt.kind != "f":  # complex samples would need two draws per value
        raise RuntimeError(f"{name}: expected a floating point dtype, got {dt}")
    return shape, dt


def randn_like(
    input: Any,
    *,
    generator: np.random.Generator | None = None,
    dtype: Any = None,
    device: Any = None,
    requires_grad: bool = False,
    **_: Any,
) -> Tensor:
    """``randn`` in ``input``'s shape and dtype (a floating one), from this rank's generator."""
    shape, dt = _random_like("randn_like", input, dtype)
    arr = _generator(generator).standard_normal(shape)
    return _new(np.asarray(arr), dt, device, requires_grad)


def rand_like(
    input: Any,
    *,
    generator: np.random.Generator | None = None,
    dtype: Any = None,
    device: Any = None,
    requires_grad: bool = False,
    **_: Any,
) -> Tensor:
    """``rand`` in ``input``'s shape and dtype (a floating one), from this rank's generator."""
    shape, dt = _random_like("rand_like", input, dtype)
    arr = _generator(generator).random(shape)
    return _new(np.asarray(arr), dt, device, requires_grad)


def arange(
    start: Any,
    end: Any = None,
    step: Any = 1,
    *,
    dtype: Any = None,
    device: Any = None,
    requires_grad: bool = False,
) -> Tensor:
    """``start, start + step, ...`` up to ``end`` (excluded); ``arange(n)`` counts from 0.
    int64 when every bound is an integer, else float32 (unless ``dtype``)."""
    if end is None:
        start, end = 0, start
    bounds = [_raw(b) for b in (start, end, step)]
    if step == 0:
        raise RuntimeError("step must be nonzero")
    default = _INT if all(isinstance(b, numbers.Integral) for b in bounds) else get_default_dtype()
    # computed in float64 (or int64), then cast: values do not depend on the target precision
    arr = np.arange(*bounds, dtype=None if default == _INT else np.float64)
    return _new(arr, dtype, device, requires_grad, default)


def _generator(generator: np.random.Generator | None) -> np.random.Generator:
    return default_generator() if generator is None else generator


def randn(
    *dims: Any,
    size: Any = None,
    generator: np.random.Generator | None = None,
    dtype: Any = None,
    device: Any = None,
    requires_grad: bool = False,
) -> Tensor:
    """Standard normal samples from this rank's generator (the default dtype unless ``dtype``; the
    samples are drawn in float64 and rounded, so a seed gives the same values in any dtype)."""
    shape = _sized("randn", dims, size)
    arr = _generator(generator).standard_normal(shape)
    return _new(np.asarray(arr), dtype, device, requires_grad, get_default_dtype())


def rand(
    *dims: Any,
    size: Any = None,
    generator: np.random.Generator | None = None,
    dtype: Any = None,
    device: Any = None,
    requires_grad: bool = False,
) -> Tensor:
    """Uniform samples in [0, 1) from this rank's generator (the default dtype unless ``dtype``)."""
    shape = _sized("rand", dims, size)
    arr = _generator(generator).random(shape)
    return _new(np.asarray(arr), dtype, device, requires_grad, get_default_dtype())


def randint(
    *args: Any,
    size: Any = None,
    low: int | None = None,
    high: int | None = None,
    generator: np.random.Generator | None = None,
    dtype: Any = None,
    device: Any = None,
    requires_grad: bool = False,
) -> Tensor:
    """Integers uniform in [low, high) (``low`` defaults to 0), torch's overloads:
    ``randint(high, size)``, ``randint(low, high, size)``; int64 unless ``dtype``."""
    nums = list(args)
    if size is None and nums and isinstance(nums[-1], (tuple, list)):
        size = nums.pop()
    if size is None:
        raise TypeError("randint() missing required argument 'size' (a tuple of ints)")
    if len(nums) == 2 and low is None and high is None:
        low, high = nums
    elif len(nums) == 1 and high is None:
        high = nums[0]
    elif nums:
        raise TypeError("randint() takes randint(high, size) or randint(low, high, size)")
    if high is None:
        raise TypeError("randint() missing required argument 'high'")
    low = 0 if low is None else low
    if low >= high:
        raise RuntimeError(
            f"random_ expects 'from' to be less than 'to', but got from={low} >= to={high}"
        )
    shape = _size("randint", (size,))
    arr = _generator(generator).integers(low, high, shape, dtype=np.int64)
    return _new(arr, dtype, device, requires_grad)


def randperm(
    n: int,
    *,
    generator: np.random.Generator | None = None,
    dtype: Any = None,
    device: Any = None,
    requires_grad: bool = False,
) -> Tensor:
    """A random permutation of ``0 .. n-1`` (int64 unless ``dtype``)."""
    if n < 0:
        raise RuntimeError(f"n must be non-negative, got {n}")
    arr = _generator(generator).permutation(int(n)).astype(np.int64)
    return _new(arr, dtype, device, requires_grad)


def stack(tensors: Sequence[Any], axis: int = 0, *, dim: int | None = None) -> Tensor:
    """Join same-shape tensors along a new axis."""
    if (
        result := overridden("stack", (tensors,), {"axis": axis, "dim": dim})
    ) is not NotImplemented:
        return result
    axis = axis if dim is None else dim
    ts = [t if isinstance(t, Tensor) else Tensor(_raw(t)) for t in tensors]
    out = np.stack([t.data for t in ts], axis=axis)
    ax = axis % out.ndim

    def backward(g: np.ndarray) -> list[np.ndarray]:
        return [np.take(g, i, axis=ax) for i in range(len(ts))]

    return _make(out, ts, backward, "stack")


def cat(tensors: Sequence[Any], axis: int = 0, *, dim: int | None = None) -> Tensor:
    """Join tensors along an existing axis."""
    if (result := overridden("cat", (tensors,), {"axis": axis, "dim": dim})) is not NotImplemented:
        return result
    axis = axis if dim is None else dim
    ts = [t if isinstance(t, Tensor) else Tensor(_raw(t)) for t in tensors]
    out = np.concatenate([t.data for t in ts], axis=axis)
    bounds = np.cumsum([t.data.shape[axis] for t in ts])[:-1]

    def backward(g: np.ndarray) -> list[np.ndarray]:
        return list(np.split(g, bounds, axis=axis))

    return _make(out, ts, backward, "cat")
