"""The torch-level tensor functions (``torch.sin(t)`` -> ``mpdist.autograd.sin(t)``, ...).

Most are the ``Tensor`` method of the same name called on the first argument, which, as in
torch, must be a Tensor (a clear ``TypeError`` otherwise). ``where`` is recorded here, its
backward right under its forward.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from mpdist.autograd._tensor import Axis, Tensor, _make, _unbroadcast, overridden
from mpdist.autograd._tensor_base import _raw


def _tensor_arg(fn: str, value: Any, name: str = "input", position: int = 1) -> Tensor:
    """``value`` when it is a Tensor; torch's TypeError otherwise."""
    if not isinstance(value, Tensor):
        raise TypeError(
            f"{fn}(): argument '{name}' (position {position}) must be Tensor, not "
            f"{type(value).__name__}"
        )
    return value


def sin(input: Tensor) -> Tensor:
    """Elementwise sine (recorded)."""
    return _tensor_arg("sin", input).sin()


def cos(input: Tensor) -> Tensor:
    """Elementwise cosine (recorded)."""
    return _tensor_arg("cos", input).cos()


def exp(input: Tensor) -> Tensor:
    """Elementwise e ** input (recorded)."""
    return _tensor_arg("exp", input).exp()


def log(input: Tensor) -> Tensor:
    """Elementwise natural logarithm (recorded)."""
    return _tensor_arg("log", input).log()


def tanh(input: Tensor) -> Tensor:
    """Elementwise hyperbolic tangent (recorded)."""
    return _tensor_arg("tanh", input).tanh()


def sigmoid(input: Tensor) -> Tensor:
    """Elementwise logistic sigmoid (recorded)."""
    return _tensor_arg("sigmoid", input).sigmoid()


def sqrt(input: Tensor) -> Tensor:
    """Elementwise square root (recorded)."""
    return _tensor_arg("sqrt", input).sqrt()


def abs(input: Tensor) -> Tensor:  # noqa: A001  (torch.abs)
    """Elementwise absolute value (recorded)."""
    return _tensor_arg("abs", input).abs()


def relu(input: Tensor) -> Tensor:
    """Elementwise max(input, 0) (recorded)."""
    return _tensor_arg("relu", input).relu()


def _numpy_spelling(
    fn: str, dim: Axis, keepdim: bool, axis: Axis, keepdims: bool | None
) -> tuple[Axis, bool]:
    """``dim``/``keepdim`` from torch's or numpy's spelling (torch takes ``axis=`` and
    ``keepdims=`` too), not both."""
    if axis is not None:
        if dim is not None:
            raise TypeError(f"{fn}() received both dim and its alias axis")
        dim = axis
    if keepdims is not None:
        keepdim = keepdim or keepdims
    return dim, keepdim


def sum(  # noqa: A001  (torch.sum)
    input: Tensor,
    dim: Axis = None,
    keepdim: bool = False,
    *,
    dtype: Any = None,
    axis: Axis = None,
    keepdims: bool | None = None,
) -> Tensor:
    """Sum over ``dim`` (all by default), optionally cast to ``dtype`` first (recorded).
    ``axis``/``keepdims`` are accepted for ``dim``/``keepdim``, as torch does."""
    dim, keepdim = _numpy_spelling("sum", dim, keepdim, axis, keepdims)
    return _tensor_arg("sum", input).sum(dim=dim, keepdim=keepdim, dtype=dtype)


def mean(
    input: Tensor,
    dim: Axis = None,
    keepdim: bool = False,
    *,
    dtype: Any = None,
    axis: Axis = None,
    keepdims: bool | None = None,
) -> Tensor:
    """Mean over ``dim`` (all by default) (recorded); ``axis``/``keepdims`` as for ``sum``."""
    dim, keepdim = _numpy_spelling("mean", dim, keepdim, axis, keepdims)
    return _tensor_arg("mean", input).mean(dim=dim, keepdim=keepdim, dtype=dtype)


def is_tensor(obj: Any) -> bool:
    """Whether ``obj`` is a Tensor (a Parameter is one); arrays and numbers are not."""
    return isinstance(obj, Tensor)


def flatten(input: Tensor, start_dim: int = 0, end_dim: int = -1) -> Tensor:
    """Merge the axes ``start_dim..end_dim`` into one (recorded)."""
    return _tensor_arg("flatten", input).flatten(start_dim, end_dim)


def split(
    tensor: Tensor, split_size_or_sections: int | Sequence[int], dim: int = 0
) -> tuple[Tensor, ...]:
    """Pieces of ``split_size`` (or of the listed sizes) along ``dim`` (recorded)."""
    return _tensor_arg("split", tensor, "tensor").split(split_size_or_sections, dim)


def chunk(input: Tensor, chunks: int, dim: int = 0) -> tuple[Tensor, ...]:
    """``chunks`` pieces (or fewer) of equal size along ``dim`` (recorded)."""
    return _tensor_arg("chunk", input).chunk(chunks, dim)


def isnan(input: Tensor) -> Tensor:
    """Elementwise NaN test: a boolean tensor."""
    return _tensor_arg("isnan", input).isnan()


def allclose(
    input: Tensor, other: Tensor, rtol: float = 1e-05, atol: float = 1e-08, equal_nan: bool = False
) -> bool:
    """``|input - other| <= atol + rtol * |other|`` everywhere; both Tensors of one dtype."""
    return _tensor_arg("allclose", input).allclose(other, rtol, atol, equal_nan)


def equal(input: Tensor, other: Tensor) -> bool:
    """True when both Tensors have the same shape and the same values."""
    _tensor_arg("equal", other, "other", 2)
    return _tensor_arg("equal", input).equal(other)


def where(condition: Any, input: Any = None, other: Any = None) -> Any:
    """``where(condition, input, other)``: ``input`` where the boolean ``condition`` holds,
    else ``other`` (tensors or scalars, broadcast together); recorded, each side's gradient
    is the incoming gradient where it was picked. ``where(condition)`` alone is the tuple of
    index tensors of the true elements, like ``nonzero(as_tuple=True)``."""
    if (result := overridden("where", (condition, input, other), {})) is not NotImplemented:
        return result
    cond = np.asarray(_raw(condition))
    if input is None and other is None:
        return tuple(Tensor(i.astype(np.int64)) for i in np.nonzero(cond))
    if input is None or other is None:
        raise TypeError("where() takes a condition alone or a condition, input and other")
    if cond.dtype != np.bool_:
        raise RuntimeError(
            "where expected condition to be a boolean tensor, but got a tensor with dtype "
            f"{cond.dtype}"
        )
    a, b = _raw(input), _raw(other)
    out = np.asarray(np.where(cond, a, b))
    inputs = [t for t in (input, other) if isinstance(t, Tensor)]

    def backward(g: np.ndarray) -> list[np.ndarray | None]:
        grads: list[np.ndarray | None] = []
        for t, picked in ((input, cond), (other, ~cond)):
            if isinstance(t, Tensor):
                keep = np.where(picked, g, np.zeros((), g.dtype))
                grads.append(_unbroadcast(keep, t.data.shape) if t.requires_grad else None)
        return grads

    return _make(out, inputs, backward, "where")
