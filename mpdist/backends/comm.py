"""CommProcessGroup: a process group running mpdist's algorithms over a transport.

Both real backends are this class with a different transport: ``tcp`` (one process per
rank, TCP mesh) and ``threaded`` (ranks are threads, in-process queues). Operations run
in issue order: asynchronous ones on a per-group worker thread; a synchronous one runs
inline in the caller when nothing is pending (no thread hop on the latency path), else
it queues behind the pending work and waits.

A stepped allreduce (``_c_allreduce_stepped``) is queued like an asynchronous one but the
worker is not woken for it: the issuing thread advances it in steps (``Work._advance``)
and finishes it when it waits. Whoever runs a step holds the execution lock, so the
worker, which pops it first if anything is queued behind it, simply takes over from
wherever the caller left it; issue order holds either way.
"""

from __future__ import annotations

import contextlib
import threading
import time
from collections import deque
from collections.abc import Callable
from datetime import timedelta
from typing import Any

import numpy as np

from mpdist import algorithms as alg
from mpdist.errors import DistBackendError, DistStoreError
from mpdist.process_group import Future, ReduceOp, Work
from mpdist.store import Store

from .builtin import BuiltinProcessGroup
from .group_store import GroupStore

__all__ = ["CommProcessGroup"]


class CommProcessGroup(BuiltinProcessGroup):
    """A group whose collectives are ``mpdist.algorithms`` over ``transport_class``."""

    backend_name = "undefined"
    transport_class: Callable[..., Any] | None = None

    def __init__(
        self,
        store: Store,
        rank: int,
        size: int,
        timeout: timedelta,
        *,
        global_ranks: list[int] | None = None,
    ) -> None:
        super().__init__(rank, size)
        if global_ranks is not None:
            if len(global_ranks) != size:
                raise ValueError(f"global_ranks {global_ranks} must have {size} entries")
            self._global_ranks = list(global_ranks)
        self._timeout_s = timeout.total_seconds() if isinstance(timeout, timedelta) else timeout
        self._store = store
        self._pg_store = store  # get_group_store()
        assert self.transport_class is not None, "subclasses set transport_class"
        # errors name the ranks as the user knows them (a subgroup's global ranks)
        self._transport = self.transport_class(
            store, rank, size, self._timeout_s, rank_names=self._global_ranks
        )
        if isinstance(store, GroupStore):
            # an abort of the group's store (the harness aborting a group still being
            # built) reaches the transport too, also if it came before this line
            store.add_abort_callback(self._transport.abort)
        self._comm = alg.Communicator(self._transport, self._timeout_s)
        self._closed = False
        self._lock = threading.Lock()
        self._cond = threading.Condition(self._lock)
        # held by whoever is running an operation: keeps issue order between the caller
        # (inline synchronous ops) and the worker (queued ops)
        self._exec_lock = threading.Lock()
        self._queue: deque[tuple[Callable[[], Any], list[Any], _QueuedWork, bool] | None] = deque()
        self._pending = 0
        self._worker: threading.Thread | None = None
        self._mb_count = 0
        # The last point-to-point op entered: (name, "dst"/"src", peer group rank or None for
        # any, tag, the communicator's last collective at that moment). The Communicator
        # numbers collectives only; the last item says whether one was entered since.
        self._last_p2p: tuple[str, str, int | None, int, tuple[str, int] | None] | None = None
        # set when a timed wait handed the queued stepped ops over to the worker
        self._worker_runs_stepped = False
        # run first on the worker thread (see run_on_own_threads)
        self._worker_setup: Callable[[], None] | None = None

    def set_global_ranks(self, ranks: list[int]) -> None:
        super().set_global_ranks(ranks)
        self._transport.rank_names = list(ranks)

    # ---------------------------------------------------------------- execution
    def run_on_own_threads(self, setup: Callable[[], None] | None) -> None:
        self._worker_setup = setup

    def _default_timeout(self) -> float:
        return float(self._timeout_s)

    def _dead(self) -> DistBackendError:
        return DistBackendError(
            f"process group {self.group_desc or self.group_name!r} has been destroyed"
        )

    def _run(
        self, fn: Callable[[], Any], outputs: list[Any], async_op: bool, is_recv: bool = False
    ) -> Any:
        if self._closed:
            raise self._dead()
        if not async_op:
            if self._pending == 0:
                # Nothing queued by this thread (it would have counted it already): run
                # here, holding the exec lock so the worker and other threads wait their turn.
                with self._exec_lock:
                    return fn()
            if threading.current_thread() is self._worker:
                # a completion callback on the worker issuing a synchronous op: waiting for
                # the queue would wait for ourselves. Running it here puts it at the same
                # place in the sequence on every rank (right after the op that completed).
                with self._exec_lock:
                    return fn()
            with self._cond:
                stepped = _stepped_tail(self._queue)
            if stepped is not None:
                # only stepped ops are queued: finish them here, then run this one here too
                stepped._finish()
                if self._pending == 0:
                    with self._exec_lock:
                        return fn()
        work = self._submit(fn, outputs, is_recv)
        if async_op:
            return work
        work.get_future().wait()  # re-raises the operation's failure
        return work.value

    def _submit(self, fn: Callable[[], Any], outputs: list[Any], is_recv: bool) -> _QueuedWork:
        work = _QueuedWork(is_recv)
        with self._cond:
            if self._closed:
                raise self._dead()
            self._queue.append((fn, outputs, work, is_recv))
            self._pending += 1
            self._wake_worker()
        return work

    def _wake_worker(self) -> None:
        """Start the worker if needed and wake it (hold ``_cond``)."""
        if self._worker is None:
            self._worker = threading.Thread(
                target=self._loop, name=f"mpdist-pg{self.group_name}-worker", daemon=True
            )
            self._worker.start()
        self._cond.notify()

    def _loop(self) -> None:
        if self._worker_setup is not None:
            self._worker_setup()
        while True:
            with self._cond:
                while not self._worker_has_work():
                    self._cond.wait()
            # Popped and run under the execution lock: a thread advancing stepped ops holds
            # it too, so it never finds an op popped but not yet run ahead of its own.
            with self._exec_lock:
                with self._cond:
                    if not self._worker_has_work():
                        continue  # the caller finished the stepped ops meanwhile
                    item = self._queue.popleft()
                if item is None:
                    return
                fn, outputs, work, _ = item
                exc: BaseException | None = None
                try:
                    work.value = fn()
                except BaseException as e:  # stored in the Work, re-raised by wait()
                    exc = e
                with self._lock:
                    self._pending -= 1
            work.finish(outputs, exc)

    def _worker_has_work(self) -> bool:
        """Something for the worker is queued (hold ``_cond``): stepped ops are left to
        their caller unless other work is queued behind them or they were handed over."""
        if not self._queue:
            self._worker_runs_stepped = False
            return False
        return _stepped_tail(self._queue) is None or self._worker_runs_stepped

    def abort_with_reason(self, reason: str) -> None:
        self._transport.abort(reason)
        if isinstance(self._store, GroupStore):
            self._store.abort(reason)  # monitored_barrier waits on the store

    def _close(self) -> None:
        with self._cond:
            if self._closed:
                return
            self._closed = True
            pending = self._pending
            worker = self._worker
            if worker is not None:
                self._queue.append(None)
                self._cond.notify()
        if pending:
            # don't let queued work wait out the timeout against a group that is going away
            self._transport.abort("process group destroyed with operations pending")
        if worker is not None and worker is not threading.current_thread():
            worker.join()
        self._transport.close()

    def last_operation(self) -> str | None:
        last = self._comm.last_op
        p2p = self._last_p2p
        # (name, seq) changes with every collective entered, so equal means none since the p2p op
        if p2p is not None and p2p[4] == last:
            name, role, peer, tag, _ = p2p
            who = "any" if peer is None else self._global_ranks[peer]
            return f"{name}({role}={who}, tag={tag})"
        return None if last is None else f"{last[0]} seq={last[1]}"

    # ---------------------------------------------------------------- collectives
    def _c_allreduce_stepped(
        self, arr: np.ndarray, op: ReduceOp, name: str, outputs: list[Any]
    ) -> Work:
        comm = self._comm
        steps = alg.Stepped(comm, alg.allreduce_steps(comm, arr, op, op_name=name), name)
        work = _SteppedWork(self, steps, outputs)
        with self._cond:
            if self._closed:
                raise self._dead()
            q = self._queue
            # ordinary ops are queued (they go first; the worker will run this too), or
            # we are the worker: an ordinary async op
            ordinary = bool(q and _stepped_tail(q) is None) or (
                threading.current_thread() is self._worker
            )
            if not ordinary:
                q.append(work._item)
                self._pending += 1
        if ordinary:
            return self._c_allreduce(arr, op, name, outputs, True)
        work._advance()  # the first step now: this rank's data goes out at once
        return work

    def _advance_stepped(self, target: _SteppedWork, block: bool) -> None:
        """Advance the stepped ops queued up to ``target``, in order, in this thread; with
        ``block`` up to the end of ``target``. Without ``block``, return at once if another
        thread is running an op, and stop at the first op still waiting for data."""
        if not self._exec_lock.acquire(blocking=block):
            return
        finished: list[_SteppedWork] = []
        try:
            while True:
                with self._cond:
                    if not any(item is target._item for item in self._queue):
                        break  # done already (the worker ran it)
                    # stepped ops are queued ahead of any other op: this is one
                    head = self._queue[0]
                    assert head is not None and isinstance(head[2], _SteppedWork)
                    work = head[2]
                steps = work._steps
                # a failure is kept in steps.error and raised by wait(), as for any async op
                with contextlib.suppress(Exception):
                    steps.advance(block=block)
                if not steps.done:
                    break
                with self._cond:
                    self._queue.popleft()
                    self._pending -= 1
                finished.append(work)
                if work is target:
                    break
        finally:
            self._exec_lock.release()
        for work in finished:
            work.finish(work._outputs, work._steps.error)

    def _c_allreduce(
        self, arr: np.ndarray, op: ReduceOp, name: str, outputs: list[Any], async_op: bool
    ) -> Any:
        comm = self._comm
        return self._run(
            lambda: alg.allreduce(comm, arr, op, op_name=name, checked=True), outputs, async_op
        )

    def _c_broadcast(
        self, arr: np.ndarray, root: int, name: str, outputs: list[Any], async_op: bool
    ) -> Any:
        comm = self._comm
        return self._run(
            lambda: alg.broadcast(comm, arr, root, op_name=name, checked=True), outputs, async_op
        )

    def _c_reduce(
        self,
        arr: np.ndarray,
        root: int,
        op: ReduceOp,
        name: str,
        outputs: list[Any],
        async_op: bool,
    ) -> Any:
        comm = self._comm
        return self._run(lambda: alg.reduce(comm, arr, root, op, op_name=name), outputs, async_op)

    def _c_allgather(
        self,
        out_list: list[np.ndarray],
        inp: np.ndarray,
        name: str,
        outputs: list[Any],
        async_op: bool,
    ) -> Any:
        comm = self._comm
        return self._run(
            lambda: alg.allgather(comm, out_list, inp, op_name=name, checked=True),
            outputs,
            async_op,
        )

    def _c_gather(
        self,
        inp: np.ndarray,
        out_list: list[np.ndarray] | None,
        root: int,
        name: str,
        outputs: list[Any],
        async_op: bool,
    ) -> Any:
        comm = self._comm
        return self._run(
            lambda: alg.gather(comm, inp, out_list, root, op_name=name), outputs, async_op
        )

    def _c_scatter(
        self,
        out: np.ndarray,
        in_list: list[np.ndarray] | None,
        root: int,
        name: str,
        outputs: list[Any],
        async_op: bool,
    ) -> Any:
        comm = self._comm
        return self._run(
            lambda: alg.scatter(comm, out, in_list, root, op_name=name), outputs, async_op
        )

    def _c_reduce_scatter(
        self,
        out: np.ndarray,
        in_list: list[np.ndarray],
        op: ReduceOp,
        name: str,
        outputs: list[Any],
        async_op: bool,
    ) -> Any:
        comm = self._comm
        return self._run(
            lambda: alg.reduce_scatter(comm, out, in_list, op, op_name=name, checked=True),
            outputs,
            async_op,
        )

    def _c_alltoall(
        self,
        out_list: list[np.ndarray],
        in_list: list[np.ndarray],
        name: str,
        outputs: list[Any],
        async_op: bool,
    ) -> Any:
        comm = self._comm
        return self._run(
            lambda: alg.alltoall(comm, out_list, in_list, op_name=name), outputs, async_op
        )

    def _c_barrier(self, name: str, async_op: bool) -> Any:
        comm = self._comm
        return self._run(lambda: alg.barrier(comm, op_name=name), [], async_op)

    def _c_send(
        self, arr: np.ndarray, dst: int, tag: int, outputs: list[Any], async_op: bool
    ) -> Any:
        comm = self._comm
        name = "isend" if async_op else "send"

        def send() -> None:
            self._last_p2p = (name, "dst", dst, tag, comm.last_op)
            alg.send(comm, arr, dst, tag, op_name="send")

        return self._run(send, outputs, async_op)

    def _c_recv(
        self, arr: np.ndarray, src: int | None, tag: int, outputs: list[Any], async_op: bool
    ) -> Any:
        comm = self._comm
        name = "irecv" if async_op else "recv"

        def recv() -> int:
            self._last_p2p = (name, "src", src, tag, comm.last_op)
            return alg.recv(comm, arr, src, tag, op_name="recv")

        return self._run(recv, outputs, async_op, True)

    def _c_monitored_barrier(self, timeout_s: float, wait_all_ranks: bool) -> None:
        # Through the group's store rather than the transport, so the deadline is the
        # caller's and a dead rank shows up as a missing key: rank 0 names who is missing.
        if self._closed:
            raise self._dead()
        self._mb_count += 1
        base = f"monitored_barrier/{self._mb_count}"
        store, me, size = self._store, self.rank(), self.size()
        ranks = self._global_ranks
        if me != 0:
            store.set(f"{base}/arrived/{me}", b"1")
            # rank 0 may arrive up to ``timeout`` after us and then wait ``timeout`` for the rest
            try:
                store.wait([f"{base}/result"], timedelta(seconds=2 * timeout_s))
            except DistStoreError:
                raise DistBackendError(
                    f"[Rank {ranks[me]}]: monitored_barrier timed out after {2 * timeout_s:g} s "
                    f"waiting for rank {ranks[0]} to release it"
                ) from None
            verdict = store.get(f"{base}/result").decode()
            if verdict != "ok":
                raise DistBackendError(verdict)
            return
        deadline = time.monotonic() + timeout_s
        missing: list[int] = []
        for r in range(1, size):
            key = f"{base}/arrived/{r}"
            left = deadline - time.monotonic()
            if missing or left <= 0:
                if not store.check([key]):
                    missing.append(r)
                    if not wait_all_ranks:
                        break
                continue
            try:
                store.wait([key], timedelta(seconds=left))
            except DistStoreError:
                missing.append(r)
                if not wait_all_ranks:
                    break
        ms = int(timeout_s * 1000)
        if not missing:
            store.set(f"{base}/result", b"ok")
            return
        if wait_all_ranks:
            names = ", ".join(str(ranks[r]) for r in missing)
            msg = f"[Rank {ranks[0]}]: Ranks {names} failed to pass monitoredBarrier in {ms} ms"
        else:
            msg = (
                f"[Rank {ranks[0]}]: Rank {ranks[missing[0]]} failed to pass monitoredBarrier "
                f"in {ms} ms"
            )
        store.set(f"{base}/result", msg.encode())
        raise DistBackendError(msg)


def _stepped_tail(queue: deque[Any]) -> _SteppedWork | None:
    """The last queued op if it is a stepped one (then every queued op is: stepped ops are
    queued only behind stepped ones), else None (hold the group's ``_cond``)."""
    last = queue[-1] if queue else None
    return last[2] if last is not None and isinstance(last[2], _SteppedWork) else None


class _QueuedWork(Work):
    """The Work of an operation queued for the group's worker: the operation's value (a
    receive's source rank) is kept here, and the worker finishes it through its Future."""

    def __init__(self, is_recv: bool = False, future: Future | None = None) -> None:
        super().__init__(future)
        self.is_recv = is_recv
        self.value: Any = None

    def finish(self, outputs: list[Any], exc: BaseException | None) -> None:
        """Complete the Work: its Future gets ``outputs``, or ``exc`` to re-raise."""
        fut = self.get_future()
        if exc is not None:
            fut.set_exception(exc)
        else:
            fut.set_result(outputs)

    def source_rank(self) -> int:
        if self.is_recv and self.is_success() and isinstance(self.value, int):
            return self.value
        return -1

    _source_rank = source_rank


class _SteppedWork(_QueuedWork):
    """The Work of a stepped allreduce: advanced by the issuing thread, finished by a wait
    (see the module docstring)."""

    def __init__(self, group: CommProcessGroup, steps: alg.Stepped, outputs: list[Any]) -> None:
        super().__init__(future=_SteppedFuture(self))
        self._group = group
        self._steps = steps
        self._outputs = outputs
        # the queue entry; the worker runs it (to the end) only if it reaches it first
        self._item = (lambda: steps.advance(block=True), outputs, self, False)

    def _advance(self) -> bool:
        if not self.is_completed():
            self._group._advance_stepped(self, block=False)
        return self.is_completed()

    def _finish(self) -> None:
        """Run it (and the stepped ops queued ahead of it) to the end in this thread."""
        self._group._advance_stepped(self, block=True)

    def _hand_over(self) -> None:
        """Let the worker finish it (a wait with a timeout must not block past it)."""
        group = self._group
        with group._cond:
            group._worker_runs_stepped = True
            group._wake_worker()


class _SteppedFuture(Future):
    """Waiting for a stepped allreduce finishes it in the waiting thread."""

    def __init__(self, work: _SteppedWork) -> None:
        super().__init__()
        self._work = work

    def _wait_done(self, timeout: float | timedelta | None) -> bool:
        if not self._done:
            if timeout is None:
                self._work._finish()
            else:
                self._work._hand_over()
        return super()._wait_done(timeout)
