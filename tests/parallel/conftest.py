"""Fixtures for the parallel tests: every test must leave no thread behind.

The rank threads themselves come from the harness (``mpdist.testing.spawn_threads``),
which aborts the other ranks on the first failure and names stuck ranks on timeout.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator

import pytest

# How long a thread that is already finishing (a group's worker after destroy) may take.
JOIN_GRACE = 5.0


@pytest.fixture(autouse=True)
def no_thread_left_behind() -> Iterator[None]:
    """Fail the test if a thread it started (rank, group worker, ...) outlives it."""
    before = set(threading.enumerate())
    yield
    leaked = [t for t in threading.enumerate() if t not in before]
    for t in leaked:
        t.join(timeout=JOIN_GRACE)
    names = [t.name for t in leaked if t.is_alive()]
    assert not names, f"threads left behind: {names}"
