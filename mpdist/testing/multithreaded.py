"""MultiThreadedTestCase: each rank is a thread of the test process, on the threaded backend.

As in PyTorch, the default group is already initialized when the test body
starts (``dist.get_rank() == self.rank``); ``self.rank`` is the calling
thread's rank. A failing thread is named in the report; a timeout names the
threads still running, with their stacks and the last collective entered.
"""

from __future__ import annotations

import functools
import sys
import threading
import time
import traceback
import unittest
from typing import Any, ClassVar

import mpdist
from mpdist import distributed as dist
from mpdist.store import HashStore
from mpdist.testing import _config
from mpdist.testing._coordinator import Outcome, RankResult
from mpdist.testing._report import raise_for, rerun_command
from mpdist.testing._worker import collective_trace, format_exception, seed_everything

# After the first failure, how long the other threads get to notice the abort.
ABORT_GRACE = 5.0


class MultiThreadedTestCase(unittest.TestCase):
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
        self._mt_threads: list[threading.Thread] = []
        self._mt_results: dict[int, RankResult] = {}
        self._mt_cond = threading.Condition()
        self._mt_first_failure: int | None = None
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
        if self._mt_threads:
            return
        world_size = int(self.world_size)
        method = getattr(type(self), self._testMethodName, None)
        needed = getattr(method, "_mpdist_min_world_size", None)
        if needed is not None and world_size < needed:
            raise unittest.SkipTest(f"Need at least {needed} ranks, world size is {world_size}")
        # Process-wide generators are seeded once, here, not racily from every thread.
        seed_everything(self.seed)
        store = HashStore()
        body = getattr(type(self), self._testMethodName).__get__(self, type(self))
        for rank in range(world_size):
            t = threading.Thread(
                target=self._mt_run,
                args=(rank, world_size, store, body),
                name=f"mpdist-rank-{rank}",
                daemon=True,
            )
            self._mt_threads.append(t)
        self.addCleanup(self._mt_cleanup)
        for t in self._mt_threads:
            t.start()

    def _mt_run(self, rank: int, world_size: int, store: HashStore, body: Any) -> None:
        self._mt_local.rank = rank
        self._mt_local.rng = mpdist.manual_seed(self.seed)
        result = RankResult(rank=rank, status="passed")
        start = time.perf_counter()
        try:
            dist.init_process_group("threaded", rank=rank, world_size=world_size, store=store)
            body()
        except unittest.SkipTest as exc:
            result.status, result.message = "skipped", str(exc)
        except BaseException as exc:
            result.status = "failed"
            result.exc_type = type(exc).__qualname__
            result.message = str(exc)
            result.traceback = f"in thread {threading.current_thread().name!r}:\n" + (
                format_exception(exc, __file__)
            )
        finally:
            result.duration = time.perf_counter() - start
            try:
                if dist.is_initialized():
                    dist.destroy_process_group()
            except Exception:  # a broken group must not hide the test's own result
                pass
        with self._mt_cond:
            self._mt_results[rank] = result
            if result.status == "failed" and self._mt_first_failure is None:
                self._mt_first_failure = rank
            self._mt_cond.notify_all()

    def _mt_join(self) -> Outcome:
        world_size = len(self._mt_threads)
        timeout = _config.default_timeout(self.timeout)
        outcome = Outcome(test_id=self._mpdist_nodeid or self.id(), world_size=world_size)
        outcome.timeout = timeout
        start = time.monotonic()
        deadline = start + timeout
        aborted = False
        with self._mt_cond:
            while len(self._mt_results) < world_size:
                if self._mt_first_failure is not None and not aborted:
                    # First failure: make the others' pending collectives raise now.
                    aborted = True
                    first = self._mt_first_failure
                    dist._abort_all_groups(f"aborted by the harness: rank {first} failed")
                    deadline = min(deadline, time.monotonic() + ABORT_GRACE)
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    break
                self._mt_cond.wait(remaining)
        for t in self._mt_threads:
            t.join(max(0.0, deadline - time.monotonic()))
        stuck = [t for t in self._mt_threads if t.is_alive()]
        frames = sys._current_frames()
        trace = collective_trace()
        failed = self._mt_first_failure is not None
        with self._mt_cond:
            for rank, t in enumerate(self._mt_threads):
                r = self._mt_results.get(rank)
                if r is None:
                    r = RankResult(rank=rank, status="killed" if failed else "timeout")
                    frame = frames.get(t.ident or -1)
                    stack = "".join(traceback.format_stack(frame)) if frame is not None else ""
                    r.dump = f"thread {t.name!r} is still running:\n{stack}"
                    r.trace = trace
                outcome.results.append(r)
            outcome.first_failure = self._mt_first_failure
        outcome.timed_out = bool(stuck) and not failed
        if stuck:
            # Threads can't be killed: abort their groups so they stop at the next collective.
            dist._abort_all_groups("aborted by the harness: the test timed out")
            for t in stuck:
                t.join(1.0)
        outcome.elapsed = time.monotonic() - start
        return outcome

    def _mt_parent_side(self, fn: Any) -> Any:
        @functools.wraps(fn)
        def run_in_threads(*args: Any, **kwargs: Any) -> Any:
            if self.rank != self.MAIN_PROCESS_RANK:
                return fn(*args, **kwargs)
            self._spawn_threads()
            outcome = self._mt_join()
            self._mpdist_outcome = outcome
            rerun = rerun_command(self._mpdist_nodeid, self.id(), outcome.world_size)
            raise_for(outcome, rerun)

        return run_in_threads

    def _mt_cleanup(self) -> None:
        if any(t.is_alive() for t in self._mt_threads):
            dist._abort_all_groups("aborted by the harness: the test is over")
            for t in self._mt_threads:
                t.join(1.0)
