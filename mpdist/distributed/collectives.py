"""The collectives and point-to-point operations of the module API, on numpy arrays."""

from __future__ import annotations

from datetime import timedelta
from typing import Any

import numpy as np

from mpdist.algorithms.reduction import ReduceOp
from mpdist.backends.builtin import checked_array
from mpdist.distributed import _world as state
from mpdist.distributed import dispatch
from mpdist.distributed._checks import (
    _array_list,
    _check_op,
    _check_timeout,
    _finish,
    _global_rank,
    _group_rank,
    _is_int,
    _me,
    _resolve,
    _root_only,
    _size,
    _valid_ops,
)
from mpdist.distributed._world import _UNINIT, _info, _tls
from mpdist.process_group import (
    DEFAULT_TIMEOUT,
    AllgatherOptions,
    AllToAllOptions,
    BarrierOptions,
    CheckedAllgatherOptions,
    CheckedAllreduceOptions,
    CheckedBroadcastOptions,
    CheckedReduceScatterOptions,
    GatherOptions,
    ProcessGroup,
    ReduceOptions,
    ScatterOptions,
    Work,
    set_caller_blocks,
)

# The small-message collectives (all_reduce, broadcast, all_gather) check their arguments
# here and hand the group Checked*Options, built positionally (keyword arguments cost a
# dataclass 100 ns more per call): a built-in group then skips checking them again.


def all_reduce(
    tensor: Any,
    op: ReduceOp = ReduceOp.SUM,
    group: ProcessGroup | None = None,
    async_op: bool = False,
) -> Work | None:
    """Reduce ``tensor`` across the group in place; every rank gets the same bits."""
    if dispatch.active and dispatch.intercepting():  # a CollectiveMode sees it
        return dispatch.run(_OP_ALL_REDUCE, (tensor, op, group, async_op))
    # the latency path (a 4-byte all_reduce is tens of microseconds end to end): common
    # cases are decided with as few Python operations as possible
    if group is None:
        world = _tls.world or state.process_world
        if world is None:
            raise ValueError(_UNINIT)
        pg = world.default_pg
        assert pg is not None  # a world is published with its default group
    else:
        world, pg = _resolve(group, "all_reduce")
        if pg is None:
            return None
    arr = tensor
    if type(arr) is not np.ndarray or not arr.flags.carray:
        arr = checked_array(tensor, "all_reduce", "tensor", out=True)
    ops = _valid_ops.get(arr.dtype)
    if ops is None or op not in ops:
        checked_array(arr, "all_reduce", "tensor", out=True)
        _check_op(op, arr.dtype, "all_reduce")
    work = pg.allreduce([tensor], CheckedAllreduceOptions(op, None, async_op))
    if work is None:  # ran in this thread: done
        return None
    return _finish(work, world, pg, async_op)


def broadcast(
    tensor: Any, src: int = 0, group: ProcessGroup | None = None, async_op: bool = False
) -> Work | None:
    """Copy global rank ``src``'s ``tensor`` into every rank's ``tensor``."""
    if dispatch.active and dispatch.intercepting():  # a CollectiveMode sees it
        return dispatch.run(_OP_BROADCAST, (tensor, src, group, async_op))
    world = (_tls.world or state.process_world) if group is None else None
    if world is not None and type(src) is int and 0 <= src < world.size:
        # the default group (the latency path): its ranks are the global ones
        pg, root, me = world.default_pg, src, world.rank
        assert pg is not None  # a world is published with its default group
    else:
        world, pg = _resolve(group, "broadcast")
        if pg is None:
            return None
        root = _group_rank(world, pg, src, "src", "broadcast")
        me = _me(world, pg)
    checked_array(tensor, "broadcast", "tensor", out=root != me)
    work = pg.broadcast([tensor], CheckedBroadcastOptions(root, 0, None, async_op))
    if work is None:  # ran in this thread: done
        return None
    return _finish(work, world, pg, async_op)


def reduce(
    tensor: Any,
    dst: int = 0,
    op: ReduceOp = ReduceOp.SUM,
    group: ProcessGroup | None = None,
    async_op: bool = False,
) -> Work | None:
    """Reduce ``tensor`` onto global rank ``dst``; other ranks' contents are unspecified."""
    if dispatch.active and dispatch.intercepting():  # a CollectiveMode sees it
        return dispatch.run(_OP_REDUCE, (tensor, dst, op, group, async_op))
    world, pg = _resolve(group, "reduce")
    if pg is None:
        return None
    root = _group_rank(world, pg, dst, "dst", "reduce")
    arr = checked_array(tensor, "reduce", "tensor", out=True)
    _check_op(op, arr.dtype, "reduce")
    work = pg.reduce([tensor], ReduceOptions(reduceOp=op, rootRank=root, asyncOp=async_op))
    return _finish(work, world, pg, async_op)


def all_gather(
    tensor_list: list[Any], tensor: Any, group: ProcessGroup | None = None, async_op: bool = False
) -> Work | None:
    """``tensor_list[i]`` <- rank i's ``tensor``; one entry per rank, same shape and dtype."""
    if dispatch.active and dispatch.intercepting():  # a CollectiveMode sees it
        return dispatch.run(_OP_ALL_GATHER, (tensor_list, tensor, group, async_op))
    world, pg = _resolve(group, "all_gather")
    if pg is None:
        return None
    inp = checked_array(tensor, "all_gather", "tensor")
    n = _size(world, pg)
    _array_list(tensor_list, "all_gather", "tensor_list", n, True, like=(inp, "tensor"))
    work = pg.allgather([tensor_list], [tensor], CheckedAllgatherOptions(None, async_op))
    if work is None:  # ran in this thread: done
        return None
    return _finish(work, world, pg, async_op)


def _check_concat(big: np.ndarray, small: np.ndarray, n: int, op: str, bw: str, sw: str) -> None:
    if big.dtype != small.dtype:
        raise TypeError(f"{op}: {bw} has dtype {big.dtype} but {sw} has dtype {small.dtype}")
    if big.size != small.size * n:
        raise ValueError(
            f"{op}: {bw} has {big.size} elements; it must have world size ({n}) times "
            f"the {small.size} elements of {sw}"
        )


def all_gather_into_tensor(
    output_tensor: Any, input_tensor: Any, group: ProcessGroup | None = None, async_op: bool = False
) -> Work | None:
    """``output_tensor`` <- every rank's ``input_tensor``, concatenated on axis 0 (or stacked)."""
    if dispatch.active and dispatch.intercepting():  # a CollectiveMode sees it
        return dispatch.run(
            _OP_ALL_GATHER_INTO_TENSOR, (output_tensor, input_tensor, group, async_op)
        )
    world, pg = _resolve(group, "all_gather_into_tensor")
    if pg is None:
        return None
    op = "all_gather_into_tensor"
    out = checked_array(output_tensor, op, "output_tensor", out=True)
    inp = checked_array(input_tensor, op, "input_tensor")
    n = _size(world, pg)
    _check_concat(out, inp, n, op, "output_tensor", "input_tensor")
    # torch 2.13 calls the group's all_gather_single (base class: _allgather_base)
    work = pg.all_gather_single(output_tensor, input_tensor, AllgatherOptions(None, async_op))
    return _finish(work, world, pg, async_op)


def all_gather_single(
    output_tensor: Any, input_tensor: Any, group: ProcessGroup | None = None, async_op: bool = False
) -> Work | None:
    """torch 2.13's name for :func:`all_gather_into_tensor` (the same operation)."""
    return all_gather_into_tensor(output_tensor, input_tensor, group, async_op)


def gather(
    tensor: Any,
    gather_list: list[Any] | None = None,
    dst: int = 0,
    group: ProcessGroup | None = None,
    async_op: bool = False,
) -> Work | None:
    """On global rank ``dst``, ``gather_list[i]`` <- rank i's ``tensor`` (list on dst only)."""
    if dispatch.active and dispatch.intercepting():  # a CollectiveMode sees it
        return dispatch.run(_OP_GATHER, (tensor, gather_list, dst, group, async_op))
    world, pg = _resolve(group, "gather")
    if pg is None:
        return None
    root = _group_rank(world, pg, dst, "dst", "gather")
    inp = checked_array(tensor, "gather", "tensor")
    is_root = root == _me(world, pg)
    _root_only(gather_list, is_root, "gather_list", "destination")
    outputs: list[list[Any]] = []
    if is_root:
        assert gather_list is not None  # _root_only: the root passed one
        n = _size(world, pg)
        _array_list(gather_list, "gather", "gather_list", n, True, like=(inp, "tensor"))
        outputs = [gather_list]
    work = pg.gather(outputs, [tensor], GatherOptions(rootRank=root, asyncOp=async_op))
    return _finish(work, world, pg, async_op)


def scatter(
    tensor: Any,
    scatter_list: list[Any] | None = None,
    src: int = 0,
    group: ProcessGroup | None = None,
    async_op: bool = False,
) -> Work | None:
    """Rank i's ``tensor`` <- global rank ``src``'s ``scatter_list[i]`` (list on src only)."""
    if dispatch.active and dispatch.intercepting():  # a CollectiveMode sees it
        return dispatch.run(_OP_SCATTER, (tensor, scatter_list, src, group, async_op))
    world, pg = _resolve(group, "scatter")
    if pg is None:
        return None
    root = _group_rank(world, pg, src, "src", "scatter")
    out = checked_array(tensor, "scatter", "tensor", out=True)
    is_root = root == _me(world, pg)
    _root_only(scatter_list, is_root, "scatter_list", "source")
    inputs: list[list[Any]] = []
    if is_root:
        assert scatter_list is not None  # _root_only: the root passed one
        n = _size(world, pg)
        _array_list(scatter_list, "scatter", "scatter_list", n, False, like=(out, "tensor"))
        inputs = [scatter_list]
    work = pg.scatter([tensor], inputs, ScatterOptions(rootRank=root, asyncOp=async_op))
    return _finish(work, world, pg, async_op)


def reduce_scatter(
    output: Any,
    input_list: list[Any],
    op: ReduceOp = ReduceOp.SUM,
    group: ProcessGroup | None = None,
    async_op: bool = False,
) -> Work | None:
    """``output`` <- the reduction over ranks of their ``input_list[my_rank]``."""
    if dispatch.active and dispatch.intercepting():  # a CollectiveMode sees it
        return dispatch.run(_OP_REDUCE_SCATTER, (output, input_list, op, group, async_op))
    world, pg = _resolve(group, "reduce_scatter")
    if pg is None:
        return None
    out = checked_array(output, "reduce_scatter", "output", out=True)
    n = _size(world, pg)
    _array_list(input_list, "reduce_scatter", "input_list", n, False, like=(out, "output"))
    _check_op(op, out.dtype, "reduce_scatter")
    work = pg.reduce_scatter(
        [output], [input_list], CheckedReduceScatterOptions(op, None, async_op)
    )
    if work is None:  # ran in this thread: done
        return None
    return _finish(work, world, pg, async_op)


def reduce_scatter_tensor(
    output: Any,
    input: Any,
    op: ReduceOp = ReduceOp.SUM,
    group: ProcessGroup | None = None,
    async_op: bool = False,
) -> Work | None:
    """``output`` <- the reduction over ranks of chunk ``my_rank`` of ``input`` along axis 0."""
    if dispatch.active and dispatch.intercepting():  # a CollectiveMode sees it
        return dispatch.run(_OP_REDUCE_SCATTER_TENSOR, (output, input, op, group, async_op))
    name = "reduce_scatter_tensor"
    world, pg = _resolve(group, name)
    if pg is None:
        return None
    out = checked_array(output, name, "output", out=True)
    inp = checked_array(input, name, "input")
    n = _size(world, pg)
    _check_concat(inp, out, n, name, "input", "output")
    _check_op(op, out.dtype, name)
    # torch 2.13 calls the group's reduce_scatter_single (base class: _reduce_scatter_base)
    opts = CheckedReduceScatterOptions(op, None, async_op)
    work = pg.reduce_scatter_single(output, input, opts)
    return _finish(work, world, pg, async_op)


def reduce_scatter_single(
    output: Any,
    input: Any,
    op: ReduceOp = ReduceOp.SUM,
    group: ProcessGroup | None = None,
    async_op: bool = False,
) -> Work | None:
    """torch 2.13's name for :func:`reduce_scatter_tensor` (the same operation)."""
    return reduce_scatter_tensor(output, input, op, group, async_op)


def all_to_all(
    output_tensor_list: list[Any],
    input_tensor_list: list[Any],
    group: ProcessGroup | None = None,
    async_op: bool = False,
) -> Work | None:
    """``output_tensor_list[i]`` <- rank i's ``input_tensor_list[my_rank]``; uneven shapes allowed."""
    if dispatch.active and dispatch.intercepting():  # a CollectiveMode sees it
        return dispatch.run(
            _OP_ALL_TO_ALL, (output_tensor_list, input_tensor_list, group, async_op)
        )
    world, pg = _resolve(group, "all_to_all")
    if pg is None:
        return None
    n = _size(world, pg)
    outs = _array_list(output_tensor_list, "all_to_all", "output_tensor_list", n, out=True)
    ins = _array_list(input_tensor_list, "all_to_all", "input_tensor_list", n, out=False)
    dtype = ins[0].dtype if ins else None
    for what, xs in (("input_tensor_list", ins), ("output_tensor_list", outs)):
        for i, x in enumerate(xs):
            if x.dtype != dtype:
                raise TypeError(
                    f"all_to_all: {what}[{i}] has dtype {x.dtype} but input_tensor_list[0] "
                    f"has dtype {dtype}; all entries must share one dtype"
                )
    opts = AllToAllOptions(asyncOp=async_op)
    work = pg.alltoall(output_tensor_list, input_tensor_list, opts)
    return _finish(work, world, pg, async_op)


def _splits(arr: np.ndarray, splits: Any, n: int, what: str, arg: str) -> list[int]:
    rows = arr.shape[0]
    if splits is None or (isinstance(splits, (list, tuple)) and len(splits) == 0):
        if rows % n:
            raise ValueError(
                f"all_to_all_single: {what} has {rows} rows on axis 0, which do not split "
                f"evenly among {n} ranks; pass {arg}"
            )
        return [rows // n] * n
    if isinstance(splits, np.ndarray):
        splits = splits.tolist()
    if not isinstance(splits, (list, tuple)):
        raise TypeError(
            f"all_to_all_single: {arg} must be a list of int, got {type(splits).__name__}"
        )
    if len(splits) != n:
        raise ValueError(
            f"all_to_all_single: {arg} has {len(splits)} entries, but the group has {n} ranks"
        )
    for s in splits:
        if not _is_int(s):
            raise TypeError(f"all_to_all_single: {arg} must hold ints, got {s!r}")
        if s < 0:
            raise ValueError(f"all_to_all_single: {arg} has a negative split {s}")
    if sum(splits) != rows:
        raise ValueError(
            f"all_to_all_single: {arg} {list(splits)} sums to {sum(splits)}, but {what} "
            f"has {rows} rows on axis 0"
        )
    return [int(s) for s in splits]


def all_to_all_single(
    output: Any,
    input: Any,
    output_split_sizes: list[int] | None = None,
    input_split_sizes: list[int] | None = None,
    group: ProcessGroup | None = None,
    async_op: bool = False,
) -> Work | None:
    """All-to-all of row blocks: rank j's block i of ``input`` lands in block j of rank i's ``output``.

    Splits count rows on axis 0; None splits evenly.
    """
    if dispatch.active and dispatch.intercepting():  # a CollectiveMode sees it
        return dispatch.run(
            _OP_ALL_TO_ALL_SINGLE,
            (output, input, output_split_sizes, input_split_sizes, group, async_op),
        )
    name = "all_to_all_single"
    world, pg = _resolve(group, name)
    if pg is None:
        return None
    out = checked_array(output, name, "output", out=True)
    inp = checked_array(input, name, "input")
    if out.dtype != inp.dtype:
        raise TypeError(f"{name}: output has dtype {out.dtype} but input has dtype {inp.dtype}")
    if out.ndim == 0 or inp.ndim == 0:
        raise ValueError(f"{name}: output and input need at least one dimension")
    if out.shape[1:] != inp.shape[1:]:
        raise ValueError(
            f"{name}: rows differ: output has shape {out.shape}, input has shape {inp.shape}"
        )
    n = _size(world, pg)
    osplit = _splits(out, output_split_sizes, n, "output", "output_split_sizes")
    isplit = _splits(inp, input_split_sizes, n, "input", "input_split_sizes")
    # the group gets the checked splits as ints; "split evenly" stays an empty list (torch's)
    work = pg.alltoall_base(
        output,
        input,
        osplit if output_split_sizes is not None and len(output_split_sizes) else [],
        isplit if input_split_sizes is not None and len(input_split_sizes) else [],
        AllToAllOptions(asyncOp=async_op),
    )
    return _finish(work, world, pg, async_op)


def _check_tag(tag: Any, op: str) -> int:
    if not _is_int(tag):
        raise TypeError(f"{op}: tag must be an int, got {tag!r}")
    return int(tag)


def _send(tensor: Any, dst: int, group: Any, tag: int, async_op: bool, op: str) -> Work | None:
    world, pg = _resolve(group, op)
    if pg is None:
        return None
    peer = _group_rank(world, pg, dst, "dst", op)
    if peer == _me(world, pg):
        raise ValueError(
            "Invalid destination rank: should not be the same as rank of the current process."
        )
    checked_array(tensor, op, "tensor")
    tag = _check_tag(tag, op)
    before = set_caller_blocks(not async_op)
    try:
        work = pg.send([tensor], peer, tag)
    finally:
        set_caller_blocks(before)
    return _finish(work, world, pg, async_op)


def send(tensor: Any, dst: int, group: ProcessGroup | None = None, tag: int = 0) -> None:
    """Send ``tensor`` to global rank ``dst``; matched by the receiver's (source, tag)."""
    if dispatch.active and dispatch.intercepting():  # a CollectiveMode sees it
        return dispatch.run(_OP_SEND, (tensor, dst, group, tag))
    _send(tensor, dst, group, tag, False, "send")


def isend(tensor: Any, dst: int, group: ProcessGroup | None = None, tag: int = 0) -> Work | None:
    """Asynchronous ``send``: returns a Work."""
    if dispatch.active and dispatch.intercepting():  # a CollectiveMode sees it
        return dispatch.run(_OP_ISEND, (tensor, dst, group, tag))
    return _send(tensor, dst, group, tag, True, "isend")


def _recv(tensor: Any, src: Any, group: Any, tag: int, async_op: bool, op: str) -> Any:
    world, pg = _resolve(group, op)
    if pg is None:
        return -1
    peer = None
    if src is not None:
        peer = _group_rank(world, pg, src, "src", op)
        if peer == _me(world, pg):
            raise ValueError(
                "Invalid source rank: should not be the same as rank of the current process."
            )
    checked_array(tensor, op, "tensor", out=True)
    tag = _check_tag(tag, op)
    before = set_caller_blocks(not async_op)
    try:
        if peer is not None:
            work = pg.recv([tensor], peer, tag)
        else:
            work = pg.recv_anysource([tensor], tag)
    finally:
        set_caller_blocks(before)
    if async_op:
        return work
    if work is not None:  # None: the group ran it here and the source is the one asked for
        _finish(work, world, pg, False)
    if peer is None:
        getter = getattr(work, "source_rank", None) or getattr(work, "_source_rank", None)
        peer = getter() if getter is not None else -1
    return _global_rank(world, pg, peer) if peer >= 0 else peer


def recv(
    tensor: Any, src: int | None = None, group: ProcessGroup | None = None, tag: int = 0
) -> int:
    """Receive into ``tensor`` from global rank ``src`` (None: any rank); returns the sender."""
    if dispatch.active and dispatch.intercepting():  # a CollectiveMode sees it
        return dispatch.run(_OP_RECV, (tensor, src, group, tag))
    return _recv(tensor, src, group, tag, False, "recv")


def irecv(
    tensor: Any, src: int | None = None, group: ProcessGroup | None = None, tag: int = 0
) -> Work | None:
    """Asynchronous ``recv``: returns a Work (``work.source_rank()`` is the sender's group rank)."""
    if dispatch.active and dispatch.intercepting():  # a CollectiveMode sees it
        return dispatch.run(_OP_IRECV, (tensor, src, group, tag))
    return _recv(tensor, src, group, tag, True, "irecv")


class P2POp:
    """One point-to-point operation for :func:`batch_isend_irecv`: ``op`` is ``isend`` or ``irecv``."""

    def __init__(
        self, op: Any, tensor: Any, peer: int, group: ProcessGroup | None = None, tag: int = 0
    ) -> None:
        if op not in (isend, irecv):
            raise ValueError(
                "Invalid ``op``. Expected ``op`` to be of type ``mpdist.isend`` or ``mpdist.irecv``."
            )
        self.op, self.tensor, self.peer, self.group, self.tag = op, tensor, peer, group, tag

    def __repr__(self) -> str:
        return f"P2POp({self.op.__name__}, peer={self.peer}, tag={self.tag})"


def batch_isend_irecv(p2p_op_list: list[P2POp]) -> list[Work]:
    """Issue every ``P2POp`` asynchronously, in order; returns their Works."""
    if not isinstance(p2p_op_list, list) or not all(isinstance(p, P2POp) for p in p2p_op_list):
        raise ValueError("Invalid ``p2p_op_list``. Each op is expected to to be of type ``P2POp``.")
    works = []
    for p in p2p_op_list:
        w = p.op(p.tensor, p.peer, p.group, p.tag)
        if w is not None:
            works.append(w)
    return works


def barrier(
    group: ProcessGroup | None = None, async_op: bool = False, device_ids: Any = None
) -> Work | None:
    """Wait until every rank of the group has called ``barrier``."""
    if dispatch.active and dispatch.intercepting():  # a CollectiveMode sees it
        return dispatch.run(_OP_BARRIER, (group, async_op, device_ids))
    world, pg = _resolve(group, "barrier")
    if pg is None:
        return None
    work = pg.barrier(BarrierOptions(asyncOp=async_op))
    return _finish(work, world, pg, async_op)


def monitored_barrier(
    group: ProcessGroup | None = None,
    timeout: timedelta | None = None,
    wait_all_ranks: bool = False,
) -> None:
    """A barrier with a deadline: rank 0 raises naming the ranks that did not arrive.

    With ``wait_all_ranks`` every missing rank is named, else the first one. The ranks
    that did arrive raise the same error.
    """
    if dispatch.active and dispatch.intercepting():  # a CollectiveMode sees it
        return dispatch.run(_OP_MONITORED_BARRIER, (group, timeout, wait_all_ranks))
    world, pg = _resolve(group, "monitored_barrier")
    if pg is None:
        return None
    info = _info(world, pg)
    if timeout is None:
        timeout = info.timeout if info is not None else DEFAULT_TIMEOUT
    timeout = _check_timeout(timeout)
    if timeout.total_seconds() <= 0:
        raise ValueError(f"monitored_barrier: timeout must be positive, got {timeout}")
    opts = BarrierOptions(timeout=timeout, asyncOp=False)
    _finish(pg.monitored_barrier(opts, bool(wait_all_ranks)), world, pg, False)
    return None


# What a collective mode (mpdist.distributed.dispatch) is handed: the ops, named as torch
# names them.
_OP_ALL_REDUCE = dispatch.CollectiveOp("c10d.allreduce_.default", all_reduce)
_OP_BROADCAST = dispatch.CollectiveOp("c10d.broadcast_.default", broadcast)
_OP_REDUCE = dispatch.CollectiveOp("c10d.reduce_.default", reduce)
_OP_ALL_GATHER = dispatch.CollectiveOp("c10d.allgather_.default", all_gather)
_OP_ALL_GATHER_INTO_TENSOR = dispatch.CollectiveOp(
    "c10d._allgather_base_.default", all_gather_into_tensor
)
_OP_GATHER = dispatch.CollectiveOp("c10d.gather_.default", gather)
_OP_SCATTER = dispatch.CollectiveOp("c10d.scatter_.default", scatter)
_OP_REDUCE_SCATTER = dispatch.CollectiveOp("c10d.reduce_scatter_.default", reduce_scatter)
_OP_REDUCE_SCATTER_TENSOR = dispatch.CollectiveOp(
    "c10d._reduce_scatter_base_.default", reduce_scatter_tensor
)
_OP_ALL_TO_ALL = dispatch.CollectiveOp("c10d.alltoall_.default", all_to_all)
_OP_ALL_TO_ALL_SINGLE = dispatch.CollectiveOp("c10d.alltoall_base_.default", all_to_all_single)
_OP_SEND = dispatch.CollectiveOp("c10d.send.default", send)
_OP_ISEND = dispatch.CollectiveOp("c10d.send.default", isend)
_OP_RECV = dispatch.CollectiveOp("c10d.recv_.default", recv)
_OP_IRECV = dispatch.CollectiveOp("c10d.recv_.default", irecv)
_OP_BARRIER = dispatch.CollectiveOp("c10d.barrier.default", barrier)
_OP_MONITORED_BARRIER = dispatch.CollectiveOp("c10d.monitored_barrier_.default", monitored_barrier)
