"""MultiThreadedTestCase: each rank is a thread of the test process, on the threaded backend.

As in PyTorch, the default group is already initialized when the test body
starts (``dist.get_rank() == self.rank``). Each rank thread runs the test on its
own shallow copy of the test instance (``self.rank`` is that thread's rank;
attributes set in the body stay the rank's own), between ``perThreadSetUp`` and
``perThreadTearDown``. A test class that uses torch also gets torch's threaded
world in its rank threads (see :mod:`mpdist.testing._world`). A failing thread is
named in the report; a timeout names the threads still running, with their stacks
and the last collective entered. ``SkipTest`` and torch's skip exit codes in a
thread skip the test, as in the process harness.
"""

from __future__ import annotations

import copy
import functools
import os
import sys
import threading
import time
import traceback
import unittest
from collections.abc import Callable
from datetime import timedelta
from typing import Any, ClassVar, TypeVar

import mpdist
from mpdist import distributed as dist
from mpdist.distributed import debug
from mpdist.store import HashStore
from mpdist.testing import _config
from mpdist.testing._asserts import ArrayAssertions
from mpdist.testing._coordinator import Outcome, RankResult, left_early
from mpdist.testing._outcomes import judge
from mpdist.testing._records import is_consequence
from mpdist.testing._report import raise_for, rerun_command
from mpdist.testing._worker import collective_trace, seed_everything
from mpdist.testing._world import TorchThreadedWorld, uses_torch

# After the first failure, how long the other threads get to notice the abort.
ABORT_GRACE = 5.0

F = TypeVar("F", bound=Callable[..., Any])


class ThreadRanks:
    """``world_size`` rank threads of this process, each with the threaded default group.

    ``body(rank)`` runs in thread ``rank`` after ``on_start(rank)`` and before
    ``on_end(rank)``; with ``torch_world`` torch's threaded world is installed for
    the threads too. The first failure aborts every group (mpdist's and torch's) so
    the other threads stop at their next collective; past the deadline the stuck
    threads are named with their stacks.
    """

    def __init__(
        self,
        world_size: int,
        body: Callable[[int], Any],
        *,
        seed: int,
        on_start: Callable[[int], None] | None = None,
        on_end: Callable[[int], None] | None = None,
        init: bool = True,
        group_timeout: float | None = None,
        torch_world: bool = False,
    ) -> None:
        self.world_size = world_size
        self.body = body
        self.seed = seed
        self.on_start = on_start
        self.on_end = on_end
        self.init = init
        self.group_timeout = group_timeout
        self.torch = TorchThreadedWorld(world_size) if torch_world and init else None
        self.store = HashStore()
        self.threads: list[threading.Thread] = []
        self.results: dict[int, RankResult] = {}
        self.values: list[Any] = [None] * world_size
        self.first_failure: int | None = None
        self.failures: dict[int, tuple[bool, float]] = {}  # rank -> (consequence, when caught)
        self.left: dict[int, float] = {}  # rank -> when its body ended with sys.exit(0)
        self.cond = threading.Condition()

    def start(self) -> None:
        """Seed the process-wide generators once, install torch's world, start the threads.

        A world larger than the run allows (``--max-ranks``) is skipped, or fails, first.
        """
        _config.check_capacity(self.world_size)
        # Seeded here, not racily from every thread.
        seed_everything(self.seed)
        if self.torch is not None:
            self.torch.install()
        for rank in range(self.world_size):
            t = threading.Thread(
                target=self._run, args=(rank,), name=f"mpdist-rank-{rank}", daemon=True
            )
            self.threads.append(t)
        for t in self.threads:
            t.start()

    def _init_groups(self, rank: int) -> None:
        timeout = None
        if self.group_timeout is not None:
            timeout = timedelta(seconds=self.group_timeout)
        dist.init_process_group(
            "threaded", rank=rank, world_size=self.world_size, store=self.store, timeout=timeout
        )
        if self.torch is not None:
            self.torch.enter(rank)

    def _destroy_groups(self) -> None:
        try:
            if dist.is_initialized():
                dist.destroy_process_group()
        except Exception:  # a broken group must not hide the test's own result
            pass
        if self.torch is not None:
            self.torch.leave()

    def _run(self, rank: int) -> None:
        result = RankResult(rank=rank, status="passed")
        start = time.perf_counter()
        try:
            if self.on_start is not None:
                self.on_start(rank)
            if self.init:
                self._init_groups(rank)
            self.values[rank] = self.body(rank)
        except BaseException as exc:
            # Judged before this rank's groups go (which makes the peers fail).
            self._judge(result, exc)
        finally:
            self._destroy_groups()
            if self.on_end is not None:
                try:
                    self.on_end(rank)
                except BaseException as exc:
                    if result.status == "passed":
                        self._judge(result, exc)
            result.duration = time.perf_counter() - start
        with self.cond:
            self.results[rank] = result
            self.cond.notify_all()

    def _judge(self, result: RankResult, exc: BaseException) -> None:
        verdict = judge(exc, __file__)
        result.status, result.message = verdict.status, verdict.message
        if verdict.status == "passed" and verdict.exit_code is not None:
            # Noted before this rank's groups go: peers failing after this blame it.
            result.exit_code = verdict.exit_code
            with self.cond:
                self.left[result.rank] = time.monotonic()
        if verdict.status != "failed":
            return
        result.exc_type, result.exit_code = verdict.exc_type, verdict.exit_code
        result.traceback = f"in thread {threading.current_thread().name!r}:\n{verdict.traceback}"
        result.consequence = is_consequence(result.exc_type, result.message)
        # Noted before this rank's groups are destroyed (which makes the peers fail):
        # the first failure is the one caught first, causes before consequences.
        with self.cond:
            self.failures[result.rank] = (result.consequence, time.monotonic())
            self.first_failure = self._first()
            self.cond.notify_all()

    def _abort(self, reason: str) -> None:
        debug.abort_all_groups(reason)  # sticks until the threads are done (cleared then)
        if self.torch is not None:
            self.torch.terminate()

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
        aborted = False
        with self.cond:
            while len(self.results) < self.world_size:
                if self.first_failure is not None and not aborted:
                    # First failure: make the others' pending collectives raise now. The
                    # abort sticks, so a thread that builds its group only later fails too.
                    self._abort(f"aborted by the harness: rank {self.first_failure} failed")
                    aborted = True
                    deadline = min(deadline, time.monotonic() + ABORT_GRACE)
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    break
                self.cond.wait(remaining)
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
            self._blame_early_exits(outcome.results)
            outcome.first_failure = self.first_failure
        outcome.timed_out = bool(stuck) and not failed
        if stuck:
            # Threads can't be killed: abort their groups so they stop at the next collective.
            self._abort("aborted by the harness: the test timed out")
            for t in stuck:
                t.join(1.0)
        self._finish()
        outcome.elapsed = time.monotonic() - start
        return outcome

    def _blame_early_exits(self, results: list[RankResult]) -> None:
        """A rank that left with ``sys.exit(0)`` while peers that then failed still ran is
        the cause (the rule is the process harness's). Called with self.cond held."""
        failed_at = {rank: when for rank, (_, when) in self.failures.items()}
        for r in results:
            left_at = self.left.get(r.rank)
            if r.status != "passed" or left_at is None or r.exit_code is None:
                continue
            message = left_early(r.rank, r.exit_code, left_at, failed_at)
            if message is not None:
                r.status, r.exc_type, r.message = "failed", "SystemExit", message
                self.failures[r.rank] = (False, left_at)
        self.first_failure = self._first()

    def _finish(self) -> None:
        # The threads are done (or given up on): the next test of this process starts
        # with no abort in force and torch's world as it was.
        debug.clear_abort()
        if self.torch is not None:
            self.torch.uninstall()

    def cleanup(self) -> None:
        """Stop whatever still runs (the test ended early: setUp failed, Ctrl-C)."""
        if any(t.is_alive() for t in self.threads):
            self._abort("aborted by the harness: the test is over")
            for t in self.threads:
                t.join(1.0)
        self._finish()


class MultiThreadedTestCase(ArrayAssertions, unittest.TestCase):
    """Run each test method in ``world_size`` threads with the threaded backend initialized.

    torch's surface: ``world_size`` (default 4: ``--ranks``, ``$MPDIST_WORLD_SIZE``
    or an override of the property change it), ``rank`` (this thread's, -1 in the
    main thread), ``_spawn_threads()`` (from ``setUp``; else done on demand),
    ``perThreadSetUp`` / ``perThreadTearDown`` (in every rank thread, after the
    group is up / after it is gone), ``assertEqualOnRank`` / ``assertNotEqualOnRank``,
    ``_current_test_name``. Each rank thread runs the test on a shallow copy of the
    instance, so attributes set in the body are per rank while those set in
    ``setUp`` are seen by all.

    Class attributes: ``timeout`` (seconds; default ``TIMEOUT_OVERRIDE`` for the
    test's name, else ``--mp-timeout``, else 300), ``seed``, ``torch_world`` (True /
    False: install torch's threaded world in the rank threads or not; None: when
    the class's module uses torch). Each thread seeds its own mpdist parameter RNG
    with ``seed`` and gets ``self.rng`` (a numpy Generator seeded alike), so ranks
    build identical models without racing on a shared generator.
    """

    MAIN_PROCESS_RANK: ClassVar[int] = -1
    MAIN_THREAD_RANK: ClassVar[int] = -1  # torch's name for it
    timeout: ClassVar[float | None] = None
    seed: ClassVar[int] = 1234
    torch_world: ClassVar[bool | None] = None

    def __init__(self, methodName: str = "runTest") -> None:
        super().__init__(methodName)
        self._mt_local = threading.local()
        self._mt_rank: int | None = None  # set on a rank thread's copy of the instance
        self._mt_ranks: ThreadRanks | None = None
        self._mpdist_world_size: int | None = None
        self._mpdist_nodeid: str | None = None
        self._mpdist_outcome: Outcome | None = None
        self.threads: list[threading.Thread] = []
        fn = getattr(self, methodName, None)
        if fn is not None and methodName != "runTest":
            setattr(self, methodName, self._mt_parent_side(fn))

    @property
    def world_size(self) -> int:
        """Number of rank threads: ``--ranks``, else ``$MPDIST_WORLD_SIZE``, else 4."""
        if self._mpdist_world_size is not None:
            return self._mpdist_world_size
        return _config.default_world_size(_config.CASE_DEFAULT_WORLD_SIZE)

    @property
    def rank(self) -> int:
        """The rank of this copy of the test, else of the calling thread (-1 in the main thread)."""
        if self._mt_rank is not None:
            return self._mt_rank
        return getattr(self._mt_local, "rank", self.MAIN_PROCESS_RANK)

    @rank.setter
    def rank(self, value: int) -> None:
        self._mt_rank = value

    @property
    def rng(self) -> Any:
        """This rank thread's numpy Generator, seeded with ``seed``."""
        return self._mt_local.rng

    @property
    def _current_test_name(self) -> str:
        """The test method's name (torch's property of the same name)."""
        return self.id().split(".")[-1]

    def perThreadSetUp(self) -> None:  # noqa: N802 - torch's name
        """Runs in every rank thread after its groups are up, before the test body."""

    def perThreadTearDown(self) -> None:  # noqa: N802 - torch's name
        """Runs in every rank thread after the test body and after its groups are gone."""

    def assertEqualOnRank(  # noqa: N802 - torch's name
        self, x: Any, y: Any, msg: str | None = None, *, rank: int = 0
    ) -> None:
        """``assertEqual`` in rank ``rank`` only (a no-op in the other ranks)."""
        if self.rank == rank:
            self.assertEqual(x, y, msg)

    def assertNotEqualOnRank(  # noqa: N802 - torch's name
        self, x: Any, y: Any, msg: str | None = None, *, rank: int = 0
    ) -> None:
        """``assertNotEqual`` in rank ``rank`` only (a no-op in the other ranks)."""
        if self.rank == rank:
            self.assertNotEqual(x, y, msg)

    def _spawn_threads(self) -> None:
        """Start the rank threads (idempotent; torch tests call it from setUp)."""
        if self._mt_ranks is not None:
            return
        world_size = int(self.world_size)
        method = getattr(type(self), self._testMethodName, None)
        needed = getattr(method, "_mpdist_min_world_size", None)
        if needed is not None and world_size < needed:
            raise unittest.SkipTest(f"Need at least {needed} ranks, world size is {world_size}")
        cases: dict[int, MultiThreadedTestCase] = {}
        body = getattr(type(self), self._testMethodName)

        def on_start(rank: int) -> None:
            cases[rank] = self._mt_rank_copy(rank)

        def run(rank: int) -> Any:
            case = cases[rank]
            case.perThreadSetUp()
            # The class attribute, not the instance's parent-side wrapper: this is the body.
            return body.__get__(case, type(case))()

        def on_end(rank: int) -> None:
            if rank in cases:
                cases[rank].perThreadTearDown()

        self._mt_ranks = ThreadRanks(
            world_size,
            run,
            seed=self.seed,
            on_start=on_start,
            on_end=on_end,
            torch_world=uses_torch(type(self)),
        )
        self.addCleanup(self._mt_ranks.cleanup)
        self._mt_ranks.start()
        self.threads = self._mt_ranks.threads

    def _mt_rank_copy(self, rank: int) -> MultiThreadedTestCase:
        """This test as rank ``rank`` sees it: a shallow copy, in the rank's own thread."""
        self._mt_local.rank = rank
        self._mt_local.rng = mpdist.manual_seed(self.seed)
        case = copy.copy(self)
        case._mt_rank = rank
        return case

    def _mt_parent_side(self, fn: Any) -> Any:
        if getattr(fn, "_mpdist_spawns_threads", False):
            return fn  # spawn_threads_and_init_comms starts the threads itself

        @functools.wraps(fn)
        def run_in_threads(*args: Any, **kwargs: Any) -> Any:
            if self.rank != self.MAIN_PROCESS_RANK:
                return fn(*args, **kwargs)
            self._spawn_threads()
            assert self._mt_ranks is not None
            timeout = _config.default_timeout(self.timeout, self._testMethodName)
            try:
                outcome = self._mt_ranks.join(timeout, self._mpdist_nodeid or self.id())
            except BaseException:
                self._mt_ranks.cleanup()  # unittest runs no cleanups after Ctrl-C
                raise
            self._mpdist_outcome = outcome
            rerun = rerun_command(self._mpdist_nodeid, self.id(), outcome.world_size)
            raise_for(outcome, rerun)

        return run_in_threads


def run_threads(
    ranks: ThreadRanks, timeout: float | None, name: str, test_name: str | None = None
) -> list[Any]:
    """Start ``ranks``, wait for them, raise for a failure or skip; the threads' values."""
    try:
        ranks.start()
        nodeid = os.environ.get("PYTEST_CURRENT_TEST", "").rsplit(" ", 1)[0] or None
        outcome = ranks.join(_config.default_timeout(timeout, test_name), nodeid or name)
    finally:
        ranks.cleanup()
    raise_for(outcome, rerun_command(nodeid, name, ranks.world_size))
    return ranks.values


def spawn_threads(
    fn: Callable[..., Any],
    world_size: int,
    *args: Any,
    timeout: float | None = None,
    init: bool = True,
    group_timeout: float | None = None,
    seed: int = 1234,
    torch_world: bool = False,
) -> list[Any]:
    """Run ``fn(rank, world_size, *args)`` in ``world_size`` threads; their return values.

    With ``init`` each thread has the threaded default group (destroyed afterwards),
    and with ``torch_world`` torch's threaded default group as well. The first
    failing thread aborts the others; a failure raises
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
        torch_world=torch_world,
    )
    return run_threads(ranks, timeout, getattr(fn, "__qualname__", repr(fn)))


def spawn_threads_and_init_comms(
    func: F | None = None,
    *,
    timeout: float | None = None,
    world_size: int = _config.CASE_DEFAULT_WORLD_SIZE,
) -> Any:
    """Run a test method in ``world_size`` threads, each with its default group up (torch's decorator).

    Works on any ``unittest.TestCase``; on a :class:`MultiThreadedTestCase` each
    thread gets its own copy of the instance with ``self.rank`` set. The threads get
    torch's threaded world as well when the test class uses torch::

        class TestOps(unittest.TestCase):
            @spawn_threads_and_init_comms(world_size=2)
            def test_sum(self):
                a = np.ones(2); dist.all_reduce(a); assert (a == 2).all()
    """
    if func is None:
        return functools.partial(
            spawn_threads_and_init_comms, timeout=timeout, world_size=world_size
        )
    method: Callable[..., Any] = func

    @functools.wraps(method)
    def wrapper(self: Any, *args: Any, **kwargs: Any) -> Any:
        threaded = isinstance(self, MultiThreadedTestCase)

        def body(rank: int) -> Any:
            case = self._mt_rank_copy(rank) if threaded else self
            return method(case, *args, **kwargs)

        seed = getattr(self, "seed", 1234)
        ranks = ThreadRanks(world_size, body, seed=seed, torch_world=uses_torch(type(self)))
        name = self.id() if isinstance(self, unittest.TestCase) else method.__qualname__
        run_threads(ranks, timeout, name, method.__name__)

    wrapper._mpdist_spawns_threads = True  # type: ignore[attr-defined]
    return wrapper
