"""One rule for timeout values, the same for stores and Work waits (mpdist.timeouts)."""

from __future__ import annotations

import math
from datetime import timedelta

import pytest

from mpdist.process_group import Future, Work
from mpdist.store import HashStore
from mpdist.timeouts import GROUP_TIMEOUT, STORE_TIMEOUT, TEST_TIMEOUT, seconds


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        (timedelta(seconds=2), 2.0),
        (1.5, 1.5),
        (3, 3.0),
        (0, None),
        (timedelta(0), None),
        (timedelta.max, None),
        (1e12, None),
    ],
)
def test_durations_and_forever(value: object, expected: float | None) -> None:
    assert seconds(value) == expected


@pytest.mark.parametrize("value", [-1, timedelta(seconds=-1), math.nan])
def test_negative_and_nan_are_value_errors(value: object) -> None:
    with pytest.raises(ValueError, match="deadline must be >= 0"):
        seconds(value, "deadline")


@pytest.mark.parametrize("value", [None, "5", True])
def test_other_types_are_type_errors(value: object) -> None:
    with pytest.raises(TypeError, match="timeout must be a datetime.timedelta"):
        seconds(value)


def test_each_kind_of_wait_has_its_default() -> None:
    assert HashStore().timeout == STORE_TIMEOUT == timedelta(seconds=300)
    assert timedelta(minutes=30) == GROUP_TIMEOUT
    assert timedelta(seconds=300) == TEST_TIMEOUT


def test_work_waits_follow_the_rule() -> None:
    fut = Future()
    fut.set_result([1])
    work = Work(fut)
    assert work.wait(0) and work.wait(timedelta(0)) and work.wait(None)  # done: no waiting
    with pytest.raises(ValueError):
        work.wait(-1)


def _reduce_after_a_pause(rank: int, world_size: int) -> list[float]:
    import time

    import numpy as np

    import mpdist as dist

    if rank == 1:
        time.sleep(0.2)  # rank 0 waits for it: a 0 timeout must not end that wait
    a = np.ones(2)
    dist.all_reduce(a)
    return a.tolist()


def test_a_group_timeout_follows_the_rule() -> None:
    import mpdist as dist
    from mpdist.testing import spawn_threads

    # 0 is forever (it used to time out at the first wait), a negative timeout is refused.
    assert spawn_threads(_reduce_after_a_pause, 2, group_timeout=0) == [[2.0, 2.0]] * 2
    with pytest.raises(ValueError, match="must be >= 0"):
        dist.init_process_group(
            "threaded", store=HashStore(), rank=0, world_size=1, timeout=timedelta(seconds=-1)
        )
