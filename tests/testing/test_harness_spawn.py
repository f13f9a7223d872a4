"""spawn_ranks: a module-level function in N fresh processes, return values back in the parent."""

from __future__ import annotations

import os

import numpy as np
import pytest

from mpdist import distributed as dist
from mpdist.testing import MultiProcessFailure, spawn_ranks, spawn_threads


def summing(rank: int, world_size: int, n: int) -> np.ndarray:
    a = np.full(n, rank, dtype=np.int64)
    dist.all_reduce(a)
    return a


def failing(rank: int, world_size: int) -> None:
    if rank == 1:
        values = [rank, world_size]
        assert values == [0, world_size]


def dying(rank: int, world_size: int) -> int:
    if rank == 1:
        os._exit(0)
    return rank + 100


def test_return_values_come_back_in_rank_order() -> None:
    results = spawn_ranks(summing, 3, 4)
    assert len(results) == 3
    for r in results:
        np.testing.assert_array_equal(r, np.full(4, 3))


def test_a_failing_rank_fails_the_call_with_its_traceback() -> None:
    with pytest.raises(MultiProcessFailure) as info:
        spawn_ranks(failing, 2, backend=None)
    text = str(info.value)
    assert "=== rank 1: failed: AssertionError: assert [1, 2] == [0, 2]" in text
    assert "At index 0 diff: 1 != 0" in text  # the rank kept pytest's assertion rewriting
    assert "=== rank 0: passed" in text


def test_ranks_allowed_to_die() -> None:
    assert spawn_ranks(dying, 2, backend=None, may_die=[1]) == [100, None]
    with pytest.raises(MultiProcessFailure, match="exited without reporting a result"):
        spawn_ranks(dying, 2, backend=None)


def test_bad_arguments_are_refused_before_anything_starts() -> None:
    with pytest.raises(ValueError, match="module level"):
        spawn_ranks(lambda rank, ws: None, 2)
    with pytest.raises(ValueError, match="world_size"):
        spawn_ranks(summing, 0, 1)
    with pytest.raises(ValueError, match="may_die"):
        spawn_ranks(dying, 2, may_die=[5])
    with pytest.raises(TypeError, match="callable"):
        spawn_ranks("summing", 2)


def threaded_sum(rank: int, world_size: int) -> float:
    a = np.full(2, float(rank))
    dist.all_reduce(a)
    return float(a[0])


def threaded_failure(rank: int, world_size: int) -> None:
    if rank == 0:
        raise KeyError("no such key")
    dist.barrier()


def test_spawn_threads_values_and_failures() -> None:
    assert spawn_threads(threaded_sum, 3) == [3.0, 3.0, 3.0]
    with pytest.raises(MultiProcessFailure) as info:
        spawn_threads(threaded_failure, 2)
    text = str(info.value)
    assert "=== rank 0: failed: KeyError: 'no such key'" in text
    assert "in thread 'mpdist-rank-0':" in text
    # Rank 1 was stopped (aborted, or it saw rank 0's group go away), not left hanging.
    assert "=== rank 1: failed" in text and "timed out" not in text
