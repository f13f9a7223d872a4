"""A rank that cannot be started: the error comes out, and no process, pipe or fd stays behind."""

from __future__ import annotations

import gc
import multiprocessing
import pickle
import threading
from collections.abc import Iterator
from typing import Any

import psutil
import pytest
from _harness_helpers import alive

from mpdist.testing import _coordinator, _pool
from mpdist.testing._worker import TaskSpec


def blocked(rank: int, world_size: int) -> None:
    """A rank that never finishes on its own: only the harness can end it."""
    threading.Event().wait()


class StartFailure(OSError):
    """The error the injected start raises."""


@pytest.fixture
def ctx() -> Iterator[Any]:
    """The harness's forkserver context, its server already running.

    The server (and multiprocessing's resource tracker) hold fds in this process for the
    whole session; starting them before the fd count is taken keeps them out of it.
    """
    context = _coordinator.get_context("forkserver", [__name__])
    multiprocessing.forkserver.ensure_running()
    yield context


def fail_start_of(
    monkeypatch: pytest.MonkeyPatch, ctx: Any, n: int, error: BaseException
) -> list[int]:
    """Make the ``n``-th ``Process.start()`` (0-based) raise ``error``; returns the pids started."""
    started: list[int] = []
    real_start = ctx.Process.start

    def start(self: Any) -> None:
        if len(started) == n:
            raise error
        real_start(self)
        started.append(self.pid)

    monkeypatch.setattr(ctx.Process, "start", start)
    return started


def spec_for(tmp_path: Any, world_size: int) -> TaskSpec:
    return TaskSpec(
        kind="call",
        module=__name__,
        path=__file__,
        qualname="blocked",
        method="blocked",
        world_size=world_size,
        file_name=str(tmp_path / "store"),
        workdir=str(tmp_path),
        test_id="test_start_failure::blocked",
        funcargs=pickle.dumps(()),
    )


def num_fds() -> int:
    gc.collect()  # garbage from earlier tests must not close fds in the middle of the count
    return psutil.Process().num_fds()


@pytest.mark.parametrize("failing", [0, 2])
def test_a_rank_that_cannot_start_leaves_nothing_behind(
    ctx: Any, tmp_path: Any, monkeypatch: pytest.MonkeyPatch, failing: int
) -> None:
    error = StartFailure(f"cannot start rank {failing}")
    started = fail_start_of(monkeypatch, ctx, failing, error)
    before = num_fds()
    with pytest.raises(StartFailure) as info:
        _coordinator.RankSet.start_fresh(spec_for(tmp_path, 3), ctx)
    assert info.value is error
    assert len(started) == failing
    assert alive(started) == []
    # The traceback still references the frames' locals: whatever must be closed was
    # closed explicitly, not by the garbage collector.
    assert psutil.Process().num_fds() == before


def test_a_spec_that_cannot_be_pickled_leaves_no_pipe_open(ctx: Any, tmp_path: Any) -> None:
    spec = spec_for(tmp_path, 2)
    spec.env = {"UNPICKLABLE": lambda: None}  # type: ignore[dict-item]
    before = num_fds()
    with pytest.raises((pickle.PicklingError, AttributeError, TypeError)) as info:
        _coordinator.RankSet.start_fresh(spec, ctx)
    assert "lambda" in str(info.value)
    # ``info`` keeps the failed frames (and their locals) alive, as a caller's handler would.
    assert psutil.Process().num_fds() == before


def test_a_pool_whose_worker_cannot_start_leaves_nothing_behind(
    ctx: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    error = StartFailure("cannot start worker 1")
    started = fail_start_of(monkeypatch, ctx, 1, error)
    before = num_fds()
    with pytest.raises(StartFailure) as info:
        _pool.WorkerPool(ctx, 3)
    assert info.value is error
    assert len(started) == 1
    assert alive(started) == []
    assert psutil.Process().num_fds() == before
