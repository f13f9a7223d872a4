"""Fixtures for the parallel tests: ``run_threads`` runs a function in N rank threads over
the threaded backend."""

from __future__ import annotations

import threading
from collections.abc import Callable
from datetime import timedelta
from typing import Any

import pytest

import mpdist.distributed as dist
from mpdist.store import HashStore


def run_threads(
    world_size: int, fn: Callable[..., Any], *args: Any, timeout: float = 60.0
) -> list[Any]:
    """Call ``fn(rank, world_size, *args)`` in ``world_size`` threads, each with a threaded
    default group; return the results by rank, re-raising the first failure."""
    store = HashStore()
    results: list[Any] = [None] * world_size
    errors: list[BaseException | None] = [None] * world_size

    def body(rank: int) -> None:
        try:
            dist.init_process_group(
                "threaded",
                rank=rank,
                world_size=world_size,
                store=store,
                timeout=timedelta(seconds=timeout),
            )
            try:
                results[rank] = fn(rank, world_size, *args)
            finally:
                dist.destroy_process_group()
        except BaseException as exc:  # reported to the test below
            errors[rank] = exc
            dist._abort_all_groups(f"rank {rank} failed: {exc!r}")

    threads = [threading.Thread(target=body, args=(r,), name=f"rank{r}") for r in range(world_size)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    for rank, err in enumerate(errors):
        if err is not None:
            raise AssertionError(f"rank {rank} failed: {err!r}") from err
    return results


@pytest.fixture(name="run_threads")
def run_threads_fixture() -> Callable[..., list[Any]]:
    """``run_threads(world_size, fn, *args)``; also checks that no rank thread outlives it."""
    before = set(threading.enumerate())
    yield run_threads
    leaked = [t for t in threading.enumerate() if t not in before and t.is_alive()]
    for t in leaked:
        t.join(timeout=5)
    leaked = [t.name for t in leaked if t.is_alive()]
    assert not leaked, f"threads left behind: {leaked}"
