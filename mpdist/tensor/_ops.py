"""DTensor's operators: one small sharding rule per op, each computing on the local pieces.

Every rule does three things: it picks the placements its inputs must have and
redistributes them (recorded, so backward communicates as the transpose), runs the plain
mpdist op on the pieces (so the op's own autograd does the local backward), and wraps the
result with the output placements. ``local_op`` is that common part; the rules only choose
placements.

The gradient placements follow from the forward ones, one mesh dimension at a time: a
sharded input gets a gradient sharded the same way; a ``Partial`` input gets a replicated
one; a replicated input gets a ``Partial`` gradient when the output is not replicated on
that dimension (it was broadcast against shards, or contracted), and otherwise whatever the
output's gradient was (``Replicate`` or ``Partial``: the same local backward runs on every
rank, so a pending sum passes through unreduced, as in torch).

The rules cover what the nn layers and losses use: elementwise arithmetic, ``==`` / ``!=`` and activations,
``matmul`` / ``F.linear`` (column- and row-wise weights), ``sum`` / ``mean``, views that
keep the sharded dimensions, ``transpose``, ``softmax`` / ``log_softmax`` / ``gelu``, ``layer_norm``.
Anything else is a ``NotImplementedError`` naming the op and the placements.
"""

from __future__ import annotations

import numbers
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np

from mpdist.autograd import Tensor
from mpdist.autograd._tensor import _COMPARABLE
from mpdist.nn import _normalize
from mpdist.tensor._api import (
    OP_RULES,
    DTensor,
    describe,
    redistribute_recorded,
    unwrap,
    wrap,
)
from mpdist.tensor._grad import PlacedGrad, plain, to_placements
from mpdist.tensor._redistribute import Spec
from mpdist.tensor.placement_types import Partial, Placement, Replicate, Shard

Placements = tuple[Placement, ...]


def _refuse(op: str, *args: Any) -> NotImplementedError:
    return NotImplementedError(
        f"DTensor has no sharding rule for {op} with placements {describe(args)}"
    )


def _mixed(op: str) -> RuntimeError:
    return RuntimeError(
        f"{op} got mixed Tensor and DTensor, need to convert all Tensors to DTensor before "
        "calling distributed operators!"
    )


def _scalar(x: Any) -> bool:
    return isinstance(x, numbers.Number) or (isinstance(x, np.ndarray) and x.ndim == 0)


def _same_mesh(op: str, *xs: DTensor) -> Any:
    mesh = xs[0].device_mesh
    for x in xs[1:]:
        if x.device_mesh is not mesh and x.device_mesh != mesh:
            raise RuntimeError(f"{op}: the DTensors are on different device meshes")
    return mesh


# ----------------------------------------------------------------- the common part
def local_op(
    op: str,
    args: Sequence[Any],
    mesh: Any,
    out_placements: Placements,
    out_shape: tuple[int, ...],
    fn: Callable[..., Any],
) -> DTensor:
    """``fn`` on the pieces of the DTensors among ``args`` (others passed as they are),
    wrapped as a DTensor placed by ``out_placements``; recorded with the gradient
    placements of the module docstring."""
    dts = [a for a in args if isinstance(a, DTensor)]
    rep_dims = [
        d
        for d, p in enumerate(out_placements)
        if isinstance(p, Replicate) and all(isinstance(x.placements[d], Replicate) for x in dts)
    ]
    arrived: dict[int, Placement] = {}  # what the output's gradient was on rep_dims

    def grad_of(x: DTensor) -> Callable[[], Placements]:
        def placements() -> Placements:
            out: list[Placement] = []
            for d, p in enumerate(x.placements):
                if d in rep_dims:
                    out.append(arrived.get(d, Replicate()))
                elif isinstance(p, Replicate):
                    out.append(Partial())
                elif isinstance(p, Partial):
                    out.append(Replicate())
                else:
                    out.append(p)
            return tuple(out)

        return placements

    local_args = [unwrap(a, grad_of(a)) if isinstance(a, DTensor) else a for a in args]
    out_local = fn(*local_args)
    spec = Spec(mesh, out_placements, out_shape)
    expect = spec.layout().shape
    if tuple(out_local.shape) != expect:  # a rule's arithmetic is wrong: never silently
        raise AssertionError(f"{op}: local result {tuple(out_local.shape)}, expected {expect}")
    dtype = out_local.data.dtype

    def out_grad(g: Any) -> np.ndarray:
        if not isinstance(g, PlacedGrad) or g.spec is None:
            return np.zeros(expect, dtype)
        target: list[Placement] = []
        for d, (have, p) in enumerate(zip(g.spec.placements, out_placements, strict=True)):
            if d in rep_dims:
                arrived[d] = have if not isinstance(have, Shard) else Replicate()
                target.append(arrived[d])
            else:
                target.append(Replicate() if isinstance(p, Partial) else p)
        return to_placements(plain(g), g.spec, tuple(target))

    return wrap(out_local, spec, out_grad)


def _to(x: DTensor, placements: Sequence[Placement]) -> DTensor:
    return redistribute_recorded(x, tuple(placements))


def _reduce_partials(x: DTensor) -> DTensor:
    """``x`` with every ``Partial`` reduced (all-reduce): what a non-linear op needs."""
    return _to(x, [Replicate() if isinstance(p, Partial) else p for p in x.placements])


def _sum_partial(p: Placement) -> bool:
    return isinstance(p, Partial) and p.reduce_op == "sum"


# ----------------------------------------------------------------- elementwise
def _unary(op: str, method: Callable[..., Tensor], linear: bool = False) -> Callable[..., Any]:
    """A rule for an elementwise op of one tensor: placements kept; a ``Partial`` input is
    reduced first unless the op is linear (``neg``, ``clone``, a cast)."""

    def rule(x: DTensor, *args: Any, **kwargs: Any) -> DTensor:
        if not linear or not all(_sum_partial(p) or not p.is_partial() for p in x.placements):
            x = _reduce_partials(x)
        return local_op(
            op, [x], x.device_mesh, x.placements, x.shape, lambda xl: method(xl, *args, **kwargs)
        )

    return rule


def _broadcast_dim(x: DTensor, out_dim: int, out_nd: int) -> int | None:
    """The dim of ``x`` that meets output dim ``out_dim`` without being stretched, if any."""
    i = out_dim - (out_nd - x.ndim)
    return i if i >= 0 and x.shape[i] != 1 else None


_LINEAR_IN = {"add": (True, True), "sub": (True, True), "mul": (True, True), "div": (True, False)}


def _binary(op: str, a: Any, b: Any, fn: Callable[[Any, Any], Any]) -> DTensor:
    """``fn(a, b)`` for an elementwise op with at least one DTensor operand."""
    for x in (a, b):
        if not isinstance(x, DTensor) and not _scalar(x):
            raise _mixed(op)
    if not isinstance(a, DTensor) or not isinstance(b, DTensor):
        x, first = (a, True) if isinstance(a, DTensor) else (b, False)
        # A Partial sum stays one only where the scalar scales it: x * c, c * x, x / c.
        scales = op == "mul" or (op == "div" and first)
        if not scales or any(p.is_partial() and not _sum_partial(p) for p in x.placements):
            x = _reduce_partials(x)
        args = [x, b] if first else [a, x]
        return local_op(op, args, x.device_mesh, x.placements, x.shape, fn)
    mesh = _same_mesh(op, a, b)
    out_shape = tuple(np.broadcast_shapes(a.shape, b.shape))
    rules = [
        _elementwise_dim(op, a, b, x, y, len(out_shape))
        for x, y in zip(a.placements, b.placements, strict=True)
    ]
    a2 = _to(a, [r[0] for r in rules])
    b2 = _to(b, [r[1] for r in rules])
    return local_op(op, [a2, b2], mesh, tuple(r[2] for r in rules), out_shape, fn)


def _elementwise_dim(
    op: str, a: DTensor, b: DTensor, x: Placement, y: Placement, nd: int
) -> tuple[Placement, Placement, Placement]:
    """One mesh dimension of ``a op b``: the placements the operands need, and the output's."""
    # Shards of stretched (broadcast) dims are gathered.
    if isinstance(x, Shard) and _broadcast_dim(a, x.dim + nd - a.ndim, nd) is None:
        x = Replicate()
    if isinstance(y, Shard) and _broadcast_dim(b, y.dim + nd - b.ndim, nd) is None:
        y = Replicate()
    # A Partial sum survives on a side the op is linear in (one side of a product), never
    # against a shard; any other Partial is reduced.
    lin_a, lin_b = _LINEAR_IN.get(op, (False, False))
    sums = op in ("add", "sub") and _sum_partial(x) and _sum_partial(y)
    if isinstance(x, Partial) and isinstance(y, Partial) and not sums:
        y = Replicate()
    if isinstance(x, Partial) and (not (_sum_partial(x) and lin_a) or isinstance(y, Shard)):
        x = Replicate()
    if isinstance(y, Partial) and (not (_sum_partial(y) and lin_b) or isinstance(x, Shard)):
        y = Replicate()
    if isinstance(x, Partial) or isinstance(y, Partial):
        if op in ("add", "sub"):  # the replicated side is split into terms, as torch
            x = x if isinstance(x, Partial) else Partial()
            y = y if isinstance(y, Partial) else Partial()
        return x, y, Partial()
    if isinstance(x, Shard) or isinstance(y, Shard):
        # The output dim the shard is on; a replicated side that has it is chunked there.
        k = x.dim + nd - a.ndim if isinstance(x, Shard) else _shard_dim(y) + nd - b.ndim
        ia, ib = _broadcast_dim(a, k, nd), _broadcast_dim(b, k, nd)
        return (
            Shard(ia) if ia is not None else Replicate(),
            Shard(ib) if ib is not None else Replicate(),
            Shard(k),
        )
    return x, y, Replicate()


def _shard_dim(p: Placement) -> int:
    assert isinstance(p, Shard)
    return p.dim


def _binary_rule(
    op: str, fn: Callable[[Any, Any], Any], reflected: bool = False
) -> Callable[..., Any]:
    if reflected:
        return lambda self, other: _binary(op, other, self, fn)
    return lambda self, other: _binary(op, self, other, fn)


# ----------------------------------------------------------------- matmul and linear
def _contracted(x: Placement, y: Placement, k_a: int) -> bool:
    """Whether ``a @ b`` placed ``x``, ``y`` leaves a Partial sum: both cut along the
    contracted dim, or one side a Partial sum and the other replicated."""
    if isinstance(x, Shard) and isinstance(y, Shard):
        return x.dim == k_a and y.dim == 0
    return (_sum_partial(x) and isinstance(y, Replicate)) or (
        isinstance(x, Replicate) and _sum_partial(y)
    )


def _matmul_placements(
    op: str, a: DTensor, b_placements: Placements, b_ndim: int, a_nd: int
) -> tuple[Placements, Placements, Placements]:
    """Per mesh dim: (a's, b's, the output's) placements of ``a (..., m, k) @ b (k, n)``
    with ``b`` placed by ``b_placements`` (already in ``(k, n)`` terms)."""
    pa: list[Placement] = []
    pb: list[Placement] = []
    out: list[Placement] = []
    k_a = a_nd - 1
    for d, (x, y) in enumerate(zip(a.placements, b_placements, strict=True)):
        if isinstance(x, Shard) and x.dim == k_a and isinstance(y, Replicate):
            y = Shard(0)  # the replicated side is cut along k too: a local chunk
        if isinstance(x, Replicate) and isinstance(y, Shard) and y.dim == 0:
            x = Shard(k_a)
        if isinstance(x, Replicate) and isinstance(y, Replicate):
            out.append(Replicate())
        elif isinstance(x, Shard) and x.dim < k_a and isinstance(y, Replicate):
            out.append(Shard(x.dim))
        elif isinstance(x, Replicate) and isinstance(y, Shard) and y.dim == 1:
            out.append(Shard(a_nd - 1))
        elif _contracted(x, y, k_a):
            out.append(Partial())
        else:
            raise NotImplementedError(
                f"DTensor has no sharding rule for {op} with placements {x} and {y} on mesh "
                f"dimension {d} (supported: row shards x replicated, replicated x column "
                "shards, contraction shards on both, Partial x replicated)"
            )
        pa.append(x)
        pb.append(y)
    return tuple(pa), tuple(pb), tuple(out)


def _matmul(a: Any, b: Any) -> DTensor:
    if not isinstance(a, DTensor) or not isinstance(b, DTensor):
        raise _mixed("matmul")
    mesh = _same_mesh("matmul", a, b)
    out_shape = _matmul_shape(a.shape, b.shape)
    if a.ndim < 2 or b.ndim != 2:
        if any(not isinstance(p, Replicate) for p in a.placements + b.placements):
            raise _refuse("matmul (a 1-D or batched right operand)", a, b)
        return local_op("matmul", [a, b], mesh, a.placements, out_shape, lambda x, y: x @ y)
    pa, pb, out = _matmul_placements("matmul", a, b.placements, 2, a.ndim)
    return local_op("matmul", [_to(a, pa), _to(b, pb)], mesh, out, out_shape, lambda x, y: x @ y)


def _matmul_shape(sa: tuple[int, ...], sb: tuple[int, ...]) -> tuple[int, ...]:
    return tuple(np.matmul(np.empty(sa, np.int8), np.empty(sb, np.int8)).shape)


def _weight_as_kn(p: Placement) -> Placement:
    """A linear weight's placement ``(n, k)`` in the ``(k, n)`` terms of its transpose."""
    return Shard(1 - p.dim) if isinstance(p, Shard) else p


def _linear(fn_cls: Any, *args: Any) -> DTensor:
    """``F.linear`` (``_Linear.apply(x, weight[, bias])``): x ``(..., k)``, weight ``(n, k)``:
    column-wise weights (``Shard(0)``) give an output sharded on its last dim, row-wise
    weights (``Shard(1)``) with an input sharded on its last dim give a ``Partial`` output;
    the bias follows the output (a replicated bias is split into terms on a Partial output,
    as torch)."""
    if any(not isinstance(t, DTensor) for t in args if t is not None):
        raise _mixed("linear")
    x, w = args[0], args[1]
    bias = args[2] if len(args) > 2 else None
    mesh = _same_mesh("linear", *[t for t in args if t is not None])
    if w.ndim != 2 or x.ndim < 1:
        raise _refuse("linear", *args)
    if x.ndim == 1:
        raise _refuse("linear (a 1-D input)", *args)
    pa, pb, out = _matmul_placements(
        "linear", x, tuple(_weight_as_kn(p) for p in w.placements), 2, x.ndim
    )
    pw = tuple(_weight_as_kn(p) for p in pb)
    out_shape = tuple(x.shape[:-1]) + (w.shape[0],)
    inputs = [_to(x, pa), _to(w, pw)]
    if bias is not None:
        pbias = [
            Shard(0)
            if isinstance(p, Shard) and p.dim == len(out_shape) - 1
            else Partial()
            if isinstance(p, Partial)
            else Replicate()
            for p in out
        ]
        inputs.append(_to(bias, pbias))
    return local_op("linear", inputs, mesh, out, out_shape, lambda *ls: fn_cls.apply(*ls))


# ----------------------------------------------------------------- reductions
def _axes(axis: Any, ndim: int) -> tuple[int, ...]:
    if axis is None:
        return tuple(range(ndim))
    axes = (axis,) if isinstance(axis, (int, np.integer)) else tuple(axis)
    out = []
    for a in axes:
        if not -max(ndim, 1) <= a < max(ndim, 1):
            raise IndexError(
                f"Dimension out of range (expected to be in range of [{-max(ndim, 1)}, "
                f"{max(ndim, 1) - 1}], but got {a})"
            )
        out.append(int(a) % max(ndim, 1))
    return tuple(sorted(set(out)))


def _sum(
    x: DTensor,
    axis: Any = None,
    keepdims: bool = False,
    *,
    dim: Any = None,
    keepdim: bool = False,
    dtype: Any = None,
    out: None = None,
) -> DTensor:
    """Sum: a sharded dim summed over becomes ``Partial``; other shards move to their
    place in the result; Partials stay (the sum is linear)."""
    if out is not None:
        raise TypeError("Tensor.sum does not support out=")
    if dtype is not None:
        x = x.astype(dtype)
    axes = _axes(dim if axis is None else axis, x.ndim)
    keep = keepdims or keepdim
    if any(p.is_partial() and not _sum_partial(p) for p in x.placements):
        x = _reduce_partials(x)
    placements: list[Placement] = []
    for p in x.placements:
        if isinstance(p, Shard):
            if p.dim in axes:
                placements.append(Partial())
            else:
                placements.append(Shard(p.dim if keep else p.dim - sum(a < p.dim for a in axes)))
        else:
            placements.append(p)
    shape = tuple((1 if i in axes else n) for i, n in enumerate(x.shape) if keep or i not in axes)
    return local_op(
        "sum",
        [x],
        x.device_mesh,
        tuple(placements),
        shape,
        lambda xl: xl.sum(axis=axes, keepdims=keep),
    )


def _mean(
    x: DTensor,
    axis: Any = None,
    keepdims: bool = False,
    *,
    dim: Any = None,
    keepdim: bool = False,
    dtype: Any = None,
    out: None = None,
) -> DTensor:
    """Mean: the sum divided by the global count (a ``Partial`` sum of uneven shards is
    exact, where a mean of local means would not be)."""
    if dtype is not None:
        x = x.astype(dtype)
    axes = _axes(dim if axis is None else axis, x.ndim)
    count = int(np.prod([x.shape[a] for a in axes], dtype=np.int64)) if axes else 1
    return _sum(x, axes, keepdims or keepdim, out=out) / count


# ----------------------------------------------------------------- views
def _resolve_shape(shape: Sequence[int], numel: int) -> tuple[int, ...]:
    shape = [int(n) for n in shape]
    if shape.count(-1) > 1:
        raise RuntimeError("only one dimension can be inferred")
    if -1 in shape:
        rest = int(np.prod([n for n in shape if n != -1], dtype=np.int64))
        if rest == 0 or numel % rest:
            raise RuntimeError(f"shape '{list(shape)}' is invalid for input of size {numel}")
        shape[shape.index(-1)] = numel // rest
    if int(np.prod(shape, dtype=np.int64)) != numel:
        raise RuntimeError(f"shape '{list(shape)}' is invalid for input of size {numel}")
    return tuple(shape)


def _view_placement(x: DTensor, d: int, p: Shard, new: tuple[int, ...]) -> Placement:
    """Where ``Shard(p.dim)`` goes under a view to ``new``: the output dim that is the same
    dim (equal length, equal product before it), or that merges it with the dims after it
    when the shards are even (every piece is then a run of whole rows)."""
    old = x.shape
    before = int(np.prod(old[: p.dim], dtype=np.int64))
    n = int(x.device_mesh.size(d))
    others = [e for e, q in enumerate(x.placements) if e != d and q == p]
    acc = 1
    for j, m in enumerate(new):
        if acc == before:
            if m == old[p.dim]:
                return Shard(j)
            if not others and m % old[p.dim] == 0 and old[p.dim] % n == 0:
                after = m // old[p.dim]
                if int(np.prod(old[p.dim + 1 :], dtype=np.int64)) % after == 0 and _merges(
                    old, p.dim, after
                ):
                    return Shard(j)
        acc *= m
        if acc > before and before != 0:
            break
    raise NotImplementedError(
        f"DTensor has no sharding rule for a view from {old} to {new} with placements "
        f"{x.placements}: the sharded dim {p.dim} would be split or merged unevenly"
    )


def _merges(old: tuple[int, ...], i: int, factor: int) -> bool:
    """Whether the dims after ``i`` start with a run whose product is ``factor``."""
    acc = 1
    for m in old[i + 1 :]:
        if acc == factor:
            return True
        acc *= m
    return acc == factor


def _reshape(x: DTensor, *shape: Any) -> DTensor:
    """A view/reshape that keeps every sharded dim whole (or merges it with the dims after
    it, for even shards); replicated and Partial dims may change freely."""
    if len(shape) == 1 and isinstance(shape[0], (tuple, list)):
        shape = tuple(shape[0])
    new = _resolve_shape(shape, x.numel())
    placements = tuple(
        _view_placement(x, d, p, new) if isinstance(p, Shard) else p
        for d, p in enumerate(x.placements)
    )
    local_shape = Spec(x.device_mesh, placements, new).layout().shape
    return local_op(
        "reshape", [x], x.device_mesh, placements, new, lambda xl: xl.reshape(local_shape)
    )


def _unsqueeze(x: DTensor, dim: int) -> DTensor:
    nd = x.ndim
    if not -nd - 1 <= dim <= nd:
        raise IndexError(
            f"Dimension out of range (expected to be in range of [{-nd - 1}, {nd}], but got {dim})"
        )
    shape = list(x.shape)
    shape.insert(dim % (nd + 1), 1)
    return _reshape(x, tuple(shape))


def _squeeze(x: DTensor, dim: Any = None) -> DTensor:
    axes = set(range(x.ndim)) if dim is None else set(_axes(dim, x.ndim))
    return _reshape(x, tuple(n for i, n in enumerate(x.shape) if not (i in axes and n == 1)))


def _flatten(x: DTensor, start_dim: int = 0, end_dim: int = -1) -> DTensor:
    shape = x.shape
    if not shape:
        return _reshape(x, (1,))
    start, end = _axes(start_dim, len(shape))[0], _axes(end_dim, len(shape))[0]
    if start > end:
        raise RuntimeError("flatten() has invalid args: start_dim cannot come after end_dim")
    merged = int(np.prod(shape[start : end + 1], dtype=np.int64))
    return _reshape(x, shape[:start] + (merged,) + shape[end + 1 :])


def _transpose(x: DTensor, *axes: Any) -> DTensor:
    nd = x.ndim
    if len(axes) == 1 and isinstance(axes[0], (tuple, list)):
        axes = tuple(axes[0])
    perm = tuple(int(a) % nd for a in axes) if axes else tuple(reversed(range(nd)))
    placements = tuple(
        Shard(perm.index(p.dim)) if isinstance(p, Shard) else p for p in x.placements
    )
    shape = tuple(x.shape[i] for i in perm)
    return local_op(
        "transpose", [x], x.device_mesh, placements, shape, lambda xl: xl.transpose(perm)
    )


# ----------------------------------------------------------------- softmax and friends
def _along_axis(fn_cls: Any, x: Any, axis: int, *rest: Any) -> DTensor:
    """softmax / log_softmax along ``axis``: that axis is gathered (and Partials reduced);
    other shards stay."""
    if not isinstance(x, DTensor):
        raise _mixed(fn_cls.__name__)
    x = _to(
        x,
        [
            Replicate() if isinstance(p, Partial) or (isinstance(p, Shard) and p.dim == axis) else p
            for p in x.placements
        ],
    )
    return local_op(
        fn_cls.__name__,
        [x],
        x.device_mesh,
        x.placements,
        x.shape,
        lambda xl: fn_cls.apply(xl, axis, *rest),
    )


def _gelu(fn_cls: Any, x: Any, approximate: str) -> DTensor:
    if not isinstance(x, DTensor):
        raise _mixed("gelu")
    return _unary("gelu", lambda xl: fn_cls.apply(xl, approximate))(x)


def _layer_norm(fn_cls: Any, x: Any, weight: Any, bias: Any, ndims: int, eps: float) -> DTensor:
    """LayerNorm over the last ``ndims`` dims: those dims gathered (and Partials reduced),
    shards of the other dims kept (sequence parallelism); weight and bias replicated (their
    gradients arrive Partial from sharded rows and are summed where they are used)."""
    if any(not isinstance(t, DTensor) for t in (x, weight, bias) if t is not None):
        raise _mixed("layer_norm")
    mesh = _same_mesh("layer_norm", *[t for t in (x, weight, bias) if t is not None])
    normed = range(x.ndim - ndims, x.ndim)
    x = _to(
        x,
        [
            Replicate()
            if isinstance(p, Partial) or (isinstance(p, Shard) and p.dim in normed)
            else p
            for p in x.placements
        ],
    )
    reps = [Replicate()] * len(x.placements)
    args = [x, *(None if t is None else _to(t, reps) for t in (weight, bias)), ndims, eps]
    return local_op("layer_norm", args, mesh, x.placements, x.shape, lambda *ls: fn_cls.apply(*ls))


def _comparison_rule(op: str, fn: Callable[[Any, Any], Any]) -> Callable[..., Any]:
    """``==`` / ``!=``: elementwise like the arithmetic (a Partial is reduced first: equality
    is not linear), a boolean DTensor; with anything that is neither a tensor nor a number,
    NotImplemented, as the plain Tensor's (``dt == None`` is False)."""

    def rule(self: DTensor, other: Any) -> Any:
        if not isinstance(other, _COMPARABLE):
            return NotImplemented
        return _binary(op, self, other, fn)

    return rule


def _function(name: str, rule: Callable[..., DTensor]) -> Callable[..., DTensor]:
    """A rule for an ``autograd.Function`` subclass: it gets the Function class first."""
    from mpdist.nn import functional as F

    fn_cls = getattr(F, name)
    return lambda *args, **kwargs: rule(fn_cls, *args, **kwargs)


OP_RULES.update(
    {
        "add": _binary_rule("add", lambda x, y: x + y),
        "radd": _binary_rule("add", lambda x, y: x + y, reflected=True),
        "sub": _binary_rule("sub", lambda x, y: x - y),
        "rsub": _binary_rule("sub", lambda x, y: x - y, reflected=True),
        "mul": _binary_rule("mul", lambda x, y: x * y),
        "rmul": _binary_rule("mul", lambda x, y: x * y, reflected=True),
        "truediv": _binary_rule("div", lambda x, y: x / y),
        "rtruediv": _binary_rule("div", lambda x, y: x / y, reflected=True),
        "pow": _binary_rule("pow", lambda x, y: x**y),
        "rpow": _binary_rule("pow", lambda x, y: x**y, reflected=True),
        "eq": _comparison_rule("eq", lambda x, y: x == y),
        "ne": _comparison_rule("ne", lambda x, y: x != y),
        "matmul": _matmul,
        "rmatmul": lambda self, other: _matmul(other, self),
        "neg": _unary("neg", Tensor.__neg__, linear=True),
        "clone": _unary("clone", Tensor.clone, linear=True),
        "astype": _unary("astype", Tensor.astype, linear=True),
        "contiguous": _unary("contiguous", Tensor.contiguous, linear=True),
        "exp": _unary("exp", Tensor.exp),
        "log": _unary("log", Tensor.log),
        "sin": _unary("sin", Tensor.sin),
        "cos": _unary("cos", Tensor.cos),
        "tanh": _unary("tanh", Tensor.tanh),
        "sigmoid": _unary("sigmoid", Tensor.sigmoid),
        "relu": _unary("relu", Tensor.relu),
        "abs": _unary("abs", Tensor.abs),
        "sum": _sum,
        "mean": _mean,
        "reshape": _reshape,
        "unsqueeze": _unsqueeze,
        "squeeze": _squeeze,
        "flatten": _flatten,
        "transpose": _transpose,
        "_Linear": _function("_Linear", _linear),
        "_Softmax": _function("_Softmax", _along_axis),
        "_LogSoftmax": _function("_LogSoftmax", _along_axis),
        "_Gelu": _function("_Gelu", _gelu),
        "LayerNorm": lambda *args: _layer_norm(_normalize.LayerNorm, *args),
    }
)
