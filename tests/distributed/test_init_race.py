"""init_process_group from several threads at once: one default group per process, no leftovers."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from typing import Any

import numpy as np
import pytest

import mpdist.distributed as dist
from mpdist import aborts
from mpdist.backends.fake import FakeProcessGroup
from mpdist.distributed import _world as state
from mpdist.distributed import queries
from mpdist.distributed.debug import collective_trace
from mpdist.process_group import Backend, ProcessGroup
from mpdist.store import HashStore

TWICE = "trying to initialize the default process group twice!"
# a safety net only: the race is ordered by events, this bounds a regression's hang
GUARD_S = 20.0


def _reserved() -> bool:
    """Whether an init holds the process-wide default-group slot."""
    return state.process_reserved


def _registered() -> tuple[Any, ...]:
    """Everything the module API records about groups, process-wide."""
    return (
        state.process_world,
        _reserved(),
        tuple(aborts.targets()),
        dict(queries._named),
    )


@pytest.fixture(autouse=True)
def clean_module_state() -> Iterator[None]:
    """Each test starts and ends with no default group and nothing registered."""
    assert not dist.is_initialized()
    before = _registered()
    yield
    while state.process_world is not None:  # a failing test may leave one behind
        dist.destroy_process_group()
    assert _registered() == before


class _Gate:
    """A fake-backend creator whose first call blocks until ``release`` (later calls do not)."""

    def __init__(self) -> None:
        self.entered = threading.Event()
        self.release = threading.Event()
        self.calls = 0
        self._lock = threading.Lock()

    def __call__(self, options: Any, pg_options: Any) -> ProcessGroup:
        with self._lock:
            self.calls += 1
            first = self.calls == 1
        if first:
            self.entered.set()
            assert self.release.wait(GUARD_S), "the test never released the first init"
        return FakeProcessGroup._create_internal(options.group_rank, options.group_size, pg_options)


def _init_in_thread(results: dict[str, Any], key: str) -> threading.Thread:
    def run() -> None:
        try:
            dist.init_process_group("fake", rank=0, world_size=2)
            results[key] = "ok"
        except BaseException as e:  # noqa: BLE001  (recorded for the main thread to assert on)
            results[key] = e

    t = threading.Thread(target=run, name=f"init-race-{key}")
    t.start()
    return t


def test_two_threads_racing_init_exactly_one_wins(monkeypatch: pytest.MonkeyPatch) -> None:
    gate = _Gate()
    monkeypatch.setitem(Backend._plugins, "fake", (gate, True))
    results: dict[str, Any] = {}
    first = _init_in_thread(results, "first")
    second = None
    try:
        assert gate.entered.wait(GUARD_S)
        # the first init is inside the group construction (its check long passed): the
        # second must fail at once, without waiting for the first build to finish
        second = _init_in_thread(results, "second")
        second.join(GUARD_S)
        assert not second.is_alive(), "the second init waited for the first one's build"
        assert first.is_alive() and "first" not in results  # still inside its build
    finally:
        gate.release.set()
        first.join(GUARD_S)
        if second is not None:
            second.join(GUARD_S)
    assert isinstance(results["second"], ValueError), results
    assert str(results["second"]) == TWICE
    assert results["first"] == "ok"
    assert gate.calls == 1  # the loser never built a group
    assert dist.is_initialized() and dist.get_world_size() == 2
    pg = dist.group.WORLD
    assert isinstance(pg, FakeProcessGroup) and any(t.obj is pg for t in aborts.targets())
    # the winner's group is the one in use, from any thread
    out = [np.zeros(2), np.zeros(2)]
    dist.all_gather(out, np.arange(2.0))
    assert all(np.array_equal(o, [0.0, 1.0]) for o in out)
    dist.destroy_process_group()
    assert not dist.is_initialized()


def test_second_call_while_first_builds_same_thread_error_as_sequential(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The racing loser's error is the sequential one, text for text."""
    dist.init_process_group("fake", rank=0, world_size=1)
    with pytest.raises(ValueError) as sequential:
        dist.init_process_group("fake", rank=0, world_size=1)
    dist.destroy_process_group()
    assert str(sequential.value) == TWICE

    gate = _Gate()
    monkeypatch.setitem(Backend._plugins, "fake", (gate, True))
    results: dict[str, Any] = {}
    first = _init_in_thread(results, "first")
    try:
        assert gate.entered.wait(GUARD_S)
        # the main thread is the second caller: a wrong fix that waits would hang here,
        # so the build is released only after this call has returned
        with pytest.raises(ValueError) as racing:
            dist.init_process_group("fake", rank=1, world_size=2)
        assert not dist.is_initialized()  # nothing published while the first still builds
    finally:
        gate.release.set()
        first.join(GUARD_S)
    assert type(racing.value) is type(sequential.value)
    assert str(racing.value) == str(sequential.value)
    assert results["first"] == "ok" and dist.get_rank() == 0


class _Boom(RuntimeError):
    pass


def test_failed_construction_frees_the_slot(monkeypatch: pytest.MonkeyPatch) -> None:
    def failing(options: Any, pg_options: Any) -> ProcessGroup:
        raise _Boom("the backend could not build its group")

    with monkeypatch.context() as m:
        m.setitem(Backend._plugins, "fake", (failing, True))
        with pytest.raises(_Boom):
            dist.init_process_group("fake", rank=0, world_size=2)
    assert not dist.is_initialized()
    assert not _reserved() and not aborts.targets()
    # the slot is free: a new init succeeds and is the default group
    dist.init_process_group("fake", rank=1, world_size=2)
    assert dist.get_rank() == 1 and isinstance(dist.group.WORLD, FakeProcessGroup)
    dist.destroy_process_group()


def test_bad_arguments_after_the_check_free_the_slot() -> None:
    with pytest.raises(ValueError, match="world_size must be positive"):
        dist.init_process_group("fake", rank=0, world_size=0, store=HashStore())
    with pytest.raises(ValueError, match="out of range"):
        dist.init_process_group("fake", rank=3, world_size=2, store=HashStore())
    assert not _reserved()
    dist.init_process_group("fake", rank=0, world_size=1)
    dist.destroy_process_group()


class _NoNamePG(ProcessGroup):
    """A Python group whose setGroupName fails after the creator returned it."""

    shut = 0

    def setGroupName(self, name: str) -> None:  # noqa: N802 (torch's name)
        raise _Boom(f"cannot take the name {name!r}")

    def shutdown(self) -> None:
        type(self).shut += 1


def test_group_failing_after_creation_is_shut_down_and_unregistered(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    def creator(options: Any, pg_options: Any) -> ProcessGroup:
        return _NoNamePG(options.group_rank, options.group_size)

    _NoNamePG.shut = 0
    with monkeypatch.context() as m:
        m.setitem(Backend._plugins, "fake", (creator, True))
        with pytest.raises(_Boom):
            dist.init_process_group("fake", rank=0, world_size=1)
    # before: the store stayed in the "being built" table (the trace named a group being built)
    assert not aborts.targets() and collective_trace() == "no collective entered"
    assert _NoNamePG.shut == 1
    dist.init_process_group("fake", rank=0, world_size=1)
    dist.destroy_process_group()


def _threaded_rank(store: HashStore, rank: int, out: dict[int, Any], barrier: Any) -> None:
    try:
        dist.init_process_group("threaded", rank=rank, world_size=2, store=store)
        try:
            barrier.wait(GUARD_S)  # both ranks hold their thread-local default group now
            with pytest.raises(ValueError) as again:
                dist.init_process_group("threaded", rank=rank, world_size=2, store=store)
            a = np.full(3, float(rank + 1))
            dist.all_reduce(a)
            out[rank] = (dist.get_rank(), a.copy(), str(again.value))
        finally:
            dist.destroy_process_group()
    except BaseException as e:  # noqa: BLE001  (asserted on by the main thread)
        out[rank] = e


def test_threaded_backend_each_thread_its_own_default_group() -> None:
    store = HashStore()
    out: dict[int, Any] = {}
    barrier = threading.Barrier(2)
    threads = [
        threading.Thread(target=_threaded_rank, args=(store, r, out, barrier), name=f"rank-{r}")
        for r in range(2)
    ]
    for t in threads:
        t.start()
    for t in threads:
        t.join(GUARD_S)
    assert not any(t.is_alive() for t in threads)
    for r in range(2):
        assert not isinstance(out[r], BaseException), out[r]
        got_rank, a, again = out[r]
        assert got_rank == r and np.array_equal(a, np.full(3, 3.0)) and again == TWICE
    assert not dist.is_initialized()  # the main thread never had one
