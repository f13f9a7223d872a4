"""Differentiable collectives: each forward is the collective, each backward its adjoint.

``broadcast``/``reduce`` are each other's adjoints, ``all_reduce(SUM)`` is its own,
``all_gather`` pairs with reduce-scatter, ``gather`` with ``scatter``, and ``all_to_all``
with itself (splits swapped for ``all_to_all_single``). Ranks (``src``/``dst``) are global,
as everywhere in mpdist. Every rank of the group must call the same function in the same
order, forward and backward alike.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from mpdist import distributed as dist
from mpdist.autograd import Function, Tensor
from mpdist.process_group import ProcessGroup, ReduceOp


def _arr(x: Any) -> np.ndarray:
    """The array as C-contiguous (collectives need it), copying only when it is not."""
    return np.ascontiguousarray(x.data if isinstance(x, Tensor) else np.asarray(x))


def _fresh(x: Any) -> np.ndarray:
    """A C-contiguous copy: the forward result must not alias the caller's input."""
    return np.array(x.data if isinstance(x, Tensor) else x, copy=True, order="C")


def _me(group: ProcessGroup | None) -> int:
    """This process's global rank (for comparing with ``src``/``dst``)."""
    if group is None:
        return dist.get_rank()
    r = dist.get_rank(group)
    try:
        return dist.get_global_rank(group, r)
    except ValueError:  # a group the module API does not know: its ranks are global
        return r


def _copied(collective: Any, x: Any, **kwargs: Any) -> np.ndarray:
    """A fresh copy of ``x`` after the in-place ``collective(copy, **kwargs)`` ran on it."""
    out = _fresh(x)
    collective(out, **kwargs)
    return out


def _gathered(x: Any, dst: int, group: Any) -> list[np.ndarray]:
    """Every rank's ``x`` on ``dst`` (zeros elsewhere): gather's forward, scatter's backward."""
    inp = _arr(x)
    outs = [np.zeros_like(inp) for _ in range(dist.get_world_size(group))]
    dist.gather(inp, outs if _me(group) == dst else None, dst=dst, group=group)
    return outs


def _scattered(xs: Sequence[Any], src: int, group: Any) -> np.ndarray:
    """``src``'s ``xs[my_rank]``: scatter's forward, gather's backward."""
    out = np.empty_like(_arr(xs[0]))
    dist.scatter(out, [_arr(x) for x in xs] if _me(group) == src else None, src=src, group=group)
    return out


def _all_gathered(x: Any, group: Any) -> list[np.ndarray]:
    """Every rank's ``x``: all_gather's forward, reduce_scatter's backward."""
    inp = _arr(x)
    outs = [np.empty_like(inp) for _ in range(dist.get_world_size(group))]
    dist.all_gather(outs, inp, group=group)
    return outs


def _check_linear(op: ReduceOp, name: str) -> None:
    """Only SUM and AVG are linear, so only they have a backward."""
    if op not in (ReduceOp.SUM, ReduceOp.AVG):
        raise RuntimeError(f"{name} backward is only defined for SUM and AVG, not {op}")


class _Broadcast(Function):
    @staticmethod
    def forward(ctx: Any, src: int, group: Any, t: Tensor) -> np.ndarray:
        ctx.src, ctx.group = src, group
        return _copied(dist.broadcast, t, src=src, group=group)

    @staticmethod
    def backward(ctx: Any, g: Tensor) -> tuple[None, None, np.ndarray]:
        gx = _copied(dist.reduce, g, dst=ctx.src, op=ReduceOp.SUM, group=ctx.group)
        if _me(ctx.group) != ctx.src:
            gx[...] = 0
        return None, None, gx


class _Reduce(Function):
    @staticmethod
    def forward(ctx: Any, dst: int, op: ReduceOp, group: Any, t: Tensor) -> np.ndarray:
        ctx.dst, ctx.group = dst, group
        return _copied(dist.reduce, t, dst=dst, op=op, group=group)

    @staticmethod
    def backward(ctx: Any, g: Tensor) -> tuple[None, None, None, np.ndarray]:
        return None, None, None, _copied(dist.broadcast, g, src=ctx.dst, group=ctx.group)


class _AllReduce(Function):
    @staticmethod
    def forward(ctx: Any, op: ReduceOp, group: Any, t: Tensor) -> np.ndarray:
        ctx.op, ctx.group = op, group
        return _copied(dist.all_reduce, t, op=op, group=group)

    @staticmethod
    def backward(ctx: Any, g: Tensor) -> tuple[None, None, np.ndarray]:
        _check_linear(ctx.op, "all_reduce")
        return None, None, _copied(dist.all_reduce, g, op=ctx.op, group=ctx.group)


class _AllGather(Function):
    @staticmethod
    def forward(ctx: Any, group: Any, t: Tensor) -> tuple[np.ndarray, ...]:
        ctx.group = group
        return tuple(_all_gathered(t, group))

    @staticmethod
    def backward(ctx: Any, *grads: Tensor) -> tuple[None, np.ndarray]:
        ins = [_arr(g) for g in grads]
        gx = np.empty_like(ins[0])
        dist.reduce_scatter(gx, ins, op=ReduceOp.SUM, group=ctx.group)
        return None, gx


class _Gather(Function):
    @staticmethod
    def forward(ctx: Any, dst: int, group: Any, t: Tensor) -> tuple[np.ndarray, ...]:
        ctx.dst, ctx.group = dst, group
        return tuple(_gathered(t, dst, group))

    @staticmethod
    def backward(ctx: Any, *grads: Tensor) -> tuple[None, None, np.ndarray]:
        return None, None, _scattered(grads, ctx.dst, ctx.group)


class _Scatter(Function):
    @staticmethod
    def forward(ctx: Any, src: int, group: Any, *tensors: Tensor) -> np.ndarray:
        ctx.src, ctx.group = src, group
        return _scattered(tensors, src, group)

    @staticmethod
    def backward(ctx: Any, g: Tensor) -> tuple[np.ndarray | None, ...]:
        return (None, None, *_gathered(g, ctx.src, ctx.group))


class _ReduceScatter(Function):
    @staticmethod
    def forward(ctx: Any, op: ReduceOp, group: Any, out: Any, *tensors: Tensor) -> np.ndarray:
        ctx.group, ctx.op = group, op
        res = out.data if isinstance(out, Tensor) else out
        dist.reduce_scatter(res, [_arr(t) for t in tensors], op=op, group=group)
        return res

    @staticmethod
    def backward(ctx: Any, g: Tensor) -> tuple[np.ndarray | None, ...]:
        _check_linear(ctx.op, "reduce_scatter")
        outs = _all_gathered(g, ctx.group)
        if ctx.op == ReduceOp.AVG:
            outs = [o / len(outs) for o in outs]
        return (None, None, None, *outs)


class _AllToAll(Function):
    @staticmethod
    def forward(ctx: Any, group: Any, n: int, *tensors: Any) -> tuple[np.ndarray, ...]:
        ctx.group, ctx.n = group, n
        outs, ins = list(tensors[:n]), tensors[n:]
        ctx.in_shapes = [np.shape(t.data if isinstance(t, Tensor) else t) for t in ins]
        out_arrs = [o.data if isinstance(o, Tensor) else o for o in outs]
        dist.all_to_all(out_arrs, [_arr(t) for t in ins], group=group)
        return tuple(out_arrs)

    @staticmethod
    def backward(ctx: Any, *grads: Tensor) -> tuple[np.ndarray | None, ...]:
        gins = [np.empty(s, dtype=grads[0].dtype) for s in ctx.in_shapes]
        dist.all_to_all(gins, [_arr(g) for g in grads], group=ctx.group)
        return (None, None, *([None] * ctx.n), *gins)


class _AllToAllSingle(Function):
    @staticmethod
    def forward(
        ctx: Any, group: Any, out_splits: Any, in_splits: Any, out: Any, inp: Tensor
    ) -> np.ndarray:
        ctx.group, ctx.out_splits, ctx.in_splits = group, out_splits, in_splits
        ctx.in_shape = np.shape(inp.data if isinstance(inp, Tensor) else inp)
        res = out.data if isinstance(out, Tensor) else out
        dist.all_to_all_single(res, _arr(inp), out_splits, in_splits, group=group)
        return res

    @staticmethod
    def backward(ctx: Any, g: Tensor) -> tuple[None, None, None, None, np.ndarray]:
        gx = np.empty(ctx.in_shape, dtype=g.dtype)
        dist.all_to_all_single(gx, _arr(g), ctx.in_splits, ctx.out_splits, group=ctx.group)
        return None, None, None, None, gx


def _tensor(x: Any) -> Tensor:
    return x if isinstance(x, Tensor) else Tensor(np.asarray(x))


def broadcast(tensor: Any, src: int, group: ProcessGroup | None = None) -> Tensor:
    """Every rank gets ``src``'s tensor; the gradient is summed onto ``src`` (zeros elsewhere)."""
    return _Broadcast.apply(src, group, _tensor(tensor))


def reduce(
    tensor: Any, dst: int, op: ReduceOp = ReduceOp.SUM, group: ProcessGroup | None = None
) -> Tensor:
    """``dst`` gets the reduction (others: unspecified); the gradient is ``dst``'s, broadcast."""
    return _Reduce.apply(dst, op, group, _tensor(tensor))


def all_reduce(
    tensor: Any, op: ReduceOp = ReduceOp.SUM, group: ProcessGroup | None = None
) -> Tensor:
    """The reduction on every rank (input untouched); backward all-reduces the gradients."""
    return _AllReduce.apply(op, group, _tensor(tensor))


def all_gather(tensor: Any, group: ProcessGroup | None = None) -> tuple[Tensor, ...]:
    """One tensor per rank; backward gives each rank the sum over ranks of its slot's grads."""
    return _AllGather.apply(group, _tensor(tensor))


def gather(tensor: Any, dst: int = 0, group: ProcessGroup | None = None) -> tuple[Tensor, ...]:
    """On ``dst`` one tensor per rank (zeros elsewhere); backward scatters ``dst``'s grads."""
    return _Gather.apply(dst, group, _tensor(tensor))


def scatter(tensors: Sequence[Any], src: int = 0, group: ProcessGroup | None = None) -> Tensor:
    """Rank i gets ``src``'s ``tensors[i]`` (every rank passes same-shaped tensors); backward
    gathers the grads onto ``src`` (zeros elsewhere)."""
    return _Scatter.apply(src, group, *(_tensor(t) for t in tensors))


def reduce_scatter(
    output: Any,
    input_list: Sequence[Any],
    op: ReduceOp = ReduceOp.SUM,
    group: ProcessGroup | None = None,
) -> Tensor:
    """``output`` <- the reduction over ranks of ``input_list[my_rank]``; backward all-gathers."""
    return _ReduceScatter.apply(op, group, output, *(_tensor(t) for t in input_list))


def all_to_all(
    output_tensor_list: Sequence[Any],
    input_tensor_list: Sequence[Any],
    group: ProcessGroup | None = None,
) -> tuple[Tensor, ...]:
    """``out[i]`` <- rank i's ``in[my_rank]``; backward is the all-to-all of the grads."""
    outs = list(output_tensor_list)
    return _AllToAll.apply(group, len(outs), *outs, *(_tensor(t) for t in input_tensor_list))


def all_to_all_single(
    output: Any,
    input: Any,
    output_split_sizes: list[int] | None = None,
    input_split_sizes: list[int] | None = None,
    group: ProcessGroup | None = None,
) -> Tensor:
    """Rows of ``input`` split by ``input_split_sizes`` go to each rank; backward swaps the
    splits."""
    return _AllToAllSingle.apply(
        group, output_split_sizes, input_split_sizes, output, _tensor(input)
    )


__all__ = [
    "all_gather",
    "all_reduce",
    "all_to_all",
    "all_to_all_single",
    "broadcast",
    "gather",
    "reduce",
    "reduce_scatter",
    "scatter",
]
