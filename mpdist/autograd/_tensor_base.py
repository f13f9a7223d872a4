"""``TensorBase``: what a tensor holds, the accessors that only read it, and in-place writes.

``Tensor`` (``_tensor``) adds everything that records or builds tensors: the operations, the
gradient, hooks and ``backward``. What is here builds no tensor, so it sits below ``Tensor``:
the state every tensor carries (the live ndarray, the grad flags, its place in the graph, its
hooks), shape and dtype accessors, conversions to numpy and Python values, and the in-place
operations, which write the array itself and are never recorded.
"""

from __future__ import annotations

import copy
import numbers
from collections.abc import Callable
from typing import Any, TypeVar

import numpy as np

from mpdist.autograd.device import CPU, device
from mpdist.autograd.grad_mode import is_grad_enabled
from mpdist.autograd.graph import GradHook, Node
from mpdist.autograd.versions import note_inplace_write

_T = TypeVar("_T", bound="TensorBase")


def _raw(x: Any) -> Any:
    """The numpy-level value of an operand; Python numbers stay Python numbers so they remain
    'weak' under numpy's promotion rules (float32 tensor * 2.0 stays float32)."""
    if isinstance(x, TensorBase):
        return x.data
    if isinstance(x, (numbers.Number, np.ndarray)):
        return x
    return np.asarray(x)


def _check_broadcast_into(op: str, shape: tuple[int, ...], other: tuple[int, ...]) -> None:
    """An in-place operand must broadcast to exactly ``shape``: the result cannot grow."""
    try:
        full = np.broadcast_shapes(shape, other)
    except ValueError:
        raise RuntimeError(
            f"{op}: an operand of shape {list(other)} does not broadcast to the output shape "
            f"{list(shape)}"
        ) from None
    if full != shape:
        raise RuntimeError(
            f"{op}: output with shape {list(shape)} doesn't match the broadcast shape {list(full)}"
        )


def _index(index: Any) -> Any:
    """An index with tensors in it replaced by their arrays."""
    if isinstance(index, TensorBase):
        return index.data
    if isinstance(index, tuple):
        return tuple(i.data if isinstance(i, TensorBase) else i for i in index)
    return index


class TensorBase:
    """The state of a tensor and what reads or writes it without building a new tensor.

    ``.data`` is the live ndarray (optimizers update it in place), ``np.asarray(t)`` gives
    it. Numpy's ufunc machinery is switched off here (``__array_ufunc__ = None``: numpy defers
    to the reflected operators); ``Tensor`` turns it on for the ufuncs it records. In-place ops (``+=``, ``add_``,
    ``copy_``, ...) write ``.data`` itself and are not recorded: with grad mode on they refuse
    a tensor or operand that requires grad, and a backward through memory written since it
    was recorded refuses too.
    """

    __array_ufunc__: Any = None

    def __init__(self, data: Any, requires_grad: bool = False, dtype: Any = None) -> None:
        if isinstance(data, TensorBase):
            data = data.data
        self.data = np.asarray(data, dtype=dtype)
        self._grad: TensorBase | None = None
        self._node: Node | None = None
        self._out_index = 0
        self._requires_grad = False
        self._hooks: dict[int, GradHook] = {}  # on a leaf; a non-leaf's are on its node
        self._post_hooks: dict[int, Callable[[Any], None]] = {}
        self.requires_grad = requires_grad

    # ----------------------------------------------------------------- attributes
    @property
    def data(self) -> np.ndarray:
        """The live ndarray."""
        return self._data

    @data.setter
    def data(self, value: Any) -> None:
        self._data = value.data if isinstance(value, TensorBase) else np.asarray(value)

    @property
    def requires_grad(self) -> bool:
        """Whether gradients flow to (and, for leaves, accumulate in) this tensor."""
        return self._requires_grad

    @requires_grad.setter
    def requires_grad(self, value: bool) -> None:
        if self._node is not None and not value:
            raise RuntimeError(
                "you can only change requires_grad flags of leaf variables; use detach()"
            )
        if value and self.data.dtype.kind not in "fc":
            raise RuntimeError(
                f"Only Tensors of floating point and complex dtype can require gradients (got {self.data.dtype})"
            )
        self._requires_grad = bool(value)

    def requires_grad_(self: _T, requires_grad: bool = True) -> _T:
        """Set ``requires_grad`` in place and return self."""
        self.requires_grad = requires_grad
        return self

    @property
    def is_leaf(self) -> bool:
        """True for tensors not produced by a recorded operation."""
        return self._node is None

    @property
    def grad_fn(self) -> Node | None:
        """The node that produced this tensor, or None for leaves."""
        return self._node

    @property
    def shape(self) -> tuple[int, ...]:
        """The array's shape."""
        return self.data.shape

    @property
    def dtype(self) -> np.dtype:
        """The array's dtype."""
        return self.data.dtype

    @property
    def device(self) -> device:
        """Where the data lives: always ``device(type='cpu')``."""
        return CPU

    @property
    def is_cuda(self) -> bool:
        """False: mpdist tensors live in host memory."""
        return False

    @property
    def is_cpu(self) -> bool:
        """True: mpdist tensors live in host memory."""
        return True

    @property
    def ndim(self) -> int:
        """Number of dimensions."""
        return self.data.ndim

    def dim(self) -> int:
        """Number of dimensions (torch spelling)."""
        return self.data.ndim

    def size(self, dim: int | None = None) -> Any:
        """The shape, or one dimension's length."""
        return self.data.shape if dim is None else self.data.shape[dim]

    def numel(self) -> int:
        """Number of elements."""
        return int(self.data.size)

    @property
    def nbytes(self) -> int:
        """Bytes of data."""
        return int(self.data.nbytes)

    def __len__(self) -> int:
        return len(self.data)

    def __array__(self, dtype: Any = None, copy: bool | None = None) -> np.ndarray:
        arr = self.data if dtype is None else self.data.astype(dtype, copy=False)
        return arr.copy() if copy else arr

    def numpy(self) -> np.ndarray:
        """The live ndarray (shares memory)."""
        return self.data

    def item(self) -> Any:
        """The single element as a Python number."""
        return self.data.item()

    def tolist(self) -> Any:
        """The data as nested Python lists."""
        return self.data.tolist()

    def __repr__(self) -> str:
        body = np.array2string(self.data, separator=", ", prefix="tensor(")
        extra = ""
        if self._node is not None:
            extra = f", grad_fn=<{self._node.name}>"
        elif self.requires_grad:
            extra = ", requires_grad=True"
        return f"tensor({body}{extra})"

    def __bool__(self) -> bool:
        # Only a one-element tensor has a truth value (its element), as in torch: ``if t == x``
        # on a bigger tensor is a mistake to report, not something to decide elementwise.
        if self.data.size != 1:
            amount = "no values" if self.data.size == 0 else "more than one value"
            raise RuntimeError(f"Boolean value of Tensor with {amount} is ambiguous")
        return bool(self.data.item())

    def __float__(self) -> float:
        return float(self.data)

    def __int__(self) -> int:
        return int(self.data)

    def __deepcopy__(self: _T, memo: dict[int, Any]) -> _T:
        # Hooks are deliberately not copied: they usually close over whoever registered them
        # (a DDP reducer, say), which must not start receiving the copy's gradients.
        if self._node is not None:
            raise RuntimeError("only leaf tensors (not results of recorded ops) can be deep-copied")
        new = type(self).__new__(type(self))
        memo[id(self)] = new
        for k, v in self.__dict__.items():
            if k in ("_hooks", "_post_hooks"):
                new.__dict__[k] = {}
            else:
                new.__dict__[k] = copy.deepcopy(v, memo)
        return new

    def data_ptr(self) -> int:
        """Address of the first element (equal for tensors viewing the same memory)."""
        return int(self.data.__array_interface__["data"][0])

    def is_contiguous(self) -> bool:
        """True when the data is C-contiguous."""
        return bool(self.data.flags.c_contiguous)

    def cpu(self: _T) -> _T:
        """Self: every mpdist tensor lives in host memory."""
        return self

    def cuda(self, *args: Any, **kwargs: Any) -> Any:
        """Refused: mpdist runs on the CPU."""
        raise ValueError("mpdist runs on the CPU: tensors cannot move to 'cuda'")

    def equal(self, other: Any) -> bool:
        """True when ``other`` has the same shape and the same values (torch.equal)."""
        o = np.asarray(_raw(other))
        return self.data.shape == o.shape and bool(np.array_equal(self.data, o))

    # ----------------------------------------------------------------- in place (no graph)
    # In-place operations write into ``.data`` itself (the same ndarray object, so views of it,
    # DDP bucket views and optimizer state keep seeing the live values), keep the left
    # operand's dtype and shape, return self, and are never recorded. mpdist records no
    # in-place ops, so where torch would record one they refuse instead of silently dropping
    # or corrupting a gradient (``_check_inplace``):
    # * grad mode on and self requires grad: RuntimeError. A leaf gets torch's message; a
    #   recorded result is refused because rewriting it would change the gradient of every
    #   op that saved its value.
    # * grad mode on and an operand requires grad: RuntimeError (torch would put self into
    #   the graph; here that gradient would be lost).
    # * under ``no_grad()`` everything is allowed, as in torch: the optimizer-step idiom
    #   ``with no_grad(): p -= lr * p.grad``.
    # Every write is noted (``note_inplace_write``), so a backward through a graph recorded
    # before it, which read or produced that memory, refuses instead of using the new values.
    def _check_inplace(self, op: str, *operands: Any) -> None:
        if not is_grad_enabled():
            return
        if self.requires_grad:
            if self._node is None:
                raise RuntimeError(
                    "a leaf Variable that requires grad is being used in an in-place operation."
                )
            raise RuntimeError(
                f"{op}: in-place operations on a tensor that is part of the recorded graph "
                f"(grad_fn=<{self._node.name}>) are not supported; use the out-of-place op, or "
                "clone() first"
            )
        if any(isinstance(o, TensorBase) and o.requires_grad for o in operands):
            raise RuntimeError(
                f"{op}: an operand requires grad, but in-place operations are not recorded and "
                "its gradient would be lost; use the out-of-place op, or run it under no_grad()"
            )

    def _inplace_ufunc(self: _T, op: str, ufunc: np.ufunc, other: Any) -> _T:
        """``self.data = ufunc(self.data, other)`` in place: ``other`` broadcasts into self's
        shape (never the other way) and must cast to self's dtype within its kind (torch
        refuses float into int and so does this)."""
        self._check_inplace(op, other)
        o = _raw(other)
        if not isinstance(o, numbers.Number):
            _check_broadcast_into(op, self.data.shape, np.shape(o))
        try:
            ufunc(self.data, o, out=self.data, casting="same_kind")
            note_inplace_write(self.data)
        except np.exceptions.DTypePromotionError:
            raise
        except TypeError as e:
            # numpy's UFuncTypeError; torch says it this way, as a RuntimeError.
            raise RuntimeError(
                f"{op}: result type {ufunc(self.data.flat[:1], o).dtype} can't be cast to the "
                f"desired output type {self.data.dtype}"
            ) from e
        return self

    def __setitem__(self, index: Any, value: Any) -> None:
        self._check_inplace("__setitem__", value)
        self.data[_index(index)] = _raw(value)
        note_inplace_write(self.data)

    def copy_(self: _T, src: Any) -> _T:
        """Copy ``src`` (broadcast to self's shape, cast to self's dtype) into the data."""
        self._check_inplace("copy_", src)
        s = _raw(src)
        _check_broadcast_into("copy_", self.data.shape, np.shape(s))
        np.copyto(self.data, s, casting="unsafe")
        note_inplace_write(self.data)
        return self

    def zero_(self: _T) -> _T:
        """Fill with zeros in place."""
        self._check_inplace("zero_")
        self.data.fill(0)
        note_inplace_write(self.data)
        return self

    def fill_(self: _T, value: Any) -> _T:
        """Fill with ``value`` in place."""
        self._check_inplace("fill_", value)
        self.data.fill(_raw(value))
        note_inplace_write(self.data)
        return self

    def add_(self: _T, other: Any, alpha: Any = 1) -> _T:
        """``self += alpha * other`` in place."""
        if alpha != 1:
            self._check_inplace("add_", other)
            other = alpha * _raw(other)
        return self._inplace_ufunc("add_", np.add, other)

    def sub_(self: _T, other: Any, alpha: Any = 1) -> _T:
        """``self -= alpha * other`` in place."""
        if alpha != 1:
            self._check_inplace("sub_", other)
            other = alpha * _raw(other)
        return self._inplace_ufunc("sub_", np.subtract, other)

    def mul_(self: _T, other: Any) -> _T:
        """``self *= other`` in place."""
        return self._inplace_ufunc("mul_", np.multiply, other)

    def div_(self: _T, other: Any) -> _T:
        """``self /= other`` in place (true division: an integer tensor refuses)."""
        return self._inplace_ufunc("div_", np.divide, other)

    # ``t += x`` etc. Without these Python falls back to ``t = t + x``, which rebinds the name
    # and leaves the original tensor (a module's parameter, say) unchanged.
    def __iadd__(self: _T, other: Any) -> _T:
        return self._inplace_ufunc("__iadd__", np.add, other)

    def __isub__(self: _T, other: Any) -> _T:
        return self._inplace_ufunc("__isub__", np.subtract, other)

    def __imul__(self: _T, other: Any) -> _T:
        return self._inplace_ufunc("__imul__", np.multiply, other)

    def __itruediv__(self: _T, other: Any) -> _T:
        return self._inplace_ufunc("__itruediv__", np.divide, other)
