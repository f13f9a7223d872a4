"""Fixtures for the process-group tests: run a function in N rank threads (threaded backend)."""

from __future__ import annotations

import threading
import traceback
from collections.abc import Callable
from datetime import timedelta
from typing import Any

import pytest

import mpdist as dist
from mpdist.distributed import _abort_all_groups
from mpdist.store import HashStore


def run_threads(
    fn: Callable[..., Any], world_size: int, *args: Any, timeout: float = 20.0, init: bool = True
) -> list[Any]:
    """``fn(rank, world_size, *args)`` in ``world_size`` threads, each the rank of a threaded group.

    The first rank to raise aborts every group, so the others fail fast instead of
    waiting out the timeout; all tracebacks are reported.
    """
    store = HashStore()
    results: list[Any] = [None] * world_size
    errors: list[tuple[int, str]] = []  # in the order they happened

    def body(rank: int) -> None:
        try:
            if init:
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
                if dist.is_initialized():
                    dist.destroy_process_group()
        except BaseException:
            errors.append((rank, traceback.format_exc()))
            _abort_all_groups(f"rank {rank} failed")

    threads = [threading.Thread(target=body, args=(r,), name=f"rank{r}") for r in range(world_size)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout + 10)
    assert not any(t.is_alive() for t in threads), "a rank thread hung"
    if errors:
        rank, tb = errors[0]  # the others were most likely aborted because of it
        others = sorted(r for r, _ in errors[1:])
        raise AssertionError(f"--- rank {rank} failed first (then ranks {others}):\n{tb}")
    return results


@pytest.fixture
def threads() -> Callable[..., list[Any]]:
    """The ``run_threads`` helper, with a check that no mpdist thread outlives the test."""
    before = set(threading.enumerate())
    yield run_threads
    leaked = [t for t in threading.enumerate() if t not in before and t.name.startswith("mpdist")]
    assert not leaked, f"leaked threads: {leaked}"
