"""The mpi backend's waits that MPI does not give: point-to-point Works and a monitored barrier.

``isend``/``irecv`` are MPI requests that whoever waits or tests completes (no thread);
``monitored_barrier`` polls messages against a deadline so that it can name missing ranks.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from datetime import timedelta
from typing import Any

import numpy as np
from mpi4py import MPI

from mpdist.errors import DistBackendError
from mpdist.process_group import Future, Work

__all__ = ["RequestWork", "monitored_barrier", "mpi_error"]


class _RequestFuture(Future):
    """The Future of an ``isend``/``irecv``: waiting (or testing) completes the MPI request."""

    def __init__(self, finish: Callable[[bool], bool]) -> None:
        super().__init__()
        self._finish = finish  # finish(block) -> done; completes this future when done

    def _wait_done(self, timeout: float | timedelta | None) -> bool:
        if not self._done:
            if timeout is None:
                self._finish(True)
            else:
                secs = timeout.total_seconds() if isinstance(timeout, timedelta) else timeout
                deadline = time.monotonic() + max(0.0, float(secs))
                while not self._finish(False) and time.monotonic() < deadline:
                    time.sleep(0.0002)
        return super()._wait_done(0 if timeout is not None else None)

    def done(self) -> bool:
        return self._done or self._finish(False)


class RequestWork(Work):
    """``isend``/``irecv``: an MPI request; ``source_rank`` is the sender's group rank."""

    def __init__(self, req: Any, outputs: list[Any], check: Callable[[Any], Any]) -> None:
        self._req = req
        self._status = MPI.Status()
        self._check = check  # raises on a bad message; returns the source
        self._outputs = outputs
        self._lock = threading.Lock()
        super().__init__(_RequestFuture(self._complete))

    def _complete(self, block: bool) -> bool:
        fut = self._future()
        # a test while another thread waits in MPI reports "not yet" rather than queueing
        if not self._lock.acquire(blocking=block):
            return fut._done
        try:
            if fut._done:
                return True
            try:
                if block:
                    self._req.Wait(self._status)
                elif not self._req.Test(self._status):
                    return False
                self._source = self._check(self._status)
            except BaseException as exc:
                fut.set_exception(mpi_error(exc, "recv/send"))
                return True
            fut.set_result(self._outputs)
            return True
        finally:
            self._lock.release()

    def is_completed(self) -> bool:
        return self._complete(False)


def mpi_error(exc: BaseException, what: str) -> BaseException:
    """An MPI failure as mpdist's DistBackendError naming ``what``; others unchanged."""
    if isinstance(exc, MPI.Exception):
        return DistBackendError(f"{what}: MPI error: {exc.Get_error_string()}")
    return exc


def monitored_barrier(
    ctl: Any, tag: int, global_ranks: list[int], timeout_s: float, wait_all_ranks: bool
) -> None:
    """torch's monitored_barrier on communicator ``ctl`` (one of its own): rank 0 polls for
    every rank's arrival until the deadline, names the missing ones, and releases the rest
    with its verdict (a Barrier cannot time out, nor say who is missing)."""
    me, p, n = ctl.Get_rank(), ctl.Get_size(), global_ranks
    if p == 1:
        return
    if me != 0:
        ctl.Send(np.zeros(1, np.uint8), 0, tag)
        reply = np.zeros(4096, np.uint8)
        req = ctl.Irecv(reply, 0, tag)
        status = MPI.Status()
        if not _poll(req, 2 * timeout_s, status):
            req.Cancel()
            raise DistBackendError(
                f"[Rank {n[me]}]: monitored_barrier timed out after {2 * timeout_s:g} s "
                f"waiting for rank {n[0]} to release it"
            )
        verdict = reply[: status.Get_count(MPI.BYTE)].tobytes().decode()
        if verdict != "ok":
            raise DistBackendError(verdict)
        return
    deadline = time.monotonic() + timeout_s
    flags = [np.zeros(1, np.uint8) for _ in range(p)]
    reqs = {r: ctl.Irecv(flags[r], r, tag) for r in range(1, p)}
    missing: list[int] = []
    for r in range(1, p):
        if missing and not wait_all_ranks:
            break
        if not _poll(reqs[r], max(0.0, deadline - time.monotonic())):
            missing.append(r)
    ms = int(timeout_s * 1000)
    if not missing:
        msg = "ok"
    elif wait_all_ranks:
        names = ", ".join(str(n[r]) for r in missing)
        msg = f"[Rank {n[0]}]: Ranks {names} failed to pass monitoredBarrier in {ms} ms"
    else:
        msg = f"[Rank {n[0]}]: Rank {n[missing[0]]} failed to pass monitoredBarrier in {ms} ms"
    for r, req in reqs.items():
        if req.Test():
            ctl.Send(np.frombuffer(msg.encode(), np.uint8), r, tag)
        else:
            req.Cancel()
    if missing:
        raise DistBackendError(msg)


def _poll(req: Any, seconds: float, status: Any = None) -> bool:
    """Test ``req`` until done or ``seconds`` pass; True if done."""
    deadline = time.monotonic() + seconds
    while True:
        if req.Test(status):
            return True
        if time.monotonic() >= deadline:
            return False
        time.sleep(0.001)
