"""torch 2.13's names all_gather_single / reduce_scatter_single (torch now warns that
all_gather_into_tensor / reduce_scatter_tensor are deprecated): the same operations under the
module API, on rank threads, with torch's signatures."""

from __future__ import annotations

import inspect

import numpy as np
import pytest

import mpdist as dist
from mpdist.testing import CollectiveMode, spawn_threads


def test_the_new_names_do_what_the_old_ones_do() -> None:
    def body(rank: int, world_size: int) -> tuple[np.ndarray, ...]:
        mine = np.arange(4.0).reshape(2, 2) + 10 * rank
        gathered_new = np.zeros((2 * world_size, 2))
        gathered_old = np.zeros((2 * world_size, 2))
        dist.all_gather_single(gathered_new, mine)
        dist.all_gather_into_tensor(gathered_old, mine)
        big = np.arange(2.0 * world_size).reshape(world_size, 2) * (rank + 1)
        scattered_new, scattered_old = np.zeros((1, 2)), np.zeros((1, 2))
        work = dist.reduce_scatter_single(scattered_new, big, dist.ReduceOp.MAX, async_op=True)
        assert work is not None
        work.wait()
        dist.reduce_scatter_tensor(scattered_old, big, dist.ReduceOp.MAX)
        return gathered_new, gathered_old, scattered_new, scattered_old

    results = spawn_threads(body, 3)
    want_gather = np.concatenate([np.arange(4.0).reshape(2, 2) + 10 * r for r in range(3)])
    for rank, (g_new, g_old, s_new, s_old) in enumerate(results):
        np.testing.assert_array_equal(g_new, want_gather)
        np.testing.assert_array_equal(g_new, g_old)
        np.testing.assert_array_equal(s_new, [[2.0 * rank * 3, (2.0 * rank + 1) * 3]])
        np.testing.assert_array_equal(s_new, s_old)


def test_a_collective_mode_sees_one_op_under_torchs_name() -> None:
    seen: list[str] = []

    class Names(CollectiveMode):
        def __collective__(self, func, types, args=(), kwargs=None):  # type: ignore[no-untyped-def]
            seen.append(str(func))
            return func(*args, **(kwargs or {}))

    def body(rank: int, world_size: int) -> None:
        with Names():
            dist.all_gather_single(np.zeros(2), np.ones(1))
            dist.reduce_scatter_single(np.zeros(1), np.ones(2))

    spawn_threads(body, 2)
    # two rank threads: each sees its two ops once (the threads interleave)
    assert (
        sorted(seen)
        == ["c10d._allgather_base_.default"] * 2 + ["c10d._reduce_scatter_base_.default"] * 2
    )


def test_bad_arguments_are_refused_as_by_the_old_names() -> None:
    def body(rank: int, world_size: int) -> None:
        with pytest.raises(ValueError, match="world size"):
            dist.all_gather_single(np.zeros(3), np.ones(1))
        with pytest.raises(ValueError, match="world size"):
            dist.reduce_scatter_single(np.zeros(1), np.ones(3))

    spawn_threads(body, 2)


def test_signatures_are_torchs() -> None:
    torch = pytest.importorskip("torch")
    for name in ("all_gather_single", "reduce_scatter_single"):
        theirs = list(inspect.signature(getattr(torch.distributed, name)).parameters)
        assert list(inspect.signature(getattr(dist, name)).parameters) == theirs, name
