"""The harness's "last operation entered" hook names point-to-point ops too, not only collectives.

``mpdist.distributed.debug.collective_trace()`` is what the harness prints for a rank that
timed out. These tests run ranks as threads (threaded backend, ``spawn_threads``) so the
whole process's trace is visible from any rank.
"""

from __future__ import annotations

import re
import threading
import time
from collections.abc import Iterator

import numpy as np
import pytest

import mpdist as dist
from mpdist.distributed.debug import abort_all_groups, collective_trace
from mpdist.errors import DistBackendError
from mpdist.testing import spawn_ranks, spawn_threads


@pytest.fixture(autouse=True)
def no_thread_left() -> Iterator[None]:
    before = set(threading.enumerate())
    yield
    left = [t.name for t in threading.enumerate() if t not in before]
    assert not left, f"threads left running: {left}"


def lines(trace: str) -> list[str]:
    """One entry per live group; their order follows group creation, which threads race for."""
    return sorted(trace.split("; "))


def stuck_recv_job(rank: int, n: int, released: threading.Event) -> str:
    if rank == 1:
        # never sends; keeps its group open until rank 0 has read the trace
        released.wait()
        return ""
    try:
        with pytest.raises(DistBackendError, match="timed out"):
            dist.recv(np.zeros(4), src=1)
        return collective_trace()
    finally:
        released.set()


def test_rank_stuck_in_recv_shows_the_recv():
    assert collective_trace() == "no collective entered"
    # the group timeout is what ends the stuck recv; nothing else runs under it
    traces = spawn_threads(stuck_recv_job, 2, threading.Event(), group_timeout=0.3)
    assert traces[0] == "recv(src=1, tag=0) on group 'default'"
    assert collective_trace() == "no collective entered"  # destroyed groups drop out


def order_job(rank: int, n: int, sync: threading.Barrier) -> tuple[str, str]:
    x = np.ones(4)
    dist.all_reduce(x)
    if rank == 0:
        dist.send(x, dst=1, tag=3)
        dist.recv(x, src=None, tag=4)
    else:
        dist.irecv(x, src=0, tag=3).wait()
        dist.isend(x, dst=0, tag=4).wait()
    sync.wait()  # both ranks are past their point-to-point ops
    after_p2p = collective_trace()
    sync.wait()  # both have read it before either enters the barrier
    dist.barrier()
    sync.wait()
    after_barrier = collective_trace()
    sync.wait()  # neither destroys its group before both have read
    return after_p2p, after_barrier


def test_trace_shows_whichever_came_last_of_collective_and_p2p():
    results = spawn_threads(order_job, 2, threading.Barrier(2, timeout=60))
    after_p2p, after_barrier = results[0]
    assert results[1] == results[0]
    assert lines(after_p2p) == [
        "isend(dst=0, tag=4) on group 'default'",
        "recv(src=any, tag=4) on group 'default'",
    ]
    assert lines(after_barrier) == ["barrier seq=2 on group 'default'"] * 2


def stuck_new_group_job(rank: int, n: int) -> str:
    """Rank 0 builds a group rank 1 never joins; a thread of rank 0 reads the trace, then aborts."""
    if rank == 1:
        return ""
    seen: list[str] = []

    def watch() -> None:
        deadline = time.monotonic() + 30
        trace = collective_trace()
        while "building group" not in trace and time.monotonic() < deadline:
            time.sleep(0.005)
            trace = collective_trace()
        seen.append(trace)
        abort_all_groups("the watcher has seen the trace")

    watcher = threading.Thread(target=watch, name="mpdist-test-watcher")
    watcher.start()
    try:
        with pytest.raises(DistBackendError, match="the watcher has seen the trace"):
            dist.new_group([0, 1])
    finally:
        watcher.join()
    return seen[0]


def test_rank_stuck_building_a_group_shows_it():
    traces = spawn_ranks(stuck_new_group_job, 2)
    assert re.fullmatch(r".*building group '[^']+' \(waiting for its peers\)", traces[0])
