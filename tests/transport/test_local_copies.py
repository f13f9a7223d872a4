"""LocalTransport copies each payload once, and a sender may reuse its buffer once its send is done."""

from __future__ import annotations

import contextlib
import threading
import tracemalloc
from collections.abc import Callable, Iterator
from typing import Any

import numpy as np
import pytest
from mesh_helpers import DictStore

import mpdist.algorithms as A
import mpdist.transport.local as local
from mpdist.errors import DistBackendError
from mpdist.transport import LocalTransport

N = (8 << 20) // 8  # 8 MiB of float64: an extra copy would show in the allocation peak
GUARD_S = 20.0  # a bound for a regression's hang; the tests are ordered by events


@pytest.fixture
def pair() -> Iterator[tuple[A.Communicator, A.Communicator]]:
    """Two ranks of one group (driven from whichever threads a test likes)."""
    store = DictStore()
    ts = [LocalTransport(store, r, 2, GUARD_S) for r in range(2)]
    try:
        yield A.Communicator(ts[0], GUARD_S), A.Communicator(ts[1], GUARD_S)
    finally:
        for t in ts:
            t.close()
    assert not any(h is ts[0]._hub for h in local._HUBS.values())


def _payload() -> np.ndarray:
    return np.arange(N, dtype=np.float64)


class _PeakBytes:
    """Bytes allocated at the peak of a block, above what was allocated when it began."""

    def __enter__(self) -> _PeakBytes:
        tracemalloc.start()
        tracemalloc.reset_peak()
        self._base = tracemalloc.get_traced_memory()[0]
        self.peak = 0
        return self

    def __exit__(self, *exc: object) -> None:
        self.peak = tracemalloc.get_traced_memory()[1] - self._base
        tracemalloc.stop()


def _in_thread(fn: Callable[[], Any]) -> tuple[threading.Thread, dict[str, Any]]:
    out: dict[str, Any] = {}

    def run() -> None:
        try:
            out["value"] = fn()
        except BaseException as e:  # noqa: BLE001  (asserted on by the test)
            out["error"] = e

    t = threading.Thread(target=run, name="local-copies-rank")
    t.start()
    return t, out


def _receiving_inside_wait(comm: A.Communicator, out: np.ndarray, src: int, tag: int = 0):
    """Post a receive and wait on it in a thread; returns once that thread is inside the wait."""
    inside = threading.Event()
    t = comm.transport
    progress = t._progress

    def first_progress(timeout_s: float) -> None:
        inside.set()
        progress(timeout_s)

    t._progress = first_progress
    req = A.irecv(comm, out, src, tag)
    th, res = _in_thread(lambda: A.wait(comm, [req], "recv"))
    assert inside.wait(GUARD_S)
    return th, res, req


def test_send_to_a_posted_receive_is_one_copy(pair) -> None:
    c0, c1 = pair
    data = _payload()
    out = np.zeros(N)
    th, res, req = _receiving_inside_wait(c1, out, 0)
    try:
        with _PeakBytes() as mem:
            A.send(c0, data, 1)
            th.join(GUARD_S)
    finally:
        th.join(GUARD_S)
    assert "error" not in res, res
    assert req.done and np.array_equal(out, data)
    # the data went from the sender's buffer into the receiver's: no payload-sized buffer
    # in between (before: bytes(buf) at send, 8 MiB)
    assert mem.peak < data.nbytes // 8, mem.peak


def test_early_message_is_copied_from_the_sender_buffer_when_received(pair) -> None:
    c0, c1 = pair
    data = _payload()
    out = np.zeros(N)
    with _PeakBytes() as mem:
        sreq = A.isend(c0, data, 1)
        # nothing copied yet, so the send is not done (before: done at once, as a copy)
        assert not sreq.done
        assert A.recv(c1, out, 0) == 0
        # the receiver copied straight out of the sender's buffer, which finished the send
        assert sreq.done
        A.wait(c0, [sreq], "send")
    assert np.array_equal(out, data)
    assert mem.peak < data.nbytes // 8, mem.peak


def _complete_blocking_receiver_idle(c0: A.Communicator, c1: A.Communicator, buf) -> Any:
    # the receiver is not in the transport at all: the send must not wait for it
    A.send(c0, buf, 1)
    return None


def _complete_stashed(c0: A.Communicator, c1: A.Communicator, buf) -> Any:
    sreq = A.isend(c0, buf, 1, tag=0)
    A.send(c0, np.ones(1), 1, tag=2)
    # the receiver sees the tag-0 message while it waits for tag 2: stashed as early
    assert A.recv(c1, np.zeros(1), 0, tag=2) == 0
    A.wait(c0, [sreq], "send")
    return None


def _complete_failed_wait(c0: A.Communicator, c1: A.Communicator, buf) -> Any:
    sreq = A.isend(c0, buf, 1)
    c0.transport.abort("rank 0 gave up")
    # a wait that fails hands the buffer back (the send may be lost, not changed); it
    # fails unless the send was complete already, as it is where sends copy at once
    with contextlib.suppress(DistBackendError):
        A.wait(c0, [sreq], "send")
    return None


def _complete_close(c0: A.Communicator, c1: A.Communicator, buf) -> Any:
    A.isend(c0, buf, 1)
    c0.transport.close()  # sent before the sender left: the receiver still gets it
    return None


@pytest.mark.parametrize(
    "complete",
    [_complete_blocking_receiver_idle, _complete_stashed, _complete_failed_wait, _complete_close],
    ids=["receiver-idle", "stashed-early", "failed-wait", "sender-closed"],
)
def test_sender_modifying_its_buffer_after_the_send_completes(pair, complete) -> None:
    c0, c1 = pair
    buf = _payload()
    complete(c0, c1, buf)
    buf[:] = -1.0  # the sender's buffer is its own again
    out = np.zeros(N)
    assert A.recv(c1, out, 0) == 0
    assert np.array_equal(out, _payload())


def test_sender_modifying_its_buffer_after_a_receiver_took_it(pair) -> None:
    c0, c1 = pair
    buf = _payload()
    out = np.zeros(N)
    th, res, _ = _receiving_inside_wait(c1, out, 0)
    try:
        A.send(c0, buf, 1)
        buf[:] = -1.0
    finally:
        th.join(GUARD_S)
    assert "error" not in res, res
    assert np.array_equal(out, _payload())


def test_both_ranks_blocking_send_first_do_not_deadlock(pair) -> None:
    """Eager completion is kept: each blocking send returns before the peer receives."""
    comms = pair
    bufs = [np.full(N // 8, float(r)) for r in range(2)]
    outs = [np.zeros(N // 8) for _ in range(2)]
    go = threading.Barrier(2)

    def rank(r: int) -> int:
        go.wait(GUARD_S)
        A.send(comms[r], bufs[r], 1 - r)
        bufs[r][:] = -1.0
        return A.recv(comms[r], outs[r], 1 - r)

    runs = [_in_thread(lambda r=r: rank(r)) for r in range(2)]
    for th, _ in runs:
        th.join(GUARD_S)
    for r, (th, res) in enumerate(runs):
        assert not th.is_alive() and res.get("value") == 1 - r, res
        assert np.array_equal(outs[r], np.full(N // 8, float(1 - r)))


def test_size_mismatch_drops_the_message_and_completes_the_send(pair) -> None:
    c0, c1 = pair
    sreq = A.isend(c0, np.arange(4.0), 1)
    with pytest.raises(DistBackendError, match="32 bytes"):
        A.recv(c1, np.zeros(3), 0)
    # the receiver looked at it and threw it away: the send is over
    assert sreq.done
