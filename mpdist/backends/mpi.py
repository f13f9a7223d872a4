"""The ``mpi`` backend: mpdist's process groups over MPI, through mpi4py's buffer API on numpy arrays.

``init_process_group("mpi")`` under ``mpiexec``/``srun``: rank and world size are
``MPI.COMM_WORLD``'s (a rank or world size given must agree). Each group, the default one
included, has its own communicator (``Comm.Create_group`` over its global ranks), so a
user's own MPI traffic never meets ours. mpi4py is imported only when such a group is made.

Each collective is one MPI call (plus the header check's exchange, below), in place where
torch's are (``Allreduce(IN_PLACE)``, ``Bcast``, ``Reduce``, ``Allgather``, ``Gather``,
``Scatter``, ``Reduce_scatter_block``, ``Alltoallv``, ``Barrier``); lists of arrays lying
end to end in memory (the ``*_tensor`` and ``_single`` variants) are one MPI buffer, other
lists go through a staging buffer.
AVG is SUM then mpdist's division (floor division for integers, as on tcp); bool arrays
reduce with MPI's logical operators.

The header check: each rank puts a 48-byte header (op, reduce op, dtype, root, bytes,
shape fingerprint) in a fixed-size record and one ``Allgather`` of records lets ranks that
disagree raise ``DistBackendError`` naming the other rank, on every rank, instead of
hanging or computing garbage (``all_to_all`` also checks each pair's block size). Small
calls fold their payload into the record (``mpi_header``): all_reduce, broadcast,
all_gather and reduce_scatter whose contribution fits the record's slot (1 KiB up to 15
ranks, less in bigger groups), and barrier, are that one ``Allgather`` and complete
locally (reductions in rank order: the same result on every rank). Other calls send the
same record, header only, before their own MPI call: every exchange moves one record per
rank, so a rank folding and a rank not folding still meet and see the mismatch.
``MpiOptions(check_shapes=False)`` as ``pg_options``, or ``MPDIST_MPI_CHECK_SHAPES=0``,
leaves the check and the fold out (every rank must choose alike).

Execution: a blocking collective runs in the caller when nothing is queued; ``async_op``
collectives run in issue order on the group's worker thread (blocking MPI calls, as
torch's MPI backend does), which completes their Futures and runs their callbacks
without anyone waiting. Point-to-point never queues (MPI matches it apart from
collectives): ``send``/``recv`` run in the caller, ``isend``/``irecv`` are
``Isend``/``Irecv`` completed by whoever waits or tests. Needs ``MPI_THREAD_MULTIPLE``.

What MPI cannot do: stop an MPI call that has started. So no abort or timeout ends a
collective in flight: ``abort()`` makes every later operation of the group raise at once,
``Work.wait(timeout)`` raises ``Operation timed out!`` while the operation goes on, and
the group's timeout bounds only ``monitored_barrier`` (which polls). A job with ranks
stuck in MPI is ended by ``MPI.COMM_WORLD.Abort()``.
"""

from __future__ import annotations

import os
import threading
import weakref
from collections import deque
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

import numpy as np

from mpdist.algorithms import check_list, check_root
from mpdist.algorithms.reduction import UFUNCS, ReduceOp, check_op_dtype, divide
from mpdist.errors import DistBackendError
from mpdist.process_group import Work

from .builtin import BuiltinProcessGroup
from .mpi_header import BLOCKS, ROWS, Records, Signature
from .mpi_requests import RequestWork, monitored_barrier, mpi_error

try:
    from mpi4py import MPI
except ImportError as _e:  # pragma: no cover - the creator reports it
    raise ImportError(
        "the mpi backend needs mpi4py and an MPI library: pip install 'mpdist[mpi]' "
        f"(mpi4py and mpich), then start the script with mpiexec ({_e})"
    ) from _e

__all__ = ["MpiOptions", "MpiProcessGroup", "check_shapes_default", "create"]

_ENV_CHECK = "MPDIST_MPI_CHECK_SHAPES"

# Bool arrays reduce with the logical operators (MPI defines no arithmetic on C_BOOL);
# the results equal numpy's on bool (add = or, multiply = and, minimum = and, ...).
_MPI_OPS = {
    ReduceOp.SUM: MPI.SUM,
    ReduceOp.AVG: MPI.SUM,
    ReduceOp.PRODUCT: MPI.PROD,
    ReduceOp.MIN: MPI.MIN,
    ReduceOp.MAX: MPI.MAX,
    ReduceOp.BAND: MPI.BAND,
    ReduceOp.BOR: MPI.BOR,
    ReduceOp.BXOR: MPI.BXOR,
}
_MPI_BOOL_OPS = {
    ReduceOp.SUM: MPI.LOR,
    ReduceOp.PRODUCT: MPI.LAND,
    ReduceOp.MIN: MPI.LAND,
    ReduceOp.MAX: MPI.LOR,
    ReduceOp.BAND: MPI.LAND,
    ReduceOp.BOR: MPI.LOR,
    ReduceOp.BXOR: MPI.LXOR,
}

# (reduce op, dtype) -> the MPI operator, for the pairs check_op_dtype accepted: a
# collective's lookup is one dict get (~0.1 us) instead of the check (~0.4 us)
_MOP_CACHE: dict[tuple[ReduceOp, np.dtype], Any] = {}

# the groups alive in this process: the first one built is the default group
_live: weakref.WeakSet[MpiProcessGroup] = weakref.WeakSet()


@dataclass
class MpiOptions:
    """``pg_options`` of the mpi backend.

    ``check_shapes``: exchange a small header before each collective so that ranks
    calling different collectives, or with different shapes, dtypes, roots or reduce ops,
    get a clear error instead of a hang or wrong values. None: ``MPDIST_MPI_CHECK_SHAPES``
    (``0`` turns it off), else on.
    """

    check_shapes: bool | None = None


def check_shapes_default(pg_options: Any) -> bool:
    """Whether the header check is on for a group built with ``pg_options``."""
    value = pg_options.get("check_shapes") if isinstance(pg_options, Mapping) else None
    if pg_options is not None and not isinstance(pg_options, Mapping):
        value = getattr(pg_options, "check_shapes", None)
    if value is not None:
        return bool(value)
    text = os.environ.get(_ENV_CHECK, "1").strip().lower()
    return text not in ("0", "false", "no", "off")


def _bytes(a: np.ndarray) -> np.ndarray:
    """The bytes of a C-contiguous array, as a flat uint8 view (for staging copies; an MPI
    message is ``[a, MPI.BYTE]`` itself: MPI counts a buffer's bytes, no view is made)."""
    return a.reshape(-1).view(np.uint8)


_SPAN_MIN = 4096  # bytes per rank from which all_gather looks for outputs end to end


def _span(arrays: list[np.ndarray]) -> Any:
    """One writable buffer over ``arrays`` if they lie end to end in memory (the rows of
    one array), else None. MPI then moves them with no staging copy."""
    start: int | None = None
    addr = 0
    for a in arrays:
        # MPI.buffer reads the address in ~0.15 us, __array_interface__ (a new dict per
        # call) in ~1 us; all_to_all asks for two lists of world-size entries per call.
        try:
            at = MPI.buffer(a).address
        except BufferError:  # not contiguous: MPI refuses it, numpy still knows its start
            at = a.__array_interface__["data"][0]
        if start is None:
            start = addr = at
        elif at != addr:
            return None
        addr += a.nbytes
    return (
        MPI.buffer.fromaddress(start, addr - start) if start is not None and addr > start else None
    )


def _typed(a: np.ndarray) -> Any:
    """``a`` (C-contiguous) as a typed MPI buffer for a reduction (bool as unsigned char:
    0 or 1). mpi4py takes an n-d array's buffer whole: no flat view is made (~0.2 us)."""
    if a.dtype.char == "?":
        return [a.reshape(-1).view(np.uint8), MPI.UNSIGNED_CHAR]
    return a


def _counts(arrays: list[np.ndarray]) -> tuple[list[int], list[int]]:
    counts = [a.nbytes for a in arrays]
    displs = [0] * len(counts)
    for i in range(1, len(counts)):
        displs[i] = displs[i - 1] + counts[i - 1]
    return counts, displs


def _stage(arrays: list[np.ndarray]) -> np.ndarray:
    """A staging buffer holding ``arrays`` one after another."""
    return np.concatenate([_bytes(a) for a in arrays]) if arrays else np.empty(0, np.uint8)


def _unstage(arrays: list[np.ndarray], buf: np.ndarray) -> None:
    pos = 0
    for a in arrays:
        n = a.nbytes
        _bytes(a)[:] = buf[pos : pos + n]
        pos += n


def _place_rows(out_list: list[np.ndarray], rows: Any, shape: tuple[int, ...]) -> None:
    """``out_list[r][...] = rows[r]`` for every rank r (``rows``: an array or list of rows of
    ``shape``; an output of another shape with as many items takes the row reshaped). One
    assignment of a typed row per rank (~0.25 us) costs less than copying through byte
    views (~0.9 us); iterating over ``rows`` (a view per row) or zip(strict=True) over the
    two lists more than doubled the whole loop (2 ranks: ~2 us against 5)."""
    for i, out in enumerate(out_list):
        if out.shape == shape:
            out[...] = rows[i]
        else:
            out.reshape(shape)[...] = rows[i]


def _reduce_rows(ufunc: Any, rows: list[np.ndarray], out: np.ndarray) -> None:
    """``out = rows[0] op rows[1] op ...``, in rank order: the same result on every rank."""
    ufunc(rows[0], rows[1], out=out)
    for row in rows[2:]:
        ufunc(out, row, out=out)


class _Queued(Work):
    """A collective queued for the group's worker thread."""

    def __init__(self) -> None:
        super().__init__()
        self.value: Any = None


class MpiProcessGroup(BuiltinProcessGroup):
    """A process group whose operations are MPI calls on its own communicator."""

    backend_name = "mpi"

    def __init__(
        self,
        ranks: list[int],
        *,
        timeout: timedelta | float = timedelta(minutes=30),
        check_shapes: bool = True,
    ) -> None:
        world = MPI.COMM_WORLD
        if MPI.Query_thread() < MPI.THREAD_MULTIPLE:
            raise DistBackendError(
                "the mpi backend needs MPI_THREAD_MULTIPLE (its worker thread and the caller "
                "both call MPI); this MPI library provides less: leave mpi4py.rc.thread_level "
                "at 'multiple'"
            )
        me = world.Get_rank()
        if me not in ranks:
            raise ValueError(f"mpi backend: MPI rank {me} is not one of the group's ranks {ranks}")
        super().__init__(ranks.index(me), len(ranks))
        self._global_ranks = list(ranks)
        # Create_group is collective over the members only, as new_group's creator calls are
        self._comm = world.Create_group(world.Get_group().Incl(ranks))
        self._ctl = self._comm.Dup()  # monitored_barrier's messages, apart from the user's
        self._timeout_s = timeout.total_seconds() if isinstance(timeout, timedelta) else timeout
        self._check = bool(check_shapes)
        # the check's records (mpi_header): small collectives fold their payload into them
        self._records = Records(
            self._pg_rank, self._pg_size, self._global_ranks, self._comm.Allgather, MPI.IN_PLACE
        )
        # with the check on, calls whose contribution fits a record's slot are folded
        self._slot = self._records.slot if self._check and self._pg_size > 1 else -1
        self._fold = self._check and self._pg_size > 1
        self._seq = 0
        # the last operation: a p2p description, or (collective, seq) formatted when asked
        self._last: str | tuple[str, int] | None = None
        self._aborted: str | None = None
        self._closed = False
        self._cond = threading.Condition()
        self._exec_lock = threading.Lock()  # held by whoever runs a collective: issue order
        self._queue: deque[tuple[Callable[[], Any], list[Any], _Queued] | None] = deque()
        self._pending = 0
        self._worker: threading.Thread | None = None
        self._worker_setup: Callable[[], None] | None = None
        self._mb_count = 0
        _live.add(self)

    # ------------------------------------------------------------------ execution
    def run_on_own_threads(self, setup: Callable[[], None] | None) -> None:
        self._worker_setup = setup

    def _default_timeout(self) -> float:
        return float(self._timeout_s)

    def _usable(self) -> None:
        if self._aborted is not None:
            raise DistBackendError(self._aborted)
        if self._closed:
            raise DistBackendError(
                f"process group {self.group_desc or self.group_name!r} has been destroyed"
            )

    def _run(self, fn: Callable[[], Any], outputs: list[Any], async_op: bool) -> Any:
        """Run a collective now (blocking, nothing queued) or queue it for the worker."""
        self._usable()
        if not async_op and (self._pending == 0 or threading.current_thread() is self._worker):
            with self._exec_lock:
                return fn()
        work = _Queued()
        with self._cond:
            self._usable()
            self._queue.append((fn, outputs, work))
            self._pending += 1
            if self._worker is None:
                self._worker = threading.Thread(
                    target=self._loop, name=f"mpdist-mpi-pg{self.group_name}-worker", daemon=True
                )
                self._worker.start()
            self._cond.notify()
        if async_op:
            return work
        work.get_future().wait()
        return work.value

    def _loop(self) -> None:
        if self._worker_setup is not None:
            self._worker_setup()
        while True:
            with self._cond:
                while not self._queue:
                    self._cond.wait()
                item = self._queue.popleft()
            if item is None:
                return
            fn, outputs, work = item
            exc: BaseException | None = None
            try:
                if self._aborted is not None:
                    raise DistBackendError(self._aborted)
                with self._exec_lock:
                    work.value = fn()
            except BaseException as e:  # kept in the Work, re-raised by wait()
                exc = e
            with self._cond:
                self._pending -= 1
            fut = work.get_future()
            if exc is None:
                fut.set_result(outputs)
            else:
                fut.set_exception(exc)

    def abort_with_reason(self, reason: str) -> None:
        # An MPI call in flight cannot be stopped; everything after it fails at once.
        self._aborted = reason

    def _close(self) -> None:
        with self._cond:
            if self._closed:
                return
            self._closed = True
            dropped = [item for item in self._queue if item is not None]
            self._queue.clear()
            self._pending -= len(dropped)
            worker = self._worker
            if worker is not None:
                self._queue.append(None)
                self._cond.notify()
        for _, _, work in dropped:
            work.get_future().set_exception(
                DistBackendError("process group destroyed with operations pending")
            )
        if worker is not None and worker is not threading.current_thread():
            # a collective in flight cannot be interrupted: don't wait for it for ever
            worker.join(timeout=1.0)
            if worker.is_alive():
                return  # its communicators stay: the call still uses them
        _live.discard(self)
        if not MPI.Is_finalized():
            self._ctl.Free()
            self._comm.Free()

    def last_operation(self) -> str | None:
        last = self._last
        return f"{last[0]} seq={last[1]}" if isinstance(last, tuple) else last

    # ------------------------------------------------------------------ the header check
    def _enter(
        self,
        name: str,
        dtype: np.dtype | None,
        nbytes: int,
        shape: tuple[int, ...] | None,
        root: int = -1,
        redop: ReduceOp | None = None,
    ) -> None:
        """Start collective ``name``: number it and, with the check on, exchange records
        (header only: the payload's own MPI call follows)."""
        self._seq += 1
        self._last = (name, self._seq)
        if self._fold:
            records = self._records
            records.exchange(
                records.signature((name, redop, dtype, root, nbytes, shape)), self._seq
            )

    def _folding(
        self,
        name: str,
        redop: ReduceOp | None,
        dtype: np.dtype,
        root: int,
        nbytes: int,
        shape: tuple[int, ...],
        fold: int = ROWS,
    ) -> tuple[Records, Signature]:
        """Start folded collective ``name``: number it; the records and its signature,
        whose views the caller fills and reads around ``records.exchange``."""
        self._seq += 1
        self._last = (name, self._seq)
        records = self._records
        return records, records.signature((name, redop, dtype, root, nbytes, shape), fold)

    def _fold_rows(self, name: str, redop: ReduceOp | None, arr: np.ndarray) -> list[np.ndarray]:
        """A folded collective of every rank's ``arr`` (all_reduce, all_gather): numbered,
        this rank's row filled, exchanged and checked; every rank's row, in rank order."""
        records, sig = self._folding(name, redop, arr.dtype, -1, arr.nbytes, arr.shape)
        rows = sig.rows
        rows[self._pg_rank][...] = arr
        records.exchange(sig, self._seq)
        return rows

    def _reduce_op(self, arr: np.ndarray, op: ReduceOp) -> Any:
        """The MPI operator that reduces ``arr`` with ``op`` (checked for its dtype)."""
        try:
            mop = _MOP_CACHE.get((op, arr.dtype))
        except TypeError:  # an unhashable op: the check says what is wrong with it
            mop = None
        if mop is None:
            check_op_dtype(op, arr.dtype)
            mop = (_MPI_BOOL_OPS if arr.dtype == np.bool_ else _MPI_OPS)[op]
            _MOP_CACHE[(op, arr.dtype)] = mop
        return mop

    # ------------------------------------------------------------------ collectives
    def _c_allreduce(
        self, arr: np.ndarray, op: ReduceOp, name: str, outputs: list[Any], async_op: bool
    ) -> Any:
        mop = self._reduce_op(arr, op)
        if arr.nbytes <= self._slot:

            def folded() -> None:
                _reduce_rows(UFUNCS[op], self._fold_rows(name, op, arr), arr)
                if op is ReduceOp.AVG:
                    divide(arr.reshape(-1), self._pg_size)

            return self._run(folded, outputs, async_op)
        buf = _typed(arr)

        def run() -> None:
            self._enter(name, arr.dtype, arr.nbytes, arr.shape, -1, op)
            if self._pg_size > 1:
                self._comm.Allreduce(MPI.IN_PLACE, buf, mop)
                if op is ReduceOp.AVG:
                    divide(arr.reshape(-1), self._pg_size)

        return self._run(run, outputs, async_op)

    def _c_broadcast(
        self, arr: np.ndarray, root: int, name: str, outputs: list[Any], async_op: bool
    ) -> Any:
        if arr.nbytes <= self._slot:

            def folded() -> None:
                records, sig = self._folding(name, None, arr.dtype, root, arr.nbytes, arr.shape)
                if self._pg_rank == root:
                    sig.rows[root][...] = arr
                    records.exchange(sig, self._seq)
                else:
                    records.exchange(sig, self._seq)
                    arr[...] = sig.rows[root]

            return self._run(folded, outputs, async_op)

        def run() -> None:
            self._enter(name, arr.dtype, arr.nbytes, arr.shape, root)
            if self._pg_size > 1:
                self._comm.Bcast([arr, MPI.BYTE], root)

        return self._run(run, outputs, async_op)

    def _c_reduce(
        self,
        arr: np.ndarray,
        root: int,
        op: ReduceOp,
        name: str,
        outputs: list[Any],
        async_op: bool,
    ) -> Any:
        check_root(self._pg_size, root)
        mop, buf = self._reduce_op(arr, op), _typed(arr)

        def run() -> None:
            self._enter(name, arr.dtype, arr.nbytes, arr.shape, root, op)
            if self._pg_size == 1:
                return
            if self._pg_rank == root:
                self._comm.Reduce(MPI.IN_PLACE, buf, mop, root)
                if op is ReduceOp.AVG:
                    divide(arr.reshape(-1), self._pg_size)
            else:  # the other ranks' arrays are left as they were
                self._comm.Reduce(buf, None, mop, root)

        return self._run(run, outputs, async_op)

    def _c_allgather(
        self,
        out_list: list[np.ndarray],
        inp: np.ndarray,
        name: str,
        outputs: list[Any],
        async_op: bool,
    ) -> Any:
        if inp.nbytes <= self._slot:

            def folded() -> None:
                _place_rows(out_list, self._fold_rows(name, None, inp), inp.shape)

            return self._run(folded, outputs, async_op)

        def run() -> None:
            self._enter(name, inp.dtype, inp.nbytes, inp.shape)
            # outputs end to end take the message with no staging copy; below a few KiB
            # the copy costs less than finding out (~0.3 us per output)
            span = _span(out_list) if inp.nbytes >= _SPAN_MIN else None
            if span is not None:
                self._comm.Allgather([inp, MPI.BYTE], [span, MPI.BYTE])
                return
            rows = np.empty((self._pg_size, *inp.shape), inp.dtype)
            self._comm.Allgather([inp, MPI.BYTE], [rows, MPI.BYTE])
            _place_rows(out_list, rows, inp.shape)

        return self._run(run, outputs, async_op)

    def _c_gather(
        self,
        inp: np.ndarray,
        out_list: list[np.ndarray] | None,
        root: int,
        name: str,
        outputs: list[Any],
        async_op: bool,
    ) -> Any:
        check_root(self._pg_size, root)
        is_root = self._pg_rank == root
        if is_root:
            if out_list is None:
                raise ValueError("gather: the output list is required on the root")
            check_list(self._pg_size, out_list, inp, "gather list")

        def run() -> None:
            self._enter(name, inp.dtype, inp.nbytes, inp.shape, root)
            if not is_root:
                self._comm.Gather([inp, MPI.BYTE], None, root)
                return
            assert out_list is not None
            span = _span(out_list)
            staged = None if span is not None else np.empty(inp.nbytes * self._pg_size, np.uint8)
            self._comm.Gather([inp, MPI.BYTE], [span or staged, MPI.BYTE], root)
            if staged is not None:
                _unstage(out_list, staged)

        return self._run(run, outputs, async_op)

    def _c_scatter(
        self,
        out: np.ndarray,
        in_list: list[np.ndarray] | None,
        root: int,
        name: str,
        outputs: list[Any],
        async_op: bool,
    ) -> Any:
        check_root(self._pg_size, root)
        is_root = self._pg_rank == root
        if is_root:
            if in_list is None:
                raise ValueError("scatter: the input list is required on the root")
            check_list(self._pg_size, in_list, out, "scatter list")

        def run() -> None:
            self._enter(name, out.dtype, out.nbytes, out.shape, root)
            send = None
            if is_root:
                assert in_list is not None
                send = [_span(in_list) or _stage(in_list), MPI.BYTE]
            self._comm.Scatter(send, [out, MPI.BYTE], root)

        return self._run(run, outputs, async_op)

    def _c_reduce_scatter(
        self,
        out: np.ndarray,
        in_list: list[np.ndarray],
        op: ReduceOp,
        name: str,
        outputs: list[Any],
        async_op: bool,
    ) -> Any:
        mop = self._reduce_op(out, op)
        if out.nbytes * self._pg_size <= self._slot:

            def folded() -> None:
                records, sig = self._folding(name, op, out.dtype, -1, out.nbytes, out.shape, BLOCKS)
                for part, a in zip(sig.parts, in_list, strict=True):
                    if a.shape == part.shape:
                        part[...] = a
                    else:
                        part[...] = a.reshape(part.shape)
                records.exchange(sig, self._seq)
                _reduce_rows(UFUNCS[op], sig.rows, out)
                if op is ReduceOp.AVG:
                    divide(out.reshape(-1), self._pg_size)

            return self._run(folded, outputs, async_op)

        def run() -> None:
            self._enter(name, out.dtype, out.nbytes, out.shape, -1, op)
            if self._pg_size == 1:
                np.copyto(out, in_list[0].reshape(out.shape))
                return
            span = _span(in_list)
            src = np.frombuffer(span, out.dtype) if span is not None else None
            if src is None:
                src = _stage(in_list).view(out.dtype)
            elif np.may_share_memory(src, out):  # in place (out a block of src): MPI refuses
                src = src.copy()
            self._comm.Reduce_scatter_block(_typed(src), _typed(out), mop)
            if op is ReduceOp.AVG:
                divide(out.reshape(-1), self._pg_size)

        return self._run(run, outputs, async_op)

    def _c_alltoall(
        self,
        out_list: list[np.ndarray],
        in_list: list[np.ndarray],
        name: str,
        outputs: list[Any],
        async_op: bool,
    ) -> Any:
        p, me = self._pg_size, self._pg_rank
        if len(out_list) != p or len(in_list) != p:
            raise ValueError(f"all_to_all: input and output lists must have {p} entries")
        dtype = in_list[0].dtype
        for a in out_list + in_list:
            if a.dtype != dtype:
                raise TypeError(f"all_to_all: mixed dtypes {a.dtype} and {dtype}")
        if out_list[me].nbytes != in_list[me].nbytes:
            raise ValueError(
                f"all_to_all: rank {me} sends {in_list[me].size} elements to itself but "
                f"expects {out_list[me].size}"
            )

        def run() -> None:
            self._enter(name, dtype, 0, None)
            if self._check and p > 1:
                self._check_pairs(name, in_list, out_list)
            scounts, sdispls = _counts(in_list)
            rcounts, rdispls = _counts(out_list)
            sspan = _span(in_list)
            rspan = _span(out_list)
            send = sspan if sspan is not None else _stage(in_list)
            recv = rspan if rspan is not None else np.empty(sum(rcounts), np.uint8)
            self._comm.Alltoallv(
                [send, scounts, sdispls, MPI.BYTE], [recv, rcounts, rdispls, MPI.BYTE]
            )
            if rspan is None:
                assert isinstance(recv, np.ndarray)
                _unstage(out_list, recv)

        return self._run(run, outputs, async_op)

    def _check_pairs(
        self, name: str, in_list: list[np.ndarray], out_list: list[np.ndarray]
    ) -> None:
        """Each pair's block sizes agree: sent sizes go to their receivers, who compare
        them with what they expect; the first mismatch is then told to every rank."""
        p = self._pg_size
        sent = np.array([a.nbytes for a in in_list], np.int64)
        got = np.empty(p, np.int64)
        self._comm.Alltoall(sent, got)
        bad = np.array([-1, 0, 0, 0], np.int64)  # (receiver, sender, expected, sent)
        for src in range(p):
            if got[src] != out_list[src].nbytes:
                bad[:] = (self._pg_rank, src, out_list[src].nbytes, got[src])
                break
        worst = np.empty(1, np.int64)
        self._comm.Allreduce(bad[:1], worst, MPI.MAX)  # the last receiver that found one
        if worst[0] >= 0:
            self._comm.Bcast(bad, int(worst[0]))  # its finding, told to every rank
            recv_rank, src_rank, expected, sent_n = (int(v) for v in bad)
            n = self._global_ranks
            raise DistBackendError(
                f"{name}: mismatch between rank {n[recv_rank]} and rank {n[src_rank]} in "
                f"collective #{self._seq}: rank {n[recv_rank]} expected a block of {expected} "
                f"bytes from rank {n[src_rank]} but rank {n[src_rank]} sends {sent_n} bytes"
            )

    def _c_barrier(self, name: str, async_op: bool) -> Any:
        def run() -> None:
            self._enter(name, None, 0, None)  # with the check on, its exchange is a barrier
            if self._pg_size > 1 and not self._fold:
                self._comm.Barrier()

        return self._run(run, [], async_op)

    # ------------------------------------------------------------------ point to point
    def _c_send(
        self, arr: np.ndarray, dst: int, tag: int, outputs: list[Any], async_op: bool
    ) -> Any:
        self._usable()
        self._last = f"{'isend' if async_op else 'send'}(dst={self._global_ranks[dst]}, tag={tag})"
        buf = [arr, MPI.BYTE]
        if not async_op:
            try:
                self._comm.Send(buf, dst, tag)
            except MPI.Exception as e:
                raise mpi_error(e, "send") from None
            return None
        return RequestWork(self._comm.Isend(buf, dst, tag), outputs, lambda status: -1)

    def _c_recv(
        self, arr: np.ndarray, src: int | None, tag: int, outputs: list[Any], async_op: bool
    ) -> Any:
        self._usable()
        who = "any" if src is None else self._global_ranks[src]
        self._last = f"{'irecv' if async_op else 'recv'}(src={who}, tag={tag})"
        source = MPI.ANY_SOURCE if src is None else src
        buf = [arr, MPI.BYTE]

        def check(status: Any) -> int:
            got = status.Get_count(MPI.BYTE)
            sender = status.Get_source()
            if got != arr.nbytes:
                raise DistBackendError(
                    f"recv: rank {self._global_ranks[self._pg_rank]} posted a receive of "
                    f"{arr.nbytes} bytes ({arr.dtype}) with tag {tag} but rank "
                    f"{self._global_ranks[sender]} sent {got} bytes"
                )
            return int(sender)

        if async_op:
            return RequestWork(self._comm.Irecv(buf, source, tag), outputs, check)
        # Probe first: a longer message than the buffer is then a clear error, not MPI's
        # truncation (the message is received into scratch and dropped).
        status = MPI.Status()
        msg = self._comm.Mprobe(source, tag, status)
        if status.Get_count(MPI.BYTE) != arr.nbytes:
            msg.Recv([np.empty(status.Get_count(MPI.BYTE), np.uint8), MPI.BYTE])
            check(status)
        msg.Recv(buf, status)
        return check(status)

    def _c_monitored_barrier(self, timeout_s: float, wait_all_ranks: bool) -> None:
        self._usable()
        self._mb_count += 1
        monitored_barrier(
            self._ctl, self._mb_count % 32768, self._global_ranks, timeout_s, wait_all_ranks
        )


def create(
    group_rank: int,
    group_size: int,
    global_ranks: list[int],
    timeout: timedelta,
    pg_options: Any,
) -> MpiProcessGroup:
    """The backend's creator: check the group against ``MPI.COMM_WORLD``, then build it."""
    world = MPI.COMM_WORLD
    size, me = world.Get_size(), world.Get_rank()
    if not _live and list(global_ranks) == list(range(group_size)) and group_size != size:
        raise ValueError(
            f"init_process_group('mpi'): world_size {group_size} was given but "
            f"MPI.COMM_WORLD has {size} processes"
        )
    if global_ranks[group_rank] != me:
        raise ValueError(
            f"init_process_group('mpi'): rank {global_ranks[group_rank]} was given but this "
            f"process is rank {me} of MPI.COMM_WORLD"
        )
    if max(global_ranks) >= size:
        raise ValueError(
            f"mpi backend: ranks {global_ranks} go beyond MPI.COMM_WORLD's {size} processes"
        )
    return MpiProcessGroup(
        list(global_ranks), timeout=timeout, check_shapes=check_shapes_default(pg_options)
    )
