"""Fixtures for the parallel tests: every test must leave no thread behind.

The rank threads themselves come from the harness (``mpdist.testing.spawn_threads``),
which aborts the other ranks on the first failure and names stuck ranks on timeout.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from typing import Any

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


@pytest.fixture
def allreduce_calls(monkeypatch: pytest.MonkeyPatch) -> list[tuple[int, int]]:
    """(thread ident, element count) of every all-reduce the groups run, in the order they
    start: the thread is the one that starts the collective (``allreduce`` runs its
    ``allreduce_steps``; a stepped all-reduce starts in whichever thread advances it)."""
    import mpdist.algorithms as alg

    calls: list[tuple[int, int]] = []
    orig = alg.allreduce_steps
    lock = threading.Lock()

    def recording(comm: Any, array: Any, *args: Any, **kwargs: Any) -> Any:
        steps = orig(comm, array, *args, **kwargs)

        def started_here() -> Any:
            with lock:
                calls.append((threading.get_ident(), array.size))
            yield from steps

        return started_here()

    monkeypatch.setattr(alg, "allreduce_steps", recording)
    return calls


@pytest.fixture(params=["comm thread", "stepped"])
def ddp_progress(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> str:
    """Run the test with DDP's buckets reduced on the group's worker thread ("comm thread",
    chosen where the host has a core to spare) and advanced by the gradient hooks
    ("stepped", chosen where it has not)."""
    from mpdist.parallel import reducer

    pays = request.param == "comm thread"
    monkeypatch.setattr(reducer, "communication_thread_pays", lambda world_size: pays)
    return request.param
