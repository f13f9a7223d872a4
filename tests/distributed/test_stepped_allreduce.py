"""Stepped all-reduces on mpdist's own groups (``_c_allreduce_stepped``, what DDP uses where
no core is left for a communication thread): advanced by the issuing thread, finished by
its wait, in issue order with every other operation of the group, with real processes."""

from __future__ import annotations

import os

import numpy as np

import mpdist as dist
from mpdist import DistNetworkError, ReduceOp
from mpdist.distributed import _get_default_group, _get_default_store
from mpdist.testing import spawn_ranks, spawn_threads


def stepped(arr: np.ndarray):
    return _get_default_group()._c_allreduce_stepped(arr, ReduceOp.SUM, "all_reduce", [arr])


def only_stepped(rank: int, n: int) -> tuple[list[float], list[bool], bool]:
    """Several stepped all-reduces advanced by hand and waited for: no worker thread."""
    arrays = [np.full(40_000 * (i + 1), rank + i + 1.0) for i in range(3)]
    works = [stepped(a) for a in arrays]
    for _ in range(5):
        works[-1]._advance()
    futures = [w.get_future() for w in works]
    done = [f.wait()[0] is a for f, a in zip(futures, arrays, strict=True)]
    return [float(a[0]) for a in arrays], done, _get_default_group()._worker is None


def test_stepped_all_reduces_run_in_the_calling_thread():
    for values, same_outputs, no_worker in spawn_ranks(only_stepped, 2):
        assert values == [3.0, 5.0, 7.0]
        assert same_outputs == [True] * 3  # the future's value is the output list
        assert no_worker


def mixed_order(rank: int, n: int) -> list[float]:
    """Rank 0 mixes stepped, ordinary async and synchronous ops; rank 1 issues the same
    collectives as ordinary ones. Same sequence on both: the values say it ran in order."""
    a, b, c, d = (np.full(30_000, (rank + 1.0) * k) for k in (1, 10, 100, 1000))
    if rank == 0:
        wa = stepped(a)
        wb = dist.all_reduce(b, async_op=True)  # queued behind a: the worker runs both
        wc = stepped(c)  # behind an ordinary op: an ordinary async op itself
        dist.all_reduce(d)  # waits for everything before it
        for w in (wa, wb, wc):
            w.wait()
    else:
        works = [dist.all_reduce(x, async_op=True) for x in (a, b, c)]
        dist.all_reduce(d)
        for w in works:
            w.wait()
    return [float(x[0]) for x in (a, b, c, d)]


def test_stepped_and_ordinary_ops_keep_issue_order():
    assert spawn_ranks(mixed_order, 2) == [[3.0, 30.0, 300.0, 3000.0]] * 2


def sync_after_stepped(rank: int, n: int) -> tuple[list[float], bool]:
    """A synchronous op issued while only stepped ops are queued finishes them in the
    calling thread, then runs there too: still no worker thread."""
    a, b = np.full(20_000, rank + 1.0), np.full(3, rank + 10.0)
    w = stepped(a)
    dist.all_reduce(b)
    assert w.is_completed()
    return [float(a[0]), float(b[0])], _get_default_group()._worker is None


def test_synchronous_op_finishes_the_stepped_ones_first():
    assert spawn_ranks(sync_after_stepped, 3) == [([6.0, 33.0], True)] * 3


def timed_wait(rank: int, n: int) -> tuple[float, bool]:
    """A wait with a timeout hands an unfinished stepped op to the worker thread (it must
    not block past the timeout in a step of its own). Rank 1 enters the all-reduce only
    once rank 0's is issued, so rank 0's cannot finish before its wait."""
    a = np.full(10, rank + 1.0)
    store = _get_default_store()
    if rank == 0:
        w = stepped(a)
        unfinished = not w.is_completed()
        store.set("issued", b"1")
        assert w.wait(timeout=60)
        return float(a[0]), unfinished and _get_default_group()._worker is not None
    store.wait(["issued"])
    dist.all_reduce(a)
    return float(a[0]), _get_default_group()._worker is None


def test_timed_wait_hands_the_op_to_the_worker():
    assert spawn_ranks(timed_wait, 2) == [(3.0, True)] * 2


def peer_dies(rank: int, n: int) -> str:
    a = np.ones(50_000)
    dist.all_reduce(a)
    if rank == 1:
        os._exit(3)
    w = stepped(a)
    try:
        w.wait()
    except DistNetworkError as e:
        return str(e)
    return "no error"


def test_a_dead_peer_fails_the_stepped_op_naming_it():
    res = spawn_ranks(peer_dies, 2, may_die=[1], group_timeout=15)
    assert res[1] is None
    assert "rank 1" in res[0], res[0]


def test_threaded_backend_steps_too():
    """The threaded backend (ranks as threads) is the same group class: stepped ops work
    there, with each rank thread advancing its own."""

    def body(rank: int, n: int) -> tuple[float, bool]:
        a = np.full(70_000, float(rank))
        w = stepped(a)
        while not w._advance():
            pass
        return float(a[-1]), _get_default_group()._worker is None

    assert spawn_threads(body, 3) == [(3.0, True)] * 3
