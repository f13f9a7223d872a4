"""BuiltinProcessGroup: the base of the built-in groups, torch's methods written once over a few primitives.

Every caller, the module API (``mpdist.distributed``) included, uses the torch-style
public methods (``allreduce([arrays], opts) -> Work``, ...). They check their array
arguments with the one :func:`checked_array` here (dtype, contiguity, writeable
outputs) and call the primitives a backend implements, the ``_c_*`` methods, with
clean C-contiguous ndarrays in group ranks. A primitive takes ``outputs`` (what the
Work's future resolves to) and ``async_op``: run in the calling thread it returns the
operation's value (None, or a receive's source rank), else a pending ``Work``.
``opts.asyncOp`` False (point-to-point: ``caller_blocks()``) picks the former. List
lengths, shapes and global ranks are the module API's to check.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from mpdist.algorithms import check_list, check_root
from mpdist.algorithms.reduction import check_op_dtype
from mpdist.process_group import (
    AllgatherOptions,
    AllreduceOptions,
    AllToAllOptions,
    BarrierOptions,
    BroadcastOptions,
    CheckedAllgatherOptions,
    CheckedAllreduceOptions,
    CheckedBroadcastOptions,
    CheckedReduceScatterOptions,
    GatherOptions,
    ProcessGroup,
    ReduceOp,
    ReduceOptions,
    ReduceScatterOptions,
    ScatterOptions,
    Work,
    caller_blocks,
    completed_work,
)
from mpdist.transport.header import dtype_code

__all__ = ["BuiltinProcessGroup", "checked_array", "checked_list", "row_splits"]


def checked_array(x: Any, op: str, what: str, out: bool = False) -> np.ndarray:
    """The ndarray of an array argument, checked before anything is sent: a dtype the
    transports carry, C-contiguous, and writeable if ``out`` (the result lands in it)."""
    if type(x) is np.ndarray:  # the common case, checked with one look at the flags
        flags = x.flags
        if (flags.carray if out else flags.c_contiguous) and dtype_code(x.dtype):
            return x
    if not isinstance(x, np.ndarray):
        data = getattr(x, "data", None)  # an mpdist Tensor: its live ndarray
        if not isinstance(data, np.ndarray):
            raise TypeError(
                f"{op}: {what} must be a numpy ndarray or mpdist Tensor, got {type(x).__name__}"
            )
        x = data
    if not dtype_code(x.dtype):  # 0: the wire format has no code for it
        raise TypeError(f"{op}: {what} has unsupported dtype {x.dtype}")
    if not x.flags.c_contiguous:
        raise ValueError(f"{op}: {what}: Tensors must be contiguous")
    if out and not x.flags.writeable:
        raise ValueError(f"{op}: {what} is read-only; the result is written into it")
    return x


def _op(opts: Any, default: ReduceOp = ReduceOp.SUM) -> ReduceOp:
    if type(opts) is AllreduceOptions:  # the usual options object, answered quickly
        return opts.reduceOp
    # torch lets the options slot hold a bare ReduceOp
    if opts is None:
        return default
    if isinstance(opts, ReduceOp):
        return opts
    return getattr(opts, "reduceOp", default)


def _checked_op(opts: Any, dtype: np.dtype) -> ReduceOp:
    """The reduce op of ``opts``, checked for arrays of ``dtype`` (what ``_c_*`` expect)."""
    op = _op(opts)
    check_op_dtype(op, dtype)
    return op


def _root(opts: Any) -> int:
    return int(getattr(opts, "rootRank", 0)) if opts is not None else 0


def _async(opts: Any) -> bool:
    # torch's default: a call without options (or without asyncOp) is asynchronous
    return opts is None or getattr(opts, "asyncOp", True)


def checked_list(xs: Any, op: str, what: str, out: bool = False) -> list[np.ndarray]:
    """``checked_array`` of each entry of ``xs`` (named ``what[i]`` in errors)."""
    arrays = list(xs)
    for i, x in enumerate(arrays):
        if type(x) is np.ndarray:  # checked_array's fast path, without naming the entry
            flags = x.flags
            if (flags.carray if out else flags.c_contiguous) and dtype_code(x.dtype):
                continue
        arrays[i] = checked_array(x, op, f"{what}[{i}]", out)
    return arrays


def row_splits(arr: np.ndarray, splits: list[int] | None, parts: int) -> list[np.ndarray]:
    """Views of ``arr`` cut along axis 0 into ``splits`` rows each (None/empty = equal parts).

    A 0-d array counts as one row. Slices along axis 0 of a C-contiguous array stay
    contiguous, which is what the transports need.
    """
    rows = arr.reshape(1) if arr.ndim == 0 else arr
    if not splits:
        splits = [rows.shape[0] // parts] * parts
    views, start = [], 0
    for n in splits:
        views.append(rows[start : start + n])
        start += n
    return views


class BuiltinProcessGroup(ProcessGroup):
    """Base of the built-in backends: ``_c_*`` for the module API, torch-style methods on top."""

    backend_name = "undefined"

    def __init__(self, rank: int, size: int) -> None:
        super().__init__(rank, size)
        # group rank -> global rank; the module API sets it when it registers the group
        self._global_ranks: list[int] = list(range(size))

    def getBackendName(self) -> str:
        return self.backend_name

    def set_global_ranks(self, ranks: list[int]) -> None:
        self._global_ranks = list(ranks)

    # ---- the internal interface (group ranks, validated ndarrays); subclasses implement.
    # all_gather's and reduce_scatter's lists arrive checked too: one array per rank, each
    # of the other argument's dtype and size (gather's and scatter's: the backend checks);
    # so do all_reduce's and reduce_scatter's reduce ops, valid for the arrays' dtype, and
    # broadcast's root, a rank of the group.
    # ``name`` is the op name that headers and errors carry ("all_gather_into_tensor", ...);
    # the return value is the op's value (None; a receive's source) or, with async_op, a Work.
    def _c_allreduce(
        self, arr: np.ndarray, op: ReduceOp, name: str, outputs: list[Any], async_op: bool
    ) -> Any:
        raise NotImplementedError

    def _c_allreduce_stepped(
        self, arr: np.ndarray, op: ReduceOp, name: str, outputs: list[Any]
    ) -> Work:
        """An asynchronous allreduce that the calling thread advances itself.

        ``Work._advance()`` moves it on without blocking, between pieces of the caller's own
        work, and waiting finishes it in the waiting thread; no communication thread is
        involved unless another operation is queued behind it. For callers that know a
        thread of their own costs more than it hides (DDP on a machine with no core to
        spare). This default is an ordinary asynchronous allreduce.
        """
        return self._c_allreduce(arr, op, name, outputs, True)

    def _c_broadcast(
        self, arr: np.ndarray, root: int, name: str, outputs: list[Any], async_op: bool
    ) -> Any:
        raise NotImplementedError

    def _c_reduce(
        self,
        arr: np.ndarray,
        root: int,
        op: ReduceOp,
        name: str,
        outputs: list[Any],
        async_op: bool,
    ) -> Any:
        raise NotImplementedError

    def _c_allgather(
        self,
        out_list: list[np.ndarray],
        inp: np.ndarray,
        name: str,
        outputs: list[Any],
        async_op: bool,
    ) -> Any:
        raise NotImplementedError

    def _c_gather(
        self,
        inp: np.ndarray,
        out_list: list[np.ndarray] | None,
        root: int,
        name: str,
        outputs: list[Any],
        async_op: bool,
    ) -> Any:
        raise NotImplementedError

    def _c_scatter(
        self,
        out: np.ndarray,
        in_list: list[np.ndarray] | None,
        root: int,
        name: str,
        outputs: list[Any],
        async_op: bool,
    ) -> Any:
        raise NotImplementedError

    def _c_reduce_scatter(
        self,
        out: np.ndarray,
        in_list: list[np.ndarray],
        op: ReduceOp,
        name: str,
        outputs: list[Any],
        async_op: bool,
    ) -> Any:
        raise NotImplementedError

    def _c_alltoall(
        self,
        out_list: list[np.ndarray],
        in_list: list[np.ndarray],
        name: str,
        outputs: list[Any],
        async_op: bool,
    ) -> Any:
        raise NotImplementedError

    def _c_barrier(self, name: str, async_op: bool) -> Any:
        raise NotImplementedError

    def _c_send(
        self, arr: np.ndarray, dst: int, tag: int, outputs: list[Any], async_op: bool
    ) -> Any:
        raise NotImplementedError

    def _c_recv(
        self, arr: np.ndarray, src: int | None, tag: int, outputs: list[Any], async_op: bool
    ) -> Any:
        """``src`` None receives from any rank; the value is the sender's group rank."""
        raise NotImplementedError

    def _c_monitored_barrier(self, timeout_s: float, wait_all_ranks: bool) -> None:
        raise NotImplementedError

    def last_operation(self) -> str | None:
        """The last operation this group entered, e.g. "all_reduce seq=12" or
        "recv(src=1, tag=0)" (global ranks); None before the first."""
        return None

    def abort_with_reason(self, reason: str) -> None:
        """Make pending and future operations fail promptly (any thread)."""

    def _close(self) -> None:
        """Release threads and sockets; idempotent."""

    # ---- the public methods: the one way in, for the module API and for users alike.
    # ``opts.asyncOp`` False (and, for point-to-point, ``caller_blocks()``) means the
    # caller waits at once: the operation runs in the calling thread when nothing is
    # queued ahead of it, and the method returns None (a receive: a completed Work that
    # knows its source). Otherwise it returns a pending Work.
    runs_in_caller = True

    def broadcast(self, tensors: list[Any], opts: BroadcastOptions | None = None) -> Work:
        if type(opts) is CheckedBroadcastOptions:  # the module API's: checked, on the latency path
            arr = tensors[0]
            if type(arr) is not np.ndarray:
                arr = arr.data
            return self._c_broadcast(arr, opts.rootRank, "broadcast", tensors, opts.asyncOp)
        root = _root(opts)
        check_root(self.size(), root)
        arr = checked_array(tensors[0], "broadcast", "tensors[0]", out=root != self._pg_rank)
        return self._c_broadcast(arr, root, "broadcast", tensors, _async(opts))

    def allreduce(self, tensors: list[Any], opts: AllreduceOptions | None = None) -> Work:
        if type(opts) is CheckedAllreduceOptions:  # the module API's: checked, on the latency path
            arr = tensors[0]
            if type(arr) is not np.ndarray:
                arr = arr.data
            return self._c_allreduce(arr, opts.reduceOp, "all_reduce", tensors, opts.asyncOp)
        if type(tensors) is not list:
            tensors = list(tensors) if isinstance(tensors, tuple) else [tensors]
        arr = checked_array(tensors[0], "allreduce", "tensors[0]", out=True)
        op = _checked_op(opts, arr.dtype)
        return self._c_allreduce(arr, op, "all_reduce", tensors, _async(opts))

    def allreduce_stepped(self, tensors: list[Any], opts: AllreduceOptions | None = None) -> Work:
        arr = checked_array(tensors[0], "allreduce", "tensors[0]", out=True)
        op = _checked_op(opts, arr.dtype)
        return self._c_allreduce_stepped(arr, op, "all_reduce", list(tensors))

    def reduce(self, tensors: list[Any], opts: ReduceOptions | None = None) -> Work:
        arr = checked_array(tensors[0], "reduce", "tensors[0]", out=True)
        return self._c_reduce(arr, _root(opts), _op(opts), "reduce", list(tensors), _async(opts))

    def allgather(
        self,
        output_tensors: list[list[Any]],
        input_tensors: list[Any],
        opts: AllgatherOptions | None = None,
    ) -> Work:
        if type(opts) is CheckedAllgatherOptions:  # the module API's: checked, on the latency path
            outs = [x if type(x) is np.ndarray else x.data for x in output_tensors[0]]
            inp = input_tensors[0]
            if type(inp) is not np.ndarray:
                inp = inp.data
            return self._c_allgather(outs, inp, "all_gather", output_tensors, opts.asyncOp)
        outs = checked_list(output_tensors[0], "allgather", "output_tensors[0]", out=True)
        inp = checked_array(input_tensors[0], "allgather", "input_tensors[0]")
        check_list(self.size(), outs, inp, "output list")
        return self._c_allgather(outs, inp, "all_gather", list(output_tensors), _async(opts))

    def _allgather_base(
        self, output: Any, input: Any, opts: AllgatherOptions | None = None
    ) -> Work:
        outs = list(
            checked_array(output, "_allgather_base", "output", out=True).reshape(self.size(), -1)
        )
        inp = checked_array(input, "_allgather_base", "input").reshape(-1)
        check_list(self.size(), outs, inp, "output")
        return self._c_allgather(outs, inp, "all_gather_into_tensor", [output], _async(opts))

    def gather(
        self,
        output_tensors: list[list[Any]],
        input_tensors: list[Any],
        opts: GatherOptions | None = None,
    ) -> Work:
        outs = None
        if output_tensors:
            outs = checked_list(output_tensors[0], "gather", "output_tensors[0]", out=True)
        inp = checked_array(input_tensors[0], "gather", "input_tensors[0]")
        return self._c_gather(inp, outs, _root(opts), "gather", list(output_tensors), _async(opts))

    def scatter(
        self,
        output_tensors: list[Any],
        input_tensors: list[list[Any]],
        opts: ScatterOptions | None = None,
    ) -> Work:
        ins = None
        if input_tensors:
            ins = checked_list(input_tensors[0], "scatter", "input_tensors[0]")
        out = checked_array(output_tensors[0], "scatter", "output_tensors[0]", out=True)
        return self._c_scatter(out, ins, _root(opts), "scatter", list(output_tensors), _async(opts))

    def reduce_scatter(
        self,
        output_tensors: list[Any],
        input_tensors: list[list[Any]],
        opts: ReduceScatterOptions | None = None,
    ) -> Work:
        if type(opts) is CheckedReduceScatterOptions:  # the module API's: checked
            ins = [x if type(x) is np.ndarray else x.data for x in input_tensors[0]]
            out = output_tensors[0]
            if type(out) is not np.ndarray:
                out = out.data
            return self._c_reduce_scatter(
                out, ins, opts.reduceOp, "reduce_scatter", output_tensors, opts.asyncOp
            )
        ins = checked_list(input_tensors[0], "reduce_scatter", "input_tensors[0]")
        out = checked_array(output_tensors[0], "reduce_scatter", "output_tensors[0]", out=True)
        check_list(self.size(), ins, out, "input list")
        return self._c_reduce_scatter(
            out,
            ins,
            _checked_op(opts, out.dtype),
            "reduce_scatter",
            list(output_tensors),
            _async(opts),
        )

    def _reduce_scatter_base(
        self, output: Any, input: Any, opts: ReduceScatterOptions | None = None
    ) -> Work:
        checked = type(opts) is CheckedReduceScatterOptions  # the module API's
        if checked:
            out = output if type(output) is np.ndarray else output.data
            inp = input if type(input) is np.ndarray else input.data
        else:
            out = checked_array(output, "_reduce_scatter_base", "output", out=True)
            inp = checked_array(input, "_reduce_scatter_base", "input")
        out = out.reshape(-1)
        ins = list(inp.reshape(self.size(), -1))
        if checked:
            op = _op(opts)
        else:
            op = _checked_op(opts, out.dtype)
            check_list(self.size(), ins, out, "input")
        return self._c_reduce_scatter(out, ins, op, "reduce_scatter_tensor", [output], _async(opts))

    def alltoall_base(
        self,
        output: Any,
        input: Any,
        output_split_sizes: list[int],
        input_split_sizes: list[int],
        opts: AllToAllOptions | None = None,
    ) -> Work:
        out = checked_array(output, "alltoall_base", "output", out=True)
        inp = checked_array(input, "alltoall_base", "input")
        outs = row_splits(out, output_split_sizes, self.size())
        ins = row_splits(inp, input_split_sizes, self.size())
        return self._c_alltoall(outs, ins, "all_to_all_single", [output], _async(opts))

    def alltoall(
        self,
        output_tensors: list[Any],
        input_tensors: list[Any],
        opts: AllToAllOptions | None = None,
    ) -> Work:
        outs = checked_list(output_tensors, "alltoall", "output_tensors", out=True)
        ins = checked_list(input_tensors, "alltoall", "input_tensors")
        return self._c_alltoall(outs, ins, "all_to_all", list(output_tensors), _async(opts))

    def send(self, tensors: list[Any], dstRank: int, tag: int = 0) -> Work:
        arr = checked_array(tensors[0], "send", "tensors[0]")
        return self._c_send(arr, dstRank, tag, list(tensors), not caller_blocks())

    def recv(self, tensors: list[Any], srcRank: int, tag: int = 0) -> Work:
        arr = checked_array(tensors[0], "recv", "tensors[0]", out=True)
        return self._receive(arr, srcRank, tag, list(tensors))

    def recv_anysource(self, tensors: list[Any], tag: int = 0) -> Work:
        arr = checked_array(tensors[0], "recv_anysource", "tensors[0]", out=True)
        return self._receive(arr, None, tag, list(tensors))

    def _receive(self, arr: np.ndarray, src: int | None, tag: int, outputs: list[Any]) -> Work:
        if not caller_blocks():
            return self._c_recv(arr, src, tag, outputs, True)
        source = self._c_recv(arr, src, tag, outputs, False)
        if src is not None:
            return None  # type: ignore[return-value]  # ran here, from a known source: done
        return completed_work(outputs, source)  # the caller learns who sent it

    def barrier(self, opts: BarrierOptions | None = None) -> Work:
        return self._c_barrier("barrier", _async(opts))

    def monitored_barrier(
        self, opts: BarrierOptions | None = None, wait_all_ranks: bool = False
    ) -> Work | None:
        timeout = opts.timeout if opts is not None else None
        seconds = timeout.total_seconds() if timeout is not None else self._default_timeout()
        self._c_monitored_barrier(seconds, bool(wait_all_ranks))
        return None

    def _default_timeout(self) -> float:
        """Seconds a monitored barrier waits when its options name no timeout."""
        return 1800.0

    def abort(self) -> None:
        self.abort_with_reason("process group aborted")

    def shutdown(self) -> None:
        self._close()
