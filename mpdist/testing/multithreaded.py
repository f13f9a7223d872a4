"""MultiThreadedTestCase: each rank is a thread of the test process, on the threaded backend.

As in PyTorch, the default group is already initialized when the test body
starts (``dist.get_rank() == self.rank``); ``self.rank`` is the calling
thread's rank. A failing thread is named in the report; a timeout names the
threads still running, with their stacks and the last collective entered.
"""

from __future__ import annotations

import functools
import os
import sys
import threading
import time
import traceback
import unittest
from collections.abc import Callable
from datetime import timedelta
from typing import Any, ClassVar

import mpdist
from mpdist import distributed as dist
from mpdist.store import HashStore
from mpdist.testing import _config
from mpdist.testing._asserts import ArrayAssertions
from mpdist.testing._coordinator import Outcome, RankResult, is_consequence
from mpdist.testing._report import raise_for, rerun_command
from mpdist.testing._worker import collective_trace, format_exception, seed_everything

# After the first failure, how long the other threads get to notice the abort.
ABORT_GRACE = 5.0


class ThreadRanks:
    """``world_size`` rank threads of this process, each with the threaded default group.

    ``body(rank)`` runs in thread ``rank`` after ``on_start(rank)``; the first failure
    aborts every group so the other threads stop at their next collective; past the
    deadline the stuck threads are named with their stacks.
    """

    def __init__(
        self,
        world_size: int,
        body: Callable[[int], Any],
        *,
        seed: int,
        on_start: Callable[[int], None] | None = None,
        init: bool = True,
        group_timeout: float | None = None,
    ) -> None:
        self.world_size = world_size
        self.body = body
        self.seed = seed
        self.on_start = on_start
        self.init = init
        self.group_timeout = group_timeout
        self.store = HashStore()
        self.threads: list[threading.Thread] = []
        self.results: dict[int, RankResult] = {}
        self.values: list[Any] = [None] * world_size
        self.first_failure: int | None = None
        self.failures: dict[int, tuple[bool, float]] = {}  # rank -> (consequence, when caught)
        self.cond = threading.Condition()

    def start(self) -> None:
        """Seed the process-wide generators once, then start the threads."""
        # Seeded here, not racily from every thread.
        seed_everything(self.seed)
        for rank in range(self.world_size):
            t = threading.Thread(
                target=self._run, args=(rank,), name=f"mpdist-rank-{rank}", daemon=True
            )
            self.threads.append(t)
        for t in self.threads:
            t.start()

    def _run(self, rank: int) -> None:
        result = RankResult(rank=rank, status="passed")
        start = time.perf_counter()
        try:
            if self.on_start is not None:
                self.on_start(rank)
            if self.init:
                timeout = None
                if self.group_timeout is not None:
                    timeout = timedelta(seconds=self.group_timeout)
                dist.init_process_group(
                    "threaded",
                    rank=rank,
                    world_size=self.world_size,
                    store=self.store,
                    timeout=timeout,
                )
            self.values[rank] = self.body(rank)
        except unittest.SkipTest as exc:
            result.status, result.message = "skipped", str(exc)
        except BaseException as exc:
            result.status = "failed"
            result.exc_type = type(exc).__qualname__
            result.message = str(exc)
            result.traceback = f"in thread {threading.current_thread().name!r}:\n" + (
                format_exception(exc, __file__)
            )
            result.consequence = is_consequence(
                {"exc_type": result.exc_type, "message": result.message}
            )
            # Noted before this rank's group is destroyed (which makes the peers fail):
            # the first failure is the one caught first, causes before consequences.
            with self.cond:
                self.failures[rank] = (result.consequence, time.monotonic())
                self.first_failure = self._first()
                self.cond.notify_all()
        finally:
            result.duration = time.perf_counter() - start
            try:
                if dist.is_initialized():
                    dist.destroy_process_group()
            except Exception:  # a broken group must not hide the test's own result
                pass
        with self.cond:
            self.results[rank] = result
            self.cond.notify_all()

    def _first(self) -> int | None:
        # Called with self.cond held.
        if not self.failures:
            return None
        return min(self.failures, key=lambda rank: (*self.failures[rank], rank))

    def join(self, timeout: float, test_id: str) -> Outcome:
        """Wait for every thread (abort on the first failure) and collect the outcome."""
        outcome = Outcome(test_id=test_id, world_size=self.world_size, timeout=timeout)
        start = time.monotonic()
        deadline = start + timeout
        reason: str | None = None
        reabort = 0.02
        with self.cond:
            while len(self.results) < self.world_size:
                if self.first_failure is not None and reason is None:
                    # First failure: make the others' pending collectives raise now.
                    reason = f"aborted by the harness: rank {self.first_failure} failed"
                    deadline = min(deadline, time.monotonic() + ABORT_GRACE)
                if reason is not None:
                    # Again at every wake-up (backing off): a thread that had not started
                    # building its group at the first abort registers it only later.
                    dist._abort_all_groups(reason)
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    break
                if reason is None:
                    self.cond.wait(remaining)
                else:
                    self.cond.wait(min(remaining, reabort))
                    reabort = min(reabort * 2, 0.5)
        for t in self.threads:
            t.join(max(0.0, deadline - time.monotonic()))
        stuck = [t for t in self.threads if t.is_alive()]
        frames = sys._current_frames()
        trace = collective_trace()
        failed = self.first_failure is not None
        with self.cond:
            for rank, t in enumerate(self.threads):
                r = self.results.get(rank)
                if r is None:
                    r = RankResult(rank=rank, status="killed" if failed else "timeout")
                    frame = frames.get(t.ident or -1)
                    stack = "".join(traceback.format_stack(frame)) if frame is not None else ""
                    r.dump = f"thread {t.name!r} is still running:\n{stack}"
                    r.trace = trace
                outcome.results.append(r)
            outcome.first_failure = self.first_failure
        outcome.timed_out = bool(stuck) and not failed
        if stuck:
            # Threads can't be killed: abort their groups so they stop at the next collective.
            dist._abort_all_groups("aborted by the harness: the test timed out")
            for t in stuck:
                t.join(1.0)
        outcome.elapsed = time.monotonic() - start
        return outcome

    def cleanup(self) -> None:
        """Stop whatever still runs (the test ended early: setUp failed, Ctrl-C)."""
        if any(t.is_alive() for t in self.threads):
            dist._abort_all_groups("aborted by the harness: the test is over")
            for t in self.threads:
                t.join(1.0)


class MultiThreadedTestCase(ArrayAssertions, unittest.TestCase):
    """Run each test method in ``world_size`` threads with the threaded backend initialized.

    Class attributes: ``timeout`` (seconds; default ``--mp-timeout`` or 300), ``seed``.
    Each thread seeds its own mpdist parameter RNG with ``seed`` and gets ``self.rng``
    (a numpy Generator seeded alike), so ranks build identical models without racing
    on a shared generator.
    """

    MAIN_PROCESS_RANK: ClassVar[int] = -1
    timeout: ClassVar[float | None] = None
    seed: ClassVar[int] = 1234

    def __init__(self, methodName: str = "runTest") -> None:
        super().__init__(methodName)
        self._mt_local = threading.local()
        self._mt_ranks: ThreadRanks | None = None
        self._mpdist_world_size: int | None = None
        self._mpdist_nodeid: str | None = None
        self._mpdist_outcome: Outcome | None = None
        fn = getattr(self, methodName, None)
        if fn is not None and methodName != "runTest":
            setattr(self, methodName, self._mt_parent_side(fn))

    @property
    def world_size(self) -> int:
        """Number of rank threads: ``--ranks``, else ``$MPDIST_WORLD_SIZE``, else 2."""
        if self._mpdist_world_size is not None:
            return self._mpdist_world_size
        return _config.default_world_size()

    @property
    def rank(self) -> int:
        """The calling thread's rank (-1 in the main thread)."""
        return getattr(self._mt_local, "rank", self.MAIN_PROCESS_RANK)

    @property
    def rng(self) -> Any:
        """This rank thread's numpy Generator, seeded with ``seed``."""
        return self._mt_local.rng

    def _spawn_threads(self) -> None:
        """Start the rank threads (idempotent; torch tests call it from setUp)."""
        if self._mt_ranks is not None:
            return
        world_size = int(self.world_size)
        method = getattr(type(self), self._testMethodName, None)
        needed = getattr(method, "_mpdist_min_world_size", None)
        if needed is not None and world_size < needed:
            raise unittest.SkipTest(f"Need at least {needed} ranks, world size is {world_size}")
        body = getattr(type(self), self._testMethodName).__get__(self, type(self))
        self._mt_ranks = ThreadRanks(
            world_size, lambda rank: body(), seed=self.seed, on_start=self._mt_thread_start
        )
        self.addCleanup(self._mt_ranks.cleanup)
        self._mt_ranks.start()

    def _mt_thread_start(self, rank: int) -> None:
        self._mt_local.rank = rank
        self._mt_local.rng = mpdist.manual_seed(self.seed)

    def _mt_parent_side(self, fn: Any) -> Any:
        @functools.wraps(fn)
        def run_in_threads(*args: Any, **kwargs: Any) -> Any:
            if self.rank != self.MAIN_PROCESS_RANK:
                return fn(*args, **kwargs)
            self._spawn_threads()
            assert self._mt_ranks is not None
            timeout = _config.default_timeout(self.timeout)
            try:
                outcome = self._mt_ranks.join(timeout, self._mpdist_nodeid or self.id())
            except BaseException:
                self._mt_ranks.cleanup()  # unittest runs no cleanups after Ctrl-C
                raise
            self._mpdist_outcome = outcome
            rerun = rerun_command(self._mpdist_nodeid, self.id(), outcome.world_size)
            raise_for(outcome, rerun)

        return run_in_threads


def spawn_threads(
    fn: Callable[..., Any],
    world_size: int,
    *args: Any,
    timeout: float | None = None,
    init: bool = True,
    group_timeout: float | None = None,
    seed: int = 1234,
) -> list[Any]:
    """Run ``fn(rank, world_size, *args)`` in ``world_size`` threads; their return values.

    With ``init`` each thread has the threaded default group (destroyed afterwards).
    The first failing thread aborts the others; a failure raises
    :class:`~mpdist.testing._report.MultiProcessFailure` naming every failing thread.
    """
    if not callable(fn):
        raise TypeError(f"spawn_threads needs a callable, got {type(fn).__name__}")
    if not isinstance(world_size, int) or isinstance(world_size, bool) or world_size < 1:
        raise ValueError(f"world_size must be a positive int, got {world_size!r}")
    ranks = ThreadRanks(
        world_size,
        lambda rank: fn(rank, world_size, *args),
        seed=seed,
        init=init,
        group_timeout=group_timeout,
    )
    try:
        ranks.start()
        name = getattr(fn, "__qualname__", repr(fn))
        nodeid = os.environ.get("PYTEST_CURRENT_TEST", "").rsplit(" ", 1)[0] or None
        outcome = ranks.join(_config.default_timeout(timeout), nodeid or name)
    finally:
        ranks.cleanup()
    raise_for(outcome, rerun_command(nodeid, name, world_size))
    return ranks.values
