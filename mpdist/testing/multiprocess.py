"""MultiProcessTestCase: a unittest.TestCase whose test methods run in one process per rank.

The surface is PyTorch's (``world_size``, ``rank``, ``file_name``,
``_spawn_processes()`` from ``setUp``, class attribute ``timeout``), so a torch
distributed test ports by changing one import. ``setUp`` and ``tearDown`` run in
the parent; the test body runs only in the ranks::

    class TestSum(MultiProcessTestCase):
        def setUp(self):
            super().setUp()
            self._spawn_processes()   # optional: done on demand otherwise

        def test_sum(self):
            dist.init_process_group("tcp", store=FileStore(self.file_name, self.world_size),
                                    rank=self.rank, world_size=self.world_size)
            a = np.ones(3); dist.all_reduce(a)
            assert (a == self.world_size).all()
"""

from __future__ import annotations

import atexit
import dataclasses
import functools
import os
import shutil
import sys
import tempfile
import unittest
from collections.abc import Callable
from typing import Any, ClassVar

from mpdist.testing import _config, _coordinator, _pool
from mpdist.testing._asserts import ArrayAssertions
from mpdist.testing._job_secret import make_private_file
from mpdist.testing._report import raise_for, rerun_command
from mpdist.testing._worker import TaskSpec


def module_path(module_name: str) -> str | None:
    """The file a test module was loaded from (None if it has none)."""
    module = sys.modules.get(module_name)
    path = getattr(module, "__file__", None)
    return os.path.abspath(path) if path else None


_live_workdirs: set[str] = set()


def make_workdir() -> str:
    """A fresh private directory for one test: store file, per-rank output and dumps."""
    path = tempfile.mkdtemp(prefix="mpdist-")
    _live_workdirs.add(path)
    return path


def remove_workdir(path: str) -> None:
    """Delete a directory made by :func:`make_workdir`."""
    _live_workdirs.discard(path)
    shutil.rmtree(path, ignore_errors=True)


@atexit.register
def _remove_leftover_workdirs() -> None:
    # A test interrupted where unittest runs no cleanups (Ctrl-C in setUp) still
    # leaves no temp files behind.
    while _live_workdirs:
        shutil.rmtree(_live_workdirs.pop(), ignore_errors=True)


def preload_for(module_name: str) -> list[str]:
    """Modules the forkserver should import before forking ranks of a test in ``module_name``."""
    # "__main__" is multiprocessing's spelling for "the script being run".
    return [module_name]


class MultiProcessTestCase(ArrayAssertions, unittest.TestCase):
    """Run each test method in ``world_size`` processes; one outcome in the parent.

    Class attributes: ``timeout`` (seconds; default ``TIMEOUT_OVERRIDE`` for the
    test's name, else ``--mp-timeout``, else 300), ``start_method`` ("forkserver",
    "spawn" or "fork"; default forkserver on Linux), ``reuse_processes`` (keep ranks
    alive across the class's tests), ``seed`` (every rank seeds random, numpy,
    mpdist and torch with it).

    torch's surface besides: ``world_size`` (4 unless ``--ranks``,
    ``$MPDIST_WORLD_SIZE`` or an override of the property say otherwise), ``rank``,
    ``file_name``, ``init_method``, ``is_master``, ``destroy_pg_upon_exit``,
    ``special_return_code_checks`` / ``skip_return_code_checks`` (test methods whose
    ranks may end with a given / any exit code), ``_current_test_name()``,
    ``_check_return_codes(fn, elapsed_time)`` (turns the ranks' results into the
    test's outcome; override it to judge them differently), ``TEST_ERROR_EXIT_CODE``.
    """

    MAIN_PROCESS_RANK: ClassVar[int] = -1
    # torch's exit status for a rank whose test raised (a rank calling sys.exit(10)
    # fails, as under torch's harness).
    TEST_ERROR_EXIT_CODE: ClassVar[int] = 10
    timeout: ClassVar[float | None] = None
    start_method: ClassVar[str | None] = None
    reuse_processes: ClassVar[bool] = False
    seed: ClassVar[int] = 1234

    def __init__(self, methodName: str = "runTest", method_name: str = "runTest") -> None:
        # torch's harness takes the name under either spelling.
        if methodName == "runTest":
            methodName = method_name
        super().__init__(methodName)
        self.rank = self.MAIN_PROCESS_RANK
        self.file_name = ""
        self.processes: list[Any] = []
        self.special_return_code_checks: dict[Any, int] = {}
        self.skip_return_code_checks: list[Any] = []
        self._mpdist_world_size: int | None = None
        self._mpdist_in_rank = False
        self._mpdist_nodeid: str | None = None
        self._mpdist_workdir: str | None = None
        self._mpdist_ranks: _coordinator.RankSet | None = None
        self._mpdist_pool: _pool.WorkerPool | None = None
        self._mpdist_spec: TaskSpec | None = None
        self._mpdist_outcome: _coordinator.Outcome | None = None
        fn = getattr(self, methodName, None)
        if fn is not None and methodName != "runTest":
            setattr(self, methodName, self._mpdist_parent_side(fn))

    @property
    def world_size(self) -> int:
        """Number of ranks: ``--ranks``, else ``$MPDIST_WORLD_SIZE``, else 4. Override freely."""
        if self._mpdist_world_size is not None:
            return self._mpdist_world_size
        return _config.default_world_size(_config.CASE_DEFAULT_WORLD_SIZE)

    def _mpdist_resolve_world_size(self) -> int:
        """The number of ranks to start for this test."""
        return int(self.world_size)

    @property
    def is_master(self) -> bool:
        """Whether this is rank 0."""
        return self.rank == 0

    def _current_test_name(self) -> str:
        """The test method's name (torch's method of the same name)."""
        return self.id().split(".")[-1]

    # -- parent side ---------------------------------------------------------------------

    def setUp(self) -> None:
        super().setUp()
        self.special_return_code_checks = {}
        self.skip_return_code_checks = []
        self._mpdist_prepare()

    def _mpdist_prepare(self) -> None:
        if self._mpdist_workdir is None:
            self._mpdist_workdir = make_workdir()
            self.file_name = os.path.join(self._mpdist_workdir, "store")
            # An empty file, as torch's harness gives (FileStore accepts it).
            make_private_file(self.file_name)  # 0600: FileStore refuses what others may write
            self.addCleanup(self._mpdist_cleanup)

    def _spawn_processes(self) -> None:
        """Start the ranks for the current test (idempotent; torch tests call it from setUp)."""
        if self._mpdist_ranks is not None:
            return
        try:
            self._mpdist_start()
        except KeyboardInterrupt:
            self._mpdist_cleanup()  # unittest runs no cleanups after Ctrl-C
            raise

    def _mpdist_start(self) -> None:
        self._mpdist_prepare()
        world_size = self._mpdist_resolve_world_size()
        if world_size < 1:
            raise ValueError(f"world_size must be >= 1, got {world_size}")
        method = getattr(type(self), self._testMethodName, None)
        needed = getattr(method, "_mpdist_min_world_size", None)
        if needed is not None and world_size < needed:
            raise unittest.SkipTest(f"Need at least {needed} ranks, world size is {world_size}")
        cls = type(self)
        debug = _config.debug_rank()
        if debug is not None and not 0 <= debug < world_size:
            debug = None
        assert self._mpdist_workdir is not None
        spec = TaskSpec(
            kind="case",
            module=cls.__module__,
            path=module_path(cls.__module__),
            qualname=cls.__qualname__,
            method=self._testMethodName,
            world_size=world_size,
            file_name=self.file_name,
            workdir=self._mpdist_workdir,
            test_id=self._mpdist_nodeid or self.id(),
            seed=self.seed,
            env=dict(os.environ),
            sys_path=list(sys.path),
            cwd=os.getcwd(),
            debug_rank=debug,
            destroy_groups=bool(self.destroy_pg_upon_exit),
        )
        method_name = _config.start_method(self.start_method)
        ctx = _coordinator.get_context(method_name, preload_for(cls.__module__))
        _config.check_capacity(world_size)  # before a pool of that size is started
        pool = None
        if _config.reuse_processes(self.reuse_processes) and debug is None:
            key = (cls, world_size, method_name)
            fresh = key not in _pool._pools
            pool = _pool.get_pool(key, ctx, world_size)
            if fresh:
                cls.addClassCleanup(_pool.close_pool, key)
        self._mpdist_spec = spec
        self._mpdist_pool = pool
        self._mpdist_ranks = _coordinator.start(spec, ctx=ctx, pool=pool)
        self.processes = [h.proc for h in self._mpdist_ranks.handles]

    def _mpdist_rank_setup(self) -> None:
        """Runs in each rank just before the test body (a hook for derived harness classes)."""

    def _mpdist_deadline(self) -> float:
        """Seconds this test may run: the class's ``timeout``, else the configured default."""
        return _config.default_timeout(self.timeout, self._testMethodName)

    # torch spells it this way in some suites; the start method is ours to choose.
    _fork_processes = _spawn_processes

    @property
    def init_method(self) -> str:
        """``file://`` URL of this test's store file (torch's ``init_method``)."""
        return f"file://{self.file_name}"

    @property
    def destroy_pg_upon_exit(self) -> bool:
        """Whether a group the test left up is destroyed when the rank's test ends.

        Override to return False and the group stays up until the rank process ends
        (a pooled worker destroys it before its next test).
        """
        return True

    def _mpdist_parent_side(self, fn: Any) -> Any:
        @functools.wraps(fn)
        def run_in_ranks(*args: Any, **kwargs: Any) -> Any:
            if self._mpdist_in_rank:
                return fn(*args, **kwargs)
            try:
                self._spawn_processes()
                rs, spec = self._mpdist_ranks, self._mpdist_spec
                assert rs is not None and spec is not None
                timeout = None
                if spec.debug_rank is None:
                    timeout = self._mpdist_deadline()
                outcome = _coordinator.finish(rs, timeout=timeout, pool=self._mpdist_pool)
                self._mpdist_ranks = None
            except BaseException:
                # unittest skips cleanups on KeyboardInterrupt: clean up here as well.
                self._mpdist_cleanup()
                raise
            self._mpdist_outcome = outcome
            self._check_return_codes(fn, outcome.elapsed)

        return run_in_ranks

    def _check_return_codes(self, fn: Any, elapsed_time: float) -> None:
        """Make the ranks' results the test's outcome: return (passed), skip or fail.

        A test method listed in ``skip_return_code_checks`` passes whatever code its
        ranks exit with (but not an exception); one in ``special_return_code_checks``
        must see rank 0 end with the given code (a ``sys.exit(code)`` in the test, or
        the rank process's exit status, negative for a signal).
        """
        outcome = self._mpdist_outcome
        if outcome is None:
            return  # no rank ran (skipped before spawning)
        expected = _listed(fn, self.special_return_code_checks)
        if _listed(fn, dict.fromkeys(self.skip_return_code_checks, True)):
            outcome = _accept_exits(outcome, lambda code: True)
        elif expected is not None:
            first = min(outcome.results, key=lambda r: r.rank)
            got = _exit_status(first)
            if got != expected:
                raise AssertionError(
                    f"Expected exit code {expected} but got {got} for rank {first.rank}"
                )
            outcome = _accept_exits(outcome, lambda code: code == expected)
        rerun = rerun_command(self._mpdist_nodeid, self.id(), outcome.world_size)
        raise_for(outcome, rerun)

    def _mpdist_cleanup(self) -> None:
        # Runs after tearDown whatever happened: setUp failed after spawning, Ctrl-C, ...
        if self._mpdist_ranks is not None:
            _coordinator.abandon(self._mpdist_ranks, self._mpdist_pool)
            self._mpdist_ranks = None
        if self._mpdist_workdir is not None:
            remove_workdir(self._mpdist_workdir)
            self._mpdist_workdir = None


def _listed(fn: Any, table: dict[Any, Any]) -> Any:
    """``table``'s entry for test method ``fn``.

    Keys may be the method (bound, plain, or wrapped by a decorator or by the harness,
    ``self.test_x.__wrapped__`` included) or its name: all of them name the method.
    """
    name = getattr(fn, "__name__", fn)
    for key, value in table.items():
        if getattr(key, "__name__", key) == name:
            return value
    return None


def _exit_status(result: _coordinator.RankResult) -> int | None:
    """How a rank ended, as torch's harness sees it: its ``sys.exit`` code, else its exit status."""
    if result.exit_code is not None:
        return result.exit_code
    if result.status in ("passed", "skipped") and result.exitcode is None:
        return 0
    return result.exitcode


def _accept_exits(
    outcome: _coordinator.Outcome, accept: Callable[[int | None], bool]
) -> _coordinator.Outcome:
    """``outcome`` with ranks that only exited (``sys.exit``, a signal) with an accepted code passed."""
    results = []
    for r in outcome.results:
        exited = r.status == "lost" or (r.status == "failed" and r.exc_type == "SystemExit")
        if exited and accept(_exit_status(r)):
            r = dataclasses.replace(r, status="passed", consequence=False)
        results.append(r)
    return dataclasses.replace(outcome, results=results)
