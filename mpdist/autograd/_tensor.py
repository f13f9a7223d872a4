"""``Tensor``: a numpy array that records the operations applied to it, and the ops themselves.

Each operation computes its result with numpy and, when recording, attaches a ``Node`` whose
backward function sits right next to the forward line. Gradients of broadcast operands are
summed back to the operand's shape (``_unbroadcast``). Only the operations the nn layers,
losses, collectives and tests need are here. What a tensor holds and the in-place writes,
which record nothing, are in ``_tensor_base``; the graph that ``backward`` runs is ``graph``.
"""

from __future__ import annotations

import numbers
from collections.abc import Callable, Iterable, Iterator, Sequence
from typing import Any, overload

import numpy as np

from mpdist.autograd._tensor_base import TensorBase, _index, _raw
from mpdist.autograd.device import parse_to
from mpdist.autograd.grad_mode import is_grad_enabled
from mpdist.autograd.graph import Node, RemovableHandle, run_backward, run_hooks

Axis = int | tuple[int, ...] | None
Real = float  # ``float`` inside the Tensor class body names the method


def _unbroadcast(g: np.ndarray, shape: tuple[int, ...]) -> np.ndarray:
    """Sum ``g`` over the axes that broadcasting added or stretched to reach ``shape``."""
    if g.shape == shape:
        return g
    extra = g.ndim - len(shape)
    if extra > 0:
        g = g.sum(axis=tuple(range(extra)))
    stretched = tuple(i for i, n in enumerate(shape) if n == 1 and g.shape[i] != 1)
    if stretched:
        g = g.sum(axis=stretched, keepdims=True)
    return g.reshape(shape)


def overridden(name: str, args: Sequence[Any], kwargs: dict[str, Any]) -> Any:
    """What a Tensor subclass among ``args`` (or inside a list or tuple of them) makes of the
    torch-level function ``name``, through its class's ``__tensor_function__(name, args,
    kwargs)``; ``NotImplemented`` when none has one. Functions that compute on ``.data``
    directly ask first: a DTensor's data is one rank's piece, and computing on it as if it
    were the whole would be a silently wrong value."""
    for a in args:
        for t in a if isinstance(a, (list, tuple)) else (a,):
            if isinstance(t, Tensor) and type(t) is not Tensor:
                hook = getattr(type(t), "__tensor_function__", None)
                if hook is not None:
                    return hook(name, tuple(args), kwargs)
    return NotImplemented


def _make(
    data: Any,
    inputs: Sequence[Tensor],
    backward: Callable[[np.ndarray], Sequence[np.ndarray | None]],
    name: str,
) -> Tensor:
    """Wrap an op's result; record a node when recording is on and some input needs grad."""
    out = Tensor(np.asarray(data))
    if is_grad_enabled() and any(t.requires_grad for t in inputs):
        arr = out._data
        out._node = Node(inputs, lambda gs: backward(gs[0]), [(arr.shape, arr.dtype)], name, [arr])
        out._requires_grad = True
    return out


def _make_many(
    datas: Sequence[np.ndarray],
    inputs: Sequence[Tensor],
    backward: Callable[[list[np.ndarray]], Sequence[np.ndarray | None]],
    name: str,
) -> tuple[Tensor, ...]:
    """``_make`` for an op with several outputs: one node; ``backward`` gets one gradient per
    output (zeros for outputs that received none)."""
    outs = tuple(Tensor(d) for d in datas)
    if is_grad_enabled() and any(t.requires_grad for t in inputs):
        node = Node(
            inputs,
            backward,
            [(o._data.shape, o._data.dtype) for o in outs],
            name,
            [o._data for o in outs],
        )
        for i, o in enumerate(outs):
            o._node, o._out_index, o._requires_grad = node, i, True
    return outs


def _dim(dim: int, ndim: int) -> int:
    """``dim`` as a non-negative axis, with torch's error when it is out of range."""
    span = max(ndim, 1)
    if not -span <= dim < span:
        raise IndexError(
            f"Dimension out of range (expected to be in range of [{-span}, {span - 1}], but got {dim})"
        )
    return dim % span


def _binary(
    a: Any,
    b: Any,
    fwd: Callable[[Any, Any], Any],
    grad_a: Callable[[np.ndarray, Any, Any, np.ndarray], np.ndarray],
    grad_b: Callable[[np.ndarray, Any, Any, np.ndarray], np.ndarray],
    name: str,
) -> Tensor:
    """``fwd(a, b)`` recorded: each Tensor operand's gradient is its ``grad_*`` summed back
    to its shape."""
    ad, bd = _raw(a), _raw(b)
    out = np.asarray(fwd(ad, bd))
    inputs: list[Tensor] = []
    fns: list[Callable[[np.ndarray], np.ndarray | None]] = []
    for operand, gfn in ((a, grad_a), (b, grad_b)):
        if isinstance(operand, Tensor):
            inputs.append(operand)
            shape = operand.data.shape

            def grad(g: np.ndarray, t: Tensor = operand, gfn: Any = gfn, shape: Any = shape) -> Any:
                return _unbroadcast(gfn(g, ad, bd, out), shape) if t.requires_grad else None

            fns.append(grad)
    return _make(out, inputs, lambda g: [f(g) for f in fns], name)


# numpy ufunc -> the recorded op that computes it on Tensors (``Tensor.__array_ufunc__``).
# The binary ops and comparisons register themselves as their dunder methods are made; the
# unary ones are listed after the class.
_UFUNC_OPS: dict[np.ufunc, Callable[..., Any]] = {}


def _binary_methods(
    fwd: np.ufunc,
    grad_a: Callable[[np.ndarray, Any, Any, np.ndarray], np.ndarray],
    grad_b: Callable[[np.ndarray, Any, Any, np.ndarray], np.ndarray],
    name: str,
) -> tuple[Callable[[Tensor, Any], Tensor], Callable[[Tensor, Any], Tensor]]:
    """The dunder method of a binary op and its reflected twin (``__add__``, ``__radd__``);
    the ufunc ``fwd`` on Tensors (``np.add(a, t)``) records the same op."""

    def method(self: Tensor, other: Any) -> Tensor:
        return _binary(self, other, fwd, grad_a, grad_b, name)

    def reflected(self: Tensor, other: Any) -> Tensor:
        return _binary(other, self, fwd, grad_a, grad_b, name)

    _UFUNC_OPS[fwd] = lambda a, b: _binary(a, b, fwd, grad_a, grad_b, name)
    return method, reflected


# What a comparison compares with: a tensor, an array or a number. Anything else (None, a
# string, a list) gets NotImplemented, so Python falls back as it does for torch's tensors:
# ``t == None`` is False, ``t != "a"`` True, ``t < None`` a TypeError.
_COMPARABLE = (TensorBase, np.ndarray, np.number, np.bool_, numbers.Number)


def _comparison(fwd: np.ufunc) -> Callable[[Tensor, Any], Any]:
    """A comparison dunder method: an elementwise boolean Tensor, not recorded (the ufunc on
    Tensors, ``np.less(a, t)``, gives the same)."""

    def method(self: Tensor, other: Any) -> Any:
        if not isinstance(other, _COMPARABLE):
            return NotImplemented
        return Tensor(fwd(self.data, _raw(other)))

    _UFUNC_OPS[fwd] = lambda a, b: Tensor(fwd(_raw(a), _raw(b)))
    return method


def _apply_ufunc(
    ufunc: np.ufunc, method: str, inputs: tuple[Any, ...], kwargs: dict[str, Any]
) -> Any:
    """numpy's call of a ufunc with a Tensor operand (``Tensor.__array_ufunc__``)."""
    name = ufunc.__name__ if method == "__call__" else f"{ufunc.__name__}.{method}"
    op = _UFUNC_OPS.get(ufunc) if method == "__call__" else None
    if op is None:
        raise TypeError(
            f"numpy.{name} has no autograd op for mpdist Tensors; use .data for a plain array "
            f"(numpy.{name}(t.data))"
        )
    out = kwargs.pop("out", None)
    if kwargs:
        raise TypeError(
            f"numpy.{name} on mpdist Tensors takes no keyword arguments other than out=, got "
            f"{', '.join(sorted(kwargs))}"
        )
    if out is None:
        return op(*inputs)
    if any(isinstance(o, TensorBase) for o in out):
        raise TypeError(
            f"numpy.{name}(..., out=...) cannot write into an mpdist Tensor (that write would not "
            "be recorded); use the Tensor's in-place methods (add_, copy_, ...) or out=t.data"
        )
    # Plain arrays as out= ask for plain values there (``ndarray += Tensor``): nothing records.
    return ufunc(*(_raw(x) for x in inputs), out=out)


def _norm_axis(axis: Axis, ndim: int) -> tuple[int, ...]:
    """``axis`` as a tuple of non-negative axes (all of them for None)."""
    if axis is None:
        return tuple(range(ndim))
    axes = (axis,) if isinstance(axis, int) else tuple(axis)
    return tuple(a % ndim if ndim else a for a in axes)


class _TensorHook:
    """A ``register_hook`` hook as the graph runs it: the gradient array in, wrapped in a
    Tensor for the hook; what the hook returns goes back as is."""

    __slots__ = ("hook",)

    def __init__(self, hook: Callable[[Tensor], Any]) -> None:
        self.hook = hook

    def __call__(self, grad: np.ndarray) -> Any:
        return self.hook(Tensor(grad))

    def __repr__(self) -> str:
        return repr(self.hook)


class Tensor(TensorBase):
    """A numpy array with reverse-mode autograd.

    ``.data`` is the live ndarray (optimizers update it in place), ``.grad`` is a Tensor or
    None (assignable), ``np.asarray(t)`` gives the data. A numpy ufunc that has an autograd op
    records it (``np.cos(t)``, ``np.add(a, t)``, and so ``ndarray + Tensor`` records like
    ``Tensor + ndarray``); any other ufunc is a ``TypeError`` pointing to ``.data``.
    In-place ops (``+=``, ``add_``, ``copy_``, ...) write ``.data`` itself and are not
    recorded: with grad mode on they refuse a tensor or operand that requires grad, and a
    backward through memory written since it was recorded refuses too.
    """

    _grad: Tensor | None

    def __array_ufunc__(self, ufunc: np.ufunc, method: str, *inputs: Any, **kwargs: Any) -> Any:
        """numpy ufuncs on Tensors. Those with an autograd op (``np.add``, ``np.multiply``,
        ``np.exp``, ``np.matmul``, ...) record it and return a Tensor; comparisons give
        boolean Tensors. Any other ufunc, a ufunc method (``np.add.reduce``) or an extra
        keyword is a ``TypeError`` naming it (``.data`` gives a plain array); so is ``out=``
        naming a Tensor. ``out=`` naming plain arrays gets the plain values."""
        if method == "__call__" and not kwargs:  # the common case (``ndarray + Tensor``) first
            op = _UFUNC_OPS.get(ufunc)
            if op is not None:
                return op(*inputs)
        return _apply_ufunc(ufunc, method, inputs, kwargs)

    # ----------------------------------------------------------------- graph
    @property
    def grad(self) -> Tensor | None:
        """The accumulated gradient (leaves only), a Tensor or None; assignable."""
        return self._grad

    @grad.setter
    def grad(self, value: Any) -> None:
        if value is not None:
            value = value if isinstance(value, Tensor) else Tensor(value)
            if value.data.shape != self.data.shape:
                raise RuntimeError(
                    f"assigned grad has shape {value.data.shape}, but the tensor has shape {self.data.shape}"
                )
        self._grad = value

    def backward(self, gradient: Any = None) -> None:
        """Accumulate d(self)/d(leaf) into every leaf's ``.grad``.

        ``gradient`` defaults to 1 for a single-element tensor. The graph is kept, so calling
        backward again accumulates again.
        """
        g = _seed_gradient(self, gradient)
        if gradient is not None and g.shape != self.data.shape:
            raise RuntimeError(
                f"gradient has shape {g.shape}, but the tensor has shape {self.data.shape}"
            )
        run_backward([self], [g])

    def register_hook(self, hook: Callable[[Tensor], Any]) -> RemovableHandle:
        """``hook(grad)`` runs when this tensor's gradient is computed, before it is used or
        accumulated; returning a Tensor replaces the gradient."""
        if not self.requires_grad:
            raise RuntimeError("cannot register a hook on a tensor that doesn't require gradient")
        hooks = self._hooks if self._node is None else self._node.out_hooks[self._out_index]
        handle = RemovableHandle(hooks)
        hooks[handle.id] = _TensorHook(hook)
        return handle

    def register_post_accumulate_grad_hook(self, hook: Callable[[Tensor], None]) -> RemovableHandle:
        """``hook(tensor)`` runs after the gradient was accumulated into this leaf's ``.grad``
        (once per backward call)."""
        if self._node is not None:
            raise RuntimeError(
                "post accumulate grad hooks cannot be registered on non-leaf tensors"
            )
        if not self.requires_grad:
            raise RuntimeError("cannot register a hook on a tensor that doesn't require gradient")
        handle = RemovableHandle(self._post_hooks)
        self._post_hooks[handle.id] = hook
        return handle

    def retain_grad(self) -> None:
        """Keep this non-leaf tensor's gradient in ``.grad`` during backward."""
        if self._node is None:
            return

        def keep(g: Tensor) -> None:
            self._grad = Tensor(g.data.copy()) if self._grad is None else self._grad + g

        self.register_hook(keep)

    def _accumulate_grad(self, grad: np.ndarray) -> None:
        """Where a backward pass ends at this leaf (``graph.Variable``): ``grad`` is the total
        of all contributions; run the hooks, add it to ``.grad``, run the post hooks."""
        if self._hooks:
            grad = run_hooks(self._hooks, grad)
        if grad.shape != self.data.shape:
            raise RuntimeError(
                f"gradient of shape {grad.shape} does not match the leaf's shape {self.data.shape}"
            )
        if self.grad is None:
            # Own the array: the incoming one may alias an input of some op.
            self.grad = Tensor(np.array(grad, dtype=self.data.dtype, copy=True))
        else:
            # In place, so a .grad that is a view (DDP's gradient_as_bucket_view) stays a view.
            np.add(self.grad.data, grad, out=self.grad.data, casting="unsafe")
        for hook in list(self._post_hooks.values()):
            hook(self)

    def detach(self) -> Tensor:
        """A leaf sharing this tensor's data, outside any graph."""
        return Tensor(self.data)

    def detach_(self) -> Tensor:
        """Cut this tensor out of the graph in place: it becomes a leaf that does not require
        grad (torch's ``detach_``)."""
        self._node = None
        self._out_index = 0
        self._requires_grad = False
        return self

    def contiguous(self) -> Tensor:
        """Self when C-contiguous, else a C-contiguous copy (recorded)."""
        if self.data.flags.c_contiguous:
            return self
        return _make(np.ascontiguousarray(self.data), [self], lambda g: [g], "contiguous")

    # ----------------------------------------------------------------- arithmetic
    # Each pair is ``t op x`` and the reflected ``x op t``: one forward and one derivative per
    # operand, written once (``a``, ``b``: operand values, ``o``: the result).
    __add__, __radd__ = _binary_methods(np.add, lambda g, a, b, o: g, lambda g, a, b, o: g, "add")
    __sub__, __rsub__ = _binary_methods(
        np.subtract, lambda g, a, b, o: g, lambda g, a, b, o: -g, "sub"
    )
    __mul__, __rmul__ = _binary_methods(
        np.multiply, lambda g, a, b, o: g * b, lambda g, a, b, o: g * a, "mul"
    )
    __truediv__, __rtruediv__ = _binary_methods(
        np.divide, lambda g, a, b, o: g / b, lambda g, a, b, o: -g * o / b, "div"
    )
    __pow__, __rpow__ = _binary_methods(
        np.power,
        lambda g, a, b, o: g * b * np.power(a, b - 1),
        lambda g, a, b, o: g * o * np.log(a),
        "pow",
    )

    def __neg__(self) -> Tensor:
        return _make(-self.data, [self], lambda g: [-g], "neg")

    def __pos__(self) -> Tensor:
        return self

    def __matmul__(self, other: Any) -> Tensor:
        return matmul(self, other)

    def __rmatmul__(self, other: Any) -> Tensor:
        return matmul(other, self)

    # Comparisons give boolean tensors outside the graph, ``==`` and ``!=`` too (as torch's).
    # The hash stays identity, so tensors still work as dict keys and set members (a lookup
    # checks identity before equality, and distinct objects never share an identity hash);
    # code that searches a list for a tensor must compare with ``is`` (``in``, ``.index``
    # fall back to ``==``, whose multi-element result has no truth value).
    __eq__ = _comparison(np.equal)
    __ne__ = _comparison(np.not_equal)
    __lt__ = _comparison(np.less)
    __le__ = _comparison(np.less_equal)
    __gt__ = _comparison(np.greater)
    __ge__ = _comparison(np.greater_equal)

    __hash__ = object.__hash__

    # ----------------------------------------------------------------- elementwise
    def exp(self) -> Tensor:
        """e ** self."""
        out = np.exp(self.data)
        return _make(out, [self], lambda g: [g * out], "exp")

    def log(self) -> Tensor:
        """Natural logarithm."""
        a = self.data
        return _make(np.log(a), [self], lambda g: [g / a], "log")

    def sin(self) -> Tensor:
        """Sine."""
        a = self.data
        return _make(np.sin(a), [self], lambda g: [g * np.cos(a)], "sin")

    def cos(self) -> Tensor:
        """Cosine."""
        a = self.data
        return _make(np.cos(a), [self], lambda g: [-g * np.sin(a)], "cos")

    def tanh(self) -> Tensor:
        """Hyperbolic tangent."""
        out = np.tanh(self.data)
        return _make(out, [self], lambda g: [g * (1 - out * out)], "tanh")

    def sigmoid(self) -> Tensor:
        """Logistic sigmoid."""
        out = 1 / (1 + np.exp(-self.data))
        return _make(out, [self], lambda g: [g * out * (1 - out)], "sigmoid")

    def relu(self) -> Tensor:
        """max(self, 0)."""
        a = self.data
        mask = a > 0
        return _make(np.where(mask, a, 0).astype(a.dtype), [self], lambda g: [g * mask], "relu")

    def sqrt(self) -> Tensor:
        """Square root."""
        return self**0.5

    def abs(self) -> Tensor:
        """Absolute value (gradient 0 at 0)."""
        a = self.data
        return _make(np.abs(a), [self], lambda g: [g * np.sign(a)], "abs")

    def clone(self) -> Tensor:
        """A copy that is part of the graph."""
        return _make(self.data.copy(), [self], lambda g: [g], "clone")

    def float(self) -> Tensor:
        """As float32 (self when it already is, as in torch)."""
        return self if self.data.dtype == np.float32 else self.astype(np.float32)

    def double(self) -> Tensor:
        """As float64 (self when it already is)."""
        return self if self.data.dtype == np.float64 else self.astype(np.float64)

    def astype(self, dtype: Any) -> Tensor:
        """Cast to ``dtype``; the gradient is cast back. A cast to a dtype that cannot carry
        gradients (integers, bool) is not recorded, as in torch."""
        out = self.data.astype(dtype)
        if out.dtype.kind not in "fc":
            return Tensor(out)
        src = self.data.dtype
        return _make(out, [self], lambda g: [g.astype(src)], "astype")

    def to(self, *args: Any, **kwargs: Any) -> Tensor:
        """torch's ``to``: ``to(dtype)``, ``to(device)``, ``to(device, dtype)``, ``to(other)``
        (other's dtype), with ``non_blocking``/``copy`` flags. The device must be the CPU and
        changes nothing; a new dtype is a recorded cast; self comes back when nothing changes
        and ``copy`` is False."""
        req = parse_to(args, kwargs)
        if req.dtype is not None and req.dtype != self.data.dtype:
            return self.astype(req.dtype)
        return self.clone() if req.copy else self

    # ----------------------------------------------------------------- reductions
    def sum(
        self,
        axis: Axis = None,
        keepdims: bool = False,
        *,
        dim: Axis = None,
        keepdim: bool = False,
        dtype: Any = None,
        out: None = None,
    ) -> Tensor:
        """Sum over ``axis`` (all by default); ``dim``/``keepdim`` are torch spellings;
        ``dtype``/``out`` exist so ``np.sum(t)`` works (``out`` must be None)."""
        src, axis = self._reduction_input("sum", axis, dim, dtype, out)
        keepdims = keepdims or keepdim
        shape = src.data.shape
        axes = _norm_axis(axis, src.data.ndim)

        def backward(g: np.ndarray) -> list[np.ndarray]:
            if not keepdims:
                g = np.expand_dims(g, axes)
            return [np.broadcast_to(g, shape).copy()]

        return _make(src.data.sum(axis=axes, keepdims=keepdims), [src], backward, "sum")

    def mean(
        self,
        axis: Axis = None,
        keepdims: bool = False,
        *,
        dim: Axis = None,
        keepdim: bool = False,
        dtype: Any = None,
        out: None = None,
    ) -> Tensor:
        """Mean over ``axis`` (all by default); ``np.mean(t)`` works too."""
        src, axis = self._reduction_input("mean", axis, dim, dtype, out)
        axes = _norm_axis(axis, src.data.ndim)
        count = int(np.prod([src.data.shape[a] for a in axes])) if axes else 1
        return src.sum(axis=axes, keepdims=keepdims or keepdim) / count

    def _reduction_input(
        self, name: str, axis: Axis, dim: Axis, dtype: Any, out: None
    ) -> tuple[Tensor, Axis]:
        """What ``sum`` and ``mean`` reduce, and over which axis: ``out=`` is refused,
        ``dim`` is torch's spelling of ``axis``, ``dtype`` casts first (a recorded cast)."""
        if out is not None:
            raise TypeError(f"Tensor.{name} does not support out=")
        src = self if dtype is None else self.astype(dtype)
        return src, dim if axis is None else axis

    # ----------------------------------------------------------------- shape
    def reshape(self, *shape: Any) -> Tensor:
        """Same data, new shape."""
        if len(shape) == 1 and isinstance(shape[0], (tuple, list)):
            shape = tuple(shape[0])
        src = self.data.shape
        return _make(self.data.reshape(shape), [self], lambda g: [g.reshape(src)], "reshape")

    view = reshape

    def unsqueeze(self, dim: int) -> Tensor:
        """Insert an axis of length 1 at ``dim`` (``-ndim-1 <= dim <= ndim``)."""
        nd = self.data.ndim
        if not -nd - 1 <= dim <= nd:
            raise IndexError(
                f"Dimension out of range (expected to be in range of [{-nd - 1}, {nd}], but got {dim})"
            )
        shape = list(self.data.shape)
        shape.insert(dim % (nd + 1), 1)
        return self.reshape(tuple(shape))

    def squeeze(self, dim: int | tuple[int, ...] | None = None) -> Tensor:
        """Drop axes of length 1: all of them, or those among ``dim`` (an axis in ``dim``
        whose length is not 1 stays, as in torch)."""
        shape = self.data.shape
        nd = len(shape)
        if dim is None:
            axes = set(range(nd))
        else:
            span = max(nd, 1)
            axes = set()
            for d in (dim,) if isinstance(dim, int) else dim:
                if not -span <= d < span:
                    raise IndexError(
                        f"Dimension out of range (expected to be in range of [{-span}, {span - 1}], but got {d})"
                    )
                axes.add(d % span)
        return self.reshape(tuple(n for i, n in enumerate(shape) if not (i in axes and n == 1)))

    def flatten(self, start_dim: int = 0, end_dim: int = -1) -> Tensor:
        """Merge the axes ``start_dim..end_dim`` (all by default) into one (recorded reshape;
        a 0-d tensor becomes 1-d)."""
        shape = self.data.shape
        start, end = _dim(start_dim, len(shape)), _dim(end_dim, len(shape))
        if start > end:
            raise RuntimeError("flatten() has invalid args: start_dim cannot come after end_dim")
        if not shape:
            return self.reshape(1)
        merged = int(np.prod(shape[start : end + 1]))
        return self.reshape(shape[:start] + (merged,) + shape[end + 1 :])

    def split(
        self, split_size_or_sections: int | Sequence[int], dim: int = 0
    ) -> tuple[Tensor, ...]:
        """Cut along ``dim`` into pieces of ``split_size`` (the last may be smaller) or of the
        listed sizes (which must add up to the axis length). Views of the data; one recorded
        node whose backward joins the pieces' gradients."""
        ax = _dim(dim, self.data.ndim)
        n = self.data.shape[ax]
        if isinstance(split_size_or_sections, (int, np.integer)):
            size = int(split_size_or_sections)
            if size < 0:
                raise RuntimeError(
                    f"split expects split_size be non-negative, but got split_size={size}"
                )
            if size == 0 and n != 0:
                raise RuntimeError(
                    f"split_size can only be 0 if dimension size is 0, but got dimension size of {n}"
                )
            sizes = [size] * (n // size) + ([n % size] if n % size else []) if n else [0]
        else:
            sizes = [int(s) for s in split_size_or_sections]
            if sum(sizes) != n or any(s < 0 for s in sizes):
                raise RuntimeError(
                    f"split_with_sizes expects split_sizes to sum exactly to {n} (input tensor's "
                    f"size at dimension {dim}), but got split_sizes={sizes}"
                )
        return self._split(sizes, ax)

    def chunk(self, chunks: int, dim: int = 0) -> tuple[Tensor, ...]:
        """``split`` into ``chunks`` pieces of ceil(length / chunks) (fewer pieces when the
        length runs out first, as in torch)."""
        if chunks <= 0:
            raise RuntimeError(f"chunk expects `chunks` to be greater than 0, got: {chunks}")
        ax = _dim(dim, self.data.ndim)
        n = self.data.shape[ax]
        if n == 0:
            return self._split([0] * chunks, ax)
        return self.split(-(-n // chunks), ax)

    def _split(self, sizes: list[int], ax: int) -> tuple[Tensor, ...]:
        """The pieces of the given sizes along axis ``ax`` (views), recorded as one node."""
        bounds = np.cumsum([0] + sizes)
        lead = (slice(None),) * ax
        datas = [
            self.data[lead + (slice(int(b), int(e)),)]
            for b, e in zip(bounds[:-1], bounds[1:], strict=True)
        ]
        return _make_many(datas, [self], lambda gs: [np.concatenate(gs, axis=ax)], "split")

    # ----------------------------------------------------------------- tests (not recorded)
    def isnan(self) -> Tensor:
        """Elementwise NaN test: a boolean tensor."""
        return Tensor(np.isnan(self.data))

    def any(self, dim: int | None = None, keepdim: bool = False) -> Tensor:
        """Whether any element (along ``dim``, or at all) is nonzero: a boolean tensor."""
        return Tensor(np.any(self.data, axis=dim, keepdims=keepdim))

    def all(self, dim: int | None = None, keepdim: bool = False) -> Tensor:
        """Whether every element (along ``dim``, or at all) is nonzero: a boolean tensor."""
        return Tensor(np.all(self.data, axis=dim, keepdims=keepdim))

    def allclose(
        self, other: Tensor, rtol: Real = 1e-05, atol: Real = 1e-08, equal_nan: bool = False
    ) -> bool:
        """``|self - other| <= atol + rtol * |other|`` everywhere (broadcasting). Like torch,
        ``other`` must be a Tensor of the same dtype."""
        if not isinstance(other, TensorBase):
            raise TypeError(
                f"allclose(): argument 'other' (position 2) must be Tensor, not {type(other).__name__}"
            )
        if other.data.dtype != self.data.dtype:
            raise RuntimeError(f"{self.data.dtype} did not match {other.data.dtype}")
        return bool(np.allclose(self.data, other.data, rtol=rtol, atol=atol, equal_nan=equal_nan))

    @overload
    def transpose(self, *axes: int) -> Tensor: ...
    @overload
    def transpose(self, axes: Sequence[int], /) -> Tensor: ...
    def transpose(self, *axes: Any) -> Tensor:
        """Permute axes with numpy's meaning (a full permutation; reversed by default)."""
        nd = self.data.ndim
        if len(axes) == 1 and isinstance(axes[0], (tuple, list)):
            axes = tuple(axes[0])
        perm = tuple(a % nd for a in axes) if axes else tuple(reversed(range(nd)))
        inv = tuple(int(i) for i in np.argsort(perm))
        return _make(self.data.transpose(perm), [self], lambda g: [g.transpose(inv)], "transpose")

    permute = transpose

    def swapaxes(self, axis1: int, axis2: int) -> Tensor:
        """Swap two axes (torch's ``transpose(d0, d1)``)."""
        perm = list(range(self.data.ndim))
        perm[axis1], perm[axis2] = perm[axis2], perm[axis1]
        return self.transpose(tuple(perm))

    @property
    def T(self) -> Tensor:
        """Axes reversed."""
        return self.transpose()

    def __getitem__(self, index: Any) -> Tensor:
        idx = _index(index)
        shape, dtype = self.data.shape, self.data.dtype

        def backward(g: np.ndarray) -> list[np.ndarray]:
            z = np.zeros(shape, dtype=dtype)
            np.add.at(z, idx, g)
            return [z]

        return _make(self.data[idx], [self], backward, "index")

    def __iter__(self) -> Iterator[Tensor]:
        for i in range(len(self)):
            yield self[i]


_UFUNC_OPS.update(
    {
        np.negative: Tensor.__neg__,
        np.positive: Tensor.__pos__,
        np.exp: Tensor.exp,
        np.log: Tensor.log,
        np.sin: Tensor.sin,
        np.cos: Tensor.cos,
        np.tanh: Tensor.tanh,
        np.sqrt: Tensor.sqrt,
        np.absolute: Tensor.abs,
        np.isnan: Tensor.isnan,
        np.matmul: lambda a, b: matmul(a, b),
    }
)


def matmul(a: Any, b: Any) -> Tensor:
    """Matrix product with numpy's rules (1-D operands, batch broadcasting)."""
    if (result := overridden("matmul", (a, b), {})) is not NotImplemented:
        return result
    a = a if isinstance(a, Tensor) else Tensor(_raw(a))
    b = b if isinstance(b, Tensor) else Tensor(_raw(b))
    A, B = a.data, b.data
    out = A @ B

    def backward(g: np.ndarray) -> list[np.ndarray | None]:
        if A.ndim == 1 and B.ndim == 1:
            return [g * B, g * A]
        a2 = A[None, :] if A.ndim == 1 else A
        b2 = B[:, None] if B.ndim == 1 else B
        g2 = np.expand_dims(g, -2) if A.ndim == 1 else g
        g2 = np.expand_dims(g2, -1) if B.ndim == 1 else g2
        ga = gb = None
        if a.requires_grad:
            ga = _unbroadcast(g2 @ np.swapaxes(b2, -1, -2), a2.shape).reshape(A.shape)
        if b.requires_grad:
            gb = _unbroadcast(np.swapaxes(a2, -1, -2) @ g2, b2.shape).reshape(B.shape)
        return [ga, gb]

    return _make(out, [a, b], backward, "matmul")


def backward(tensors: Any, grad_tensors: Any = None) -> None:
    """Run one backward pass from several roots at once."""
    roots = [tensors] if isinstance(tensors, Tensor) else list(tensors)
    grads: list[Any]
    if grad_tensors is None:
        grads = [None] * len(roots)
    elif isinstance(grad_tensors, (Tensor, np.ndarray)):
        grads = [grad_tensors]
    else:
        grads = list(grad_tensors)
    run_backward(roots, [_seed_gradient(r, g) for r, g in zip(roots, grads, strict=True)])


def zero_grads(tensors: Iterable[Tensor], set_to_none: bool = True) -> None:
    """Clear each tensor's ``.grad``: set it to None, or fill it with zeros in place (the
    array stays the same object, e.g. a view into a DDP bucket)."""
    for t in tensors:
        if t.grad is None:
            continue
        if set_to_none:
            t.grad = None
        else:
            t.grad.data.fill(0)


def _seed_gradient(root: Tensor, gradient: Any) -> np.ndarray:
    """The gradient a backward pass starts from at ``root``: ``gradient`` in root's dtype,
    or ones when it is None and root has a single element."""
    if not root.requires_grad:
        raise RuntimeError("element 0 of tensors does not require grad and does not have a grad_fn")
    if gradient is None:
        if root.data.size != 1:
            raise RuntimeError("grad can be implicitly created only for scalar outputs")
        return np.ones_like(root.data)
    return np.asarray(_raw(gradient), dtype=root.data.dtype)
