"""Collective modes (mpdist.distributed.dispatch) see each collective a thread issues, by torch's name."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest

import mpdist as dist
from mpdist.distributed import dispatch
from mpdist.testing.multithreaded import spawn_threads


class Recorder:
    """Notes each op's name and runs it; ``skip`` names ops it swallows instead."""

    def __init__(self, skip: tuple[str, ...] = ()) -> None:
        self.seen: list[str] = []
        self.skip = skip

    def __collective__(
        self,
        func: dispatch.CollectiveOp,
        types: tuple[type, ...],
        args: tuple[Any, ...] = (),
        kwargs: dict[str, Any] | None = None,
    ) -> Any:
        self.seen.append(str(func))
        if str(func) in self.skip:
            return None
        return func(*args, **(kwargs or {}))

    def __enter__(self) -> Recorder:
        dispatch.push(self)
        return self

    def __exit__(self, *exc: object) -> None:
        dispatch.pop(self)


def test_a_mode_sees_every_collective_in_order_and_they_still_run() -> None:
    def rank(r: int, n: int) -> tuple[list[str], list[float]]:
        a = np.array([r + 1.0])
        outs = [np.zeros(1) for _ in range(n)]
        with Recorder() as mode:
            dist.all_reduce(a)
            dist.broadcast(a, src=1)
            dist.all_gather(outs, np.array([float(r)]))
            dist.barrier()
            if r == 0:
                dist.send(np.array([7.0]), dst=1)
            else:
                got = np.zeros(1)
                dist.recv(got, src=0)
                assert got[0] == 7.0
        return mode.seen, [a[0], *(o[0] for o in outs)]

    (seen0, values0), (seen1, values1) = spawn_threads(rank, 2)
    common = [
        "c10d.allreduce_.default",
        "c10d.broadcast_.default",
        "c10d.allgather_.default",
        "c10d.barrier.default",
    ]
    assert seen0 == [*common, "c10d.send.default"]
    assert seen1 == [*common, "c10d.recv_.default"]
    assert values0 == values1 == [3.0, 0.0, 1.0]
    assert dispatch.active == 0


def test_nested_modes_inner_first_then_outer_then_the_wire() -> None:
    order: list[str] = []

    class Tagged(Recorder):
        def __init__(self, tag: str) -> None:
            super().__init__()
            self.tag = tag

        def __collective__(self, func: Any, types: Any, args: Any = (), kwargs: Any = None) -> Any:
            order.append(f"{self.tag}:{func}")
            return super().__collective__(func, types, args, kwargs)

    def rank(r: int, n: int) -> float:
        a = np.array([1.0])
        with Tagged("outer"), Tagged("inner"):
            dist.all_reduce(a)
        dist.all_reduce(a)  # no mode: not seen
        return float(a[0])

    assert spawn_threads(rank, 2) == [4.0, 4.0]
    # two ranks, each: inner, then outer (the inner mode's call of func), then the wire
    assert order == ["inner:c10d.allreduce_.default", "outer:c10d.allreduce_.default"] * 2


def test_a_mode_that_does_not_call_the_op_keeps_it_off_the_wire() -> None:
    def rank(r: int, n: int) -> float:
        a = np.array([r + 1.0])
        with Recorder(skip=("c10d.allreduce_.default",)):
            dist.all_reduce(a)  # swallowed on both ranks: nothing is sent
        return float(a[0])

    assert spawn_threads(rank, 2) == [1.0, 2.0]


def test_modes_belong_to_the_thread_that_entered_them() -> None:
    # The ranks of the threaded backend are threads: rank 0's mode sees rank 0's ops only.
    def rank(r: int, n: int) -> list[str]:
        a = np.ones(1)
        if r == 0:
            with Recorder() as mode:
                dist.all_reduce(a)
            return mode.seen
        dist.all_reduce(a)
        return []

    assert spawn_threads(rank, 2) == [["c10d.allreduce_.default"], []]


def test_object_collectives_show_the_array_collectives_they_are_made_of() -> None:
    def rank(r: int, n: int) -> list[str]:
        got: list[Any] = [None] * n
        with Recorder() as mode:
            dist.all_gather_object(got, {"rank": r})
        assert got == [{"rank": 0}, {"rank": 1}]
        return mode.seen

    for seen in spawn_threads(rank, 2):
        assert seen and set(seen) <= {"c10d.allgather_.default", "c10d.allreduce_.default"}


def test_modes_are_checked_on_entry_and_exit() -> None:
    with pytest.raises(TypeError, match="__collective__"):
        dispatch.push(object())  # type: ignore[arg-type]
    first, second = Recorder(), Recorder()
    dispatch.push(first)
    dispatch.push(second)
    with pytest.raises(RuntimeError, match="reverse order"):
        dispatch.pop(first)
    dispatch.pop(second)
    dispatch.pop(first)
    assert dispatch.active == 0 and not dispatch.intercepting()
