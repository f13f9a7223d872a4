"""One registry of what waits on other ranks, and an abort that sticks until cleared (mpdist.aborts)."""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np
import pytest

import mpdist as dist
from mpdist import aborts
from mpdist.distributed.debug import abort_all_groups, clear_abort, collective_trace
from mpdist.errors import DistBackendError
from mpdist.store import HashStore


@pytest.fixture(autouse=True)
def no_abort_left() -> Iterator[None]:
    assert aborts.reason() is None
    yield
    clear_abort()


class Target:
    def __init__(self) -> None:
        self.reasons: list[str] = []

    def abort(self, reason: str) -> None:
        self.reasons.append(reason)


def test_an_abort_reaches_registered_targets_and_later_ones_until_cleared() -> None:
    before, later, after_clear = Target(), Target(), Target()
    aborts.register(before, before.abort, "before")
    try:
        aborts.abort("stop")
        assert before.reasons == ["stop"] and aborts.reason() == "stop"
        aborts.register(later, later.abort, "later")  # aborted on registration
        assert later.reasons == ["stop"]
        aborts.clear()
        aborts.register(after_clear, after_clear.abort, "after")
        assert after_clear.reasons == []
        assert [t.label for t in aborts.targets()] == ["before", "later", "after"]
    finally:
        for obj in (before, later, after_clear):
            aborts.unregister(obj)
    assert aborts.targets() == []


def test_a_group_built_after_the_abort_fails_at_its_first_collective() -> None:
    abort_all_groups("the harness gave up")
    dist.init_process_group("threaded", store=HashStore(), rank=0, world_size=1)
    try:
        with pytest.raises(DistBackendError, match="the harness gave up"):
            dist.all_reduce(np.ones(2))
    finally:
        dist.destroy_process_group()
    clear_abort()
    dist.init_process_group("threaded", store=HashStore(), rank=0, world_size=1)
    try:
        a = np.ones(2)
        dist.all_reduce(a)
        assert a.tolist() == [1.0, 1.0]
        assert "all_reduce" in collective_trace()
    finally:
        dist.destroy_process_group()
    assert collective_trace() == "no collective entered"


def test_the_reason_must_be_text() -> None:
    with pytest.raises(TypeError, match="must be a str"):
        aborts.abort(3)  # type: ignore[arg-type]
