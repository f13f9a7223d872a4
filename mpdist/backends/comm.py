"""CommProcessGroup: a process group running mpdist's algorithms over a transport.

Both real backends are this class with a different transport: ``tcp`` (one process per
rank, TCP mesh) and ``threaded`` (ranks are threads, in-process queues). Operations run
in issue order: asynchronous ones on a per-group worker thread; a synchronous one runs
inline in the caller when nothing is pending (no thread hop on the latency path), else
it queues behind the pending work and waits.
"""

from __future__ import annotations

import threading
import time
from collections import deque
from collections.abc import Callable
from datetime import timedelta
from typing import Any

from mpdist import algorithms as alg
from mpdist.errors import DistBackendError, DistStoreError
from mpdist.process_group import Work
from mpdist.store import Store

from .group_store import GroupStore
from .native import NativeProcessGroup

__all__ = ["CommProcessGroup"]


class CommProcessGroup(NativeProcessGroup):
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
        self._queue: deque[tuple[Callable[[], Any], list[Any], Work, bool] | None] = deque()
        self._pending = 0
        self._worker: threading.Thread | None = None
        self._mb_count = 0
        # The last point-to-point op entered: (name, "dst"/"src", peer group rank or None for
        # any, tag, the communicator's last collective at that moment). The Communicator
        # numbers collectives only; the last item says whether one was entered since.
        self._last_p2p: tuple[str, str, int | None, int, tuple[str, int] | None] | None = None
        # run first on the worker thread (the module API uses it to share a thread-local world)
        self._worker_setup: Callable[[], None] | None = None

    def _set_global_ranks(self, ranks: list[int]) -> None:
        super()._set_global_ranks(ranks)
        self._transport.rank_names = list(ranks)

    # ---------------------------------------------------------------- execution
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
        work = self._submit(fn, outputs, is_recv)
        if async_op:
            return work
        fut = work._fut
        fut._wait_done(None)
        if fut._exc is not None:
            raise fut._exc
        return work._result

    def _submit(self, fn: Callable[[], Any], outputs: list[Any], is_recv: bool) -> Work:
        work = Work()
        work._result = None
        with self._cond:
            if self._closed:
                raise self._dead()
            self._queue.append((fn, outputs, work, is_recv))
            self._pending += 1
            if self._worker is None:
                self._worker = threading.Thread(
                    target=self._loop, name=f"mpdist-pg{self.group_name}-worker", daemon=True
                )
                self._worker.start()
            self._cond.notify()
        return work

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
            fn, outputs, work, is_recv = item
            exc: BaseException | None = None
            with self._exec_lock:
                try:
                    work._result = fn()
                except BaseException as e:  # stored in the Work, re-raised by wait()
                    exc = e
                with self._lock:
                    self._pending -= 1
            if is_recv and exc is None:
                work._source = work._result
            work._fut._complete(None if exc else outputs, exc)

    def _abort(self, reason: str) -> None:
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

    def _trace(self) -> str | None:
        last = self._comm.last_op
        p2p = self._last_p2p
        # (name, seq) changes with every collective entered, so equal means none since the p2p op
        if p2p is not None and p2p[4] == last:
            name, role, peer, tag, _ = p2p
            who = "any" if peer is None else self._global_ranks[peer]
            return f"{name}({role}={who}, tag={tag})"
        return None if last is None else f"{last[0]} seq={last[1]}"

    # ---------------------------------------------------------------- collectives
    def _c_allreduce(self, arr, op, name, outputs, async_op):
        comm = self._comm
        return self._run(lambda: alg.allreduce(comm, arr, op, op_name=name), outputs, async_op)

    def _c_broadcast(self, arr, root, name, outputs, async_op):
        comm = self._comm
        return self._run(lambda: alg.broadcast(comm, arr, root, op_name=name), outputs, async_op)

    def _c_reduce(self, arr, root, op, name, outputs, async_op):
        comm = self._comm
        return self._run(lambda: alg.reduce(comm, arr, root, op, op_name=name), outputs, async_op)

    def _c_allgather(self, out_list, inp, name, outputs, async_op):
        comm = self._comm
        return self._run(
            lambda: alg.allgather(comm, out_list, inp, op_name=name), outputs, async_op
        )

    def _c_gather(self, inp, out_list, root, name, outputs, async_op):
        comm = self._comm
        return self._run(
            lambda: alg.gather(comm, inp, out_list, root, op_name=name), outputs, async_op
        )

    def _c_scatter(self, out, in_list, root, name, outputs, async_op):
        comm = self._comm
        return self._run(
            lambda: alg.scatter(comm, out, in_list, root, op_name=name), outputs, async_op
        )

    def _c_reduce_scatter(self, out, in_list, op, name, outputs, async_op):
        comm = self._comm
        return self._run(
            lambda: alg.reduce_scatter(comm, out, in_list, op, op_name=name), outputs, async_op
        )

    def _c_alltoall(self, out_list, in_list, name, outputs, async_op):
        comm = self._comm
        return self._run(
            lambda: alg.alltoall(comm, out_list, in_list, op_name=name), outputs, async_op
        )

    def _c_barrier(self, name, async_op):
        comm = self._comm
        return self._run(lambda: alg.barrier(comm, op_name=name), [], async_op)

    def _c_send(self, arr, dst, tag, outputs, async_op):
        comm = self._comm
        name = "isend" if async_op else "send"

        def send() -> None:
            self._last_p2p = (name, "dst", dst, tag, comm.last_op)
            alg.send(comm, arr, dst, tag, op_name="send")

        return self._run(send, outputs, async_op)

    def _c_recv(self, arr, src, tag, outputs, async_op):
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
