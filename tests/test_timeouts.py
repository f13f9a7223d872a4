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
