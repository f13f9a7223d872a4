"""mpdist.testing.CollectiveMode: a context manager that sees each collective of its thread, by torch's name."""

from __future__ import annotations

import threading
from typing import Any

import numpy as np
import pytest

import mpdist as dist
from mpdist import ops
from mpdist.distributed import dispatch
from mpdist.testing import CollectiveMode, spawn_threads


class Names(CollectiveMode):
    """Notes each op's name (and its name object), then runs it."""

    def __init__(self) -> None:
        self.seen: list[str] = []
        self.packets: list[Any] = []

    def __collective__(self, func: Any, types: Any, args: Any = (), kwargs: Any = None) -> Any:
        self.seen.append(str(func))
        self.packets.append(func._overloadpacket)
        return func(*args, **(kwargs or {}))


def issue_several(rank: int, world_size: int) -> list[float]:
    """all_reduce, broadcast, all_gather, reduce_scatter_tensor, a send/recv pair, barrier."""
    a = np.array([rank + 1.0])
    dist.all_reduce(a)
    b = np.array([float(rank)])
    dist.broadcast(b, src=world_size - 1)
    gathered = [np.zeros(1) for _ in range(world_size)]
    dist.all_gather(gathered, np.array([rank * 10.0]))
    shard = np.zeros(1)
    dist.reduce_scatter_tensor(shard, np.arange(world_size, dtype=np.float64))
    if rank == 0:
        dist.send(np.array([7.0]), dst=1)
    elif rank == 1:
        got = np.zeros(1)
        dist.recv(got, src=0)
        assert got[0] == 7.0
    dist.barrier()
    return [a[0], b[0], *(g[0] for g in gathered), shard[0]]


COMMON = [
    "c10d.allreduce_.default",
    "c10d.broadcast_.default",
    "c10d.allgather_.default",
    "c10d._reduce_scatter_base_.default",
]


def expected_values(rank: int, n: int) -> list[float]:
    return [n * (n + 1) / 2, n - 1.0, *(10.0 * r for r in range(n)), float(n * rank)]


def _check_seen(mode: Names, rank: int) -> None:
    p2p = ["c10d.send.default"] if rank == 0 else ["c10d.recv_.default"]
    assert mode.seen == [*COMMON, *p2p, "c10d.barrier.default"]
    assert mode.packets[0] is ops.c10d.allreduce_
    assert mode.packets[3] is ops.c10d._reduce_scatter_base_


@pytest.mark.mpdist(world_size=2)
def test_a_mode_sees_the_module_api_in_order_on_rank_processes(rank: int, world_size: int) -> None:
    with Names() as mode:
        values = issue_several(rank, world_size)
    _check_seen(mode, rank)
    assert values == expected_values(rank, world_size)  # the collectives still ran
    assert dispatch.active == 0


def test_a_mode_sees_the_module_api_in_order_on_rank_threads() -> None:
    def rank_fn(rank: int, n: int) -> None:
        with Names() as mode:
            values = issue_several(rank, n)
        _check_seen(mode, rank)
        assert values == expected_values(rank, n)

    spawn_threads(rank_fn, 2)


def test_the_default_mode_passes_collectives_through() -> None:
    def rank_fn(rank: int, n: int) -> list[float]:
        with CollectiveMode():
            return issue_several(rank, n)

    assert spawn_threads(rank_fn, 2) == [expected_values(r, 2) for r in range(2)]


def test_a_mode_can_change_what_is_sent_or_keep_it_off_the_wire() -> None:
    class Doubles(CollectiveMode):
        def __collective__(self, func: Any, types: Any, args: Any = (), kwargs: Any = None) -> Any:
            if str(func) == "c10d.allreduce_.default":
                args[0][...] *= 2
                return func(*args, **(kwargs or {}))
            return None  # anything else: not run at all

    def rank_fn(rank: int, n: int) -> list[float]:
        a, b = np.array([rank + 1.0]), np.array([float(rank)])
        with Doubles():
            dist.all_reduce(a)
            dist.broadcast(b, src=0)  # swallowed on both ranks
        return [a[0], b[0]]

    assert spawn_threads(rank_fn, 2) == [[6.0, 0.0], [6.0, 1.0]]


def test_entering_a_mode_again_stacks_it_as_torch_does() -> None:
    # torch's TorchDispatchMode entered twice (nested) sees each op twice; so does a
    # CollectiveMode. Exited, it can be entered again, and sees only what comes then.
    def rank_fn(rank: int, n: int) -> tuple[list[str], list[str]]:
        mode = Names()
        a = np.ones(1)
        with mode, mode:
            dist.all_reduce(a)
        first = list(mode.seen)
        mode.seen.clear()
        dist.barrier()  # no mode: unseen
        with mode:
            dist.broadcast(a, src=0)
        return first, mode.seen

    for first, second in spawn_threads(rank_fn, 2):
        assert first == ["c10d.allreduce_.default"] * 2
        assert second == ["c10d.broadcast_.default"]


def test_nested_modes_see_an_op_innermost_first() -> None:
    order: list[str] = []

    class Tag(CollectiveMode):
        def __init__(self, tag: str) -> None:
            self.tag = tag

        def __collective__(self, func: Any, types: Any, args: Any = (), kwargs: Any = None) -> Any:
            order.append(self.tag)
            return func(*args, **(kwargs or {}))

    def rank_fn(rank: int, n: int) -> float:
        a = np.ones(1)
        with Tag("outer"):
            with Tag("inner"):
                dist.all_reduce(a)
            dist.all_reduce(a)
        return float(a[0])

    assert spawn_threads(rank_fn, 2) == [4.0, 4.0]
    assert sorted(order) == sorted(["inner", "outer", "outer"] * 2)
    assert order.index("inner") < order.index("outer")


def test_an_exception_inside_the_block_or_the_mode_leaves_no_mode_behind() -> None:
    class Refuses(CollectiveMode):
        def __collective__(self, func: Any, types: Any, args: Any = (), kwargs: Any = None) -> Any:
            raise ValueError(f"refused {func}")

    def rank_fn(rank: int, n: int) -> None:
        outer = Names()
        with outer:
            with pytest.raises(KeyError), Names():
                raise KeyError("in the block")
            with pytest.raises(ValueError, match="refused c10d.allreduce_.default"), Refuses():
                dist.all_reduce(np.ones(1))
            # the outer mode is the innermost again, and works
            a = np.ones(1)
            dist.all_reduce(a)
            assert a[0] == 2.0
        assert outer.seen == ["c10d.allreduce_.default"]  # the refused op never reached it
        assert not dispatch.intercepting()

    spawn_threads(rank_fn, 2)
    assert dispatch.active == 0


def test_modes_are_per_thread_and_exit_in_their_own_thread() -> None:
    def rank_fn(rank: int, n: int) -> list[str]:
        a = np.ones(1)
        if rank == 1:
            with Names() as mode:
                dist.all_reduce(a)
            return mode.seen
        dist.all_reduce(a)
        return []

    assert spawn_threads(rank_fn, 2) == [[], ["c10d.allreduce_.default"]]

    mode = Names()
    mode.__enter__()
    errors: list[BaseException] = []

    def exit_elsewhere() -> None:
        try:
            mode.__exit__(None, None, None)
        except RuntimeError as exc:
            errors.append(exc)

    t = threading.Thread(target=exit_elsewhere)
    t.start()
    t.join()
    mode.__exit__(None, None, None)
    assert len(errors) == 1 and "in the thread that entered them" in str(errors[0])
    assert dispatch.active == 0


def test_a_mode_entered_out_of_order_is_refused() -> None:
    first, second = Names(), Names()
    first.__enter__()
    second.__enter__()
    with pytest.raises(RuntimeError, match="reverse order"):
        first.__exit__(None, None, None)
    second.__exit__(None, None, None)
    first.__exit__(None, None, None)
    assert dispatch.active == 0
