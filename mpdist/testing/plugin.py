"""The mpdist pytest plugin, registered through the ``pytest11`` entry point.

It adds the command-line options and ini keys shared by every multi-rank test
(``--ranks`` / ``mpdist_ranks``, ``--mp-timeout`` / ``mpdist_timeout``,
``--mp-start-method`` / ``mpdist_start_method``, ``--max-ranks`` / ``mpdist_max_ranks``,
``mpdist_reuse_processes``, ``--mp-debug-rank``), a report header line, the markers
``world_size(*sizes)`` and ``mpdist(world_size=None, backend="tcp")``, the fixtures
``rank`` and ``world_size``, and the reporting: one outcome per test with every rank's
traceback, per-rank output as report sections (and in JUnit XML, with the test's world
size and failing ranks as properties), and a command that reruns just the failing test.
It fits the plugins a distributed suite runs with: pytest-timeout's deadline becomes the
harness's (stack dumps, the process tree killed), and ``-n auto`` under pytest-xdist starts
as many workers as the cpus hold ranks.

Usage::

    @pytest.mark.world_size(2, 4)           # test_sum[ws2], test_sum[ws4]
    @pytest.mark.mpdist                     # body runs in every rank, group initialized
    def test_sum(rank, world_size, tmp_path):   # tmp_path is shared by the ranks
        a = np.full(3, rank); dist.all_reduce(a)
        assert (a == sum(range(world_size))).all()

    pytest --ranks 4 --mp-timeout 60          # default world size, per-test deadline
    pytest --mp-debug-rank 1 -k test_sum      # rank 1 on the terminal: breakpoint() works
    pytest -n auto                            # xdist: cpus // ranks workers, no clashes

Only what registering options needs is imported with this module (pytest loads it in
every session of an environment where mpdist is installed); the harness itself is
imported when a session first meets a multi-rank test.
"""

from __future__ import annotations

import dataclasses
import os
import re
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest

from mpdist.testing import _config, _pytest_internals

if TYPE_CHECKING:
    from mpdist.testing._coordinator import Outcome
    from mpdist.testing._worker import TaskSpec

# pytest-timeout's own timer stays behind the harness's deadline as a backstop, this
# much later, in case the harness itself hangs (dumping and killing take a few seconds).
TIMEOUT_BACKSTOP = 60.0


def pytest_addoption(parser: pytest.Parser) -> None:
    group = parser.getgroup("mpdist", "multi-process distributed tests")
    group.addoption(
        "--ranks",
        type=int,
        default=None,
        help="world size of multi-rank tests (else $MPDIST_WORLD_SIZE, else 4 for the test "
        "case classes and 2 for marked functions)",
    )
    group.addoption(
        "--mp-timeout",
        type=float,
        default=None,
        help="seconds a multi-rank test may run before its ranks are dumped and killed (default 300)",
    )
    group.addoption(
        "--mp-start-method",
        choices=_config.START_METHODS,
        default=None,
        help="how rank processes start (default: forkserver on Linux, spawn elsewhere)",
    )
    group.addoption(
        "--max-ranks",
        type=int,
        default=None,
        metavar="N",
        help="skip tests whose world size is over N (also $MPDIST_MAX_WORLD_SIZE, ini "
        "mpdist_max_ranks)",
    )
    group.addoption(
        "--max-ranks-error",
        action="store_true",
        default=False,
        help="fail, instead of skipping, tests whose world size is over --max-ranks",
    )
    group.addoption(
        "--mp-debug-rank",
        type=int,
        default=None,
        metavar="K",
        help="run rank K attached to the terminal (breakpoint() works), no timeout "
        "(also $MPDIST_DEBUG_RANK)",
    )
    group.addoption(
        "--mpi",
        action="store_true",
        default=False,
        help="run under mpiexec: multi-rank tests run SPMD on the MPI ranks, rank 0 reports "
        "(mpiexec -n N python -m pytest --mpi)",
    )
    # Precedence of each: the test's own (marker, class attribute) > command line > env > ini.
    parser.addini("mpdist_ranks", "default world size of multi-rank tests (as --ranks)")
    parser.addini("mpdist_timeout", "seconds a multi-rank test may run (as --mp-timeout)")
    parser.addini("mpdist_start_method", "how rank processes start: forkserver, spawn or fork")
    parser.addini("mpdist_max_ranks", "skip tests whose world size is over this (as --max-ranks)")
    parser.addini(
        "mpdist_reuse_processes",
        "false turns worker reuse (reuse_processes = True classes) off for the run "
        "(as $MPDIST_REUSE_PROCESSES=0)",
    )


def _ini(config: pytest.Config, name: str) -> str | None:
    value = config.getini(name)
    text = str(value).strip() if value is not None else ""
    return text or None


def _settings(config: pytest.Config) -> _config.Settings:
    """The session's settings: its command-line options and ini keys, checked."""
    option = config.option
    rerun: list[str] = []
    if getattr(option, "mp_start_method", None):
        rerun += ["--mp-start-method", option.mp_start_method]
    ranks, timeout, method, max_ranks, reuse = (
        _ini(config, f"mpdist_{key}")
        for key in ("ranks", "timeout", "start_method", "max_ranks", "reuse_processes")
    )
    if method is not None and method not in _config.START_METHODS:
        raise pytest.UsageError(
            f"ini mpdist_start_method must be one of {', '.join(_config.START_METHODS)}, "
            f"got {method!r}"
        )
    mpi = bool(getattr(option, "mpi", False))
    if mpi and getattr(option, "ranks", None) is None:
        from mpdist.testing import _mpi_mode

        option.ranks = _mpi_mode.communicator_size()  # the world size is the communicator's
    try:
        return _config.Settings(
            mpi=mpi,
            ranks=getattr(option, "ranks", None),
            timeout=getattr(option, "mp_timeout", None),
            start_method=getattr(option, "mp_start_method", None),
            debug_rank=getattr(option, "mp_debug_rank", None),
            max_ranks=getattr(option, "max_ranks", None),
            max_ranks_error=bool(getattr(option, "max_ranks_error", False)),
            rerun_args=tuple(rerun),
            under_pytest=True,
            ini_ranks=None if ranks is None else _config.parse_int(ranks, "ini mpdist_ranks"),
            ini_timeout=(
                None if timeout is None else _config.parse_float(timeout, "ini mpdist_timeout")
            ),
            ini_start_method=method,
            ini_max_ranks=(
                None if max_ranks is None else _config.parse_int(max_ranks, "ini mpdist_max_ranks")
            ),
            ini_reuse_processes=(
                None if reuse is None else _config.parse_bool(reuse, "ini mpdist_reuse_processes")
            ),
        )
    except ValueError as exc:
        raise pytest.UsageError(str(exc)) from None


@pytest.hookimpl(wrapper=True)
def pytest_load_initial_conftests(early_config: pytest.Config) -> Iterator[None]:
    """Under --mpi, from here on a rank that leaves tells the others why (_mpi_startup):
    a conftest that fails to import in one rank must not leave the rest waiting."""
    mpi = bool(getattr(early_config.known_args_namespace, "mpi", False))
    if mpi:
        from mpdist.testing import _mpi_startup

        _mpi_startup.arm()
    try:
        return (yield)
    except BaseException as exc:
        if mpi:
            _mpi_startup.leave_conftest(exc)
        raise


@pytest.hookimpl(tryfirst=True)
def pytest_cmdline_main(config: pytest.Config) -> None:
    if getattr(config.option, "mpi", False):
        from mpdist.testing import _mpi_mode

        _mpi_mode.only_rank_zero_writes(config)  # before the plugins' pytest_configure


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line(
        "markers",
        "world_size(*sizes): run the test once per world size (test ids [ws2], [ws4], ...); "
        "for MultiProcessTestCase classes and mpdist function tests",
    )
    config.addinivalue_line(
        "markers",
        'mpdist(world_size=None, backend="tcp", timeout=None): run this test function in '
        "every rank with the default process group initialized; fixtures rank and world_size; "
        'backend="threaded": the ranks are threads of the pytest process',
    )
    _config.push(_settings(config))
    config.stash[_thread_vars_key] = _set_thread_vars()
    if _config.current().mpi:
        from mpdist.testing import _mpi_mode

        _mpi_mode.start(config)


@pytest.hookimpl(tryfirst=True)
def pytest_sessionstart(session: pytest.Session) -> None:
    if _config.current().mpi:
        from mpdist.testing import _mpi_mode

        _mpi_mode.quiet(session.config)  # before the terminal reporter's header


_thread_vars_key = pytest.StashKey[list[str]]()


def _set_thread_vars() -> list[str]:
    """Size the ranks' BLAS / OpenMP thread pools to the cpus each rank gets, unless the
    user did: the cpus shared by every rank of every xdist worker. Set in this process's
    environment, which the ranks (and a forkserver started later) inherit. The names set."""
    workers = _config.parse_int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "1"), "xdist workers")
    # The run's world size; unset, the test classes' 4 (the larger default: never oversubscribe).
    threads = _config.blas_threads(
        _config.default_world_size(_config.CASE_DEFAULT_WORLD_SIZE), workers
    )
    names = [name for name in _config.THREAD_VARS if name not in os.environ]
    for name in names:
        os.environ[name] = str(threads)
    return names


def pytest_report_header(config: pytest.Config) -> str:
    """``mpdist 0.1.0: ranks=2 (from --ranks), timeout=120 s (from --mp-timeout), ...``."""
    from mpdist import __version__

    ranks, ranks_from = _config.world_size_and_source()
    ranks_text = (
        f"ranks={ranks} (from {ranks_from})"
        if ranks_from != "default"
        else f"ranks={_config.CASE_DEFAULT_WORLD_SIZE} for test classes, {ranks} for functions"
    )
    timeout, timeout_from = _config.run_timeout_and_source()
    timeout_text = f"timeout={timeout:g} s" + (
        f" (from {timeout_from})" if timeout_from != "default" else ""
    )
    parts = [ranks_text, timeout_text, f"start={_config.start_method(None)}"]
    limit = _config.max_world_size()
    if limit is not None:
        parts.append(f"max ranks={limit[0]} (from {limit[1]})")
    parts.append(f"cpus={_config.usable_cpus()}")
    return f"mpdist {__version__}: " + ", ".join(parts)


# The torch modules a test file imports, read off its source before pytest imports it.
_TORCH_IMPORTS = re.compile(rb"^[ \t]*(?:from|import)[ \t]+(torch(?:\.\w+)*)", re.MULTILINE)
# What starts rank processes (a module using only MultiThreadedTestCase needs no server).
_PROCESS_HARNESS = re.compile(
    rb"MultiProcessTestCase|DistributedTestBase|MultiProcContinuousTest|spawn_ranks|mark\.mpdist"
)
_early_start_key = pytest.StashKey[bool]()
# The outcome of an mpdist-marked function, for its report; of every multi-rank test once
# its call report is made, for the teardown report (JUnit) and its properties.
_outcome_key = pytest.StashKey["Outcome"]()


def pytest_collectstart(collector: pytest.Collector) -> None:
    """Start the forkserver early for a process-harness test module that imports torch.

    The server imports torch, and runs the test module itself, in its own process;
    started now, that runs beside the parent's own import of the module, instead of
    after it, and no rank of the module's tests loads the module again.
    Only the first such module starts it; the usual preload rules apply afterwards.
    (Collection start, not ``pytest_collect_file``: pytest makes a node for every file
    of a directory it looks into, but imports only the modules it was asked for.)
    """
    config = collector.config
    if not isinstance(collector, pytest.Module) or config.stash.get(_early_start_key, False):
        return
    file_path = collector.path
    if _config.start_method(None) != "forkserver" or _config.debug_rank() is not None:
        return
    if _config.current().mpi:
        return  # nothing is spawned
    try:
        source = file_path.read_bytes()
    except OSError:
        return
    modules = [m.decode() for m in _TORCH_IMPORTS.findall(source)]
    if not modules or b"mpdist" not in source or not _PROCESS_HARNESS.search(source):
        return
    config.stash[_early_start_key] = True
    import multiprocessing

    from mpdist.testing import _preload

    ctx = multiprocessing.get_context("forkserver")
    tests = {}
    if config.getoption("assertmode", "plain") == "rewrite":
        tests[_module_name(file_path)] = str(file_path)
    _preload.forkserver_preload.start_early(ctx, list(dict.fromkeys(modules)), tests)


def _module_name(file_path: Path) -> str:
    """The name pytest imports a test file under (its default "prepend" import mode):
    the file's stem, prefixed by the packages (directories with ``__init__.py``) above it."""
    parts = [file_path.stem]
    directory = file_path.parent
    while (directory / "__init__.py").is_file() and directory.parent != directory:
        parts.insert(0, directory.name)
        directory = directory.parent
    return ".".join(parts)


def pytest_unconfigure(config: pytest.Config) -> None:
    pool = sys.modules.get("mpdist.testing._pool")
    if pool is not None:
        pool.close_all()
    mpi_mode = sys.modules.get("mpdist.testing._mpi_mode")
    if mpi_mode is not None and _config.current().mpi:
        mpi_mode.stop()
    _config.pop()
    for name in config.stash.get(_thread_vars_key, []):
        os.environ.pop(name, None)


# -- MultiProcessTestCase collection: node ids, world_size marker ----------------------------

# pytest's unittest item and collector (None if this pytest lacks them: its own unittest
# collection then runs the harness's classes; see _pytest_internals).
_UNITTEST_NODES = _pytest_internals.unittest_nodes()
_CaseItem: Any = _UNITTEST_NODES[0] if _UNITTEST_NODES else pytest.Function
_CaseCollector: Any = _UNITTEST_NODES[1] if _UNITTEST_NODES else pytest.Class


class MultiProcessTestCaseFunction(_CaseItem):
    """A MultiProcessTestCase method as a pytest item; knows its node id and world size."""

    mpdist_world_size: int | None = None

    def make_instance(self) -> Any:
        # The item may be named "test_x[ws2]"; the method is still test_x.
        assert isinstance(self.parent, pytest.Class)
        return self._configure(self.parent.obj(self.originalname))

    def _configure(self, case: Any) -> Any:
        case._mpdist_nodeid = self.nodeid
        if self.mpdist_world_size is not None:
            case._mpdist_world_size = self.mpdist_world_size
        return case

    def setup(self) -> None:
        super().setup()
        # pytest may have built the instance before the world size was attached.
        self._configure(self.instance)

    def runtest(self) -> None:
        if _config.current().mpi:
            from mpdist.testing import _mpi_mode

            _mpi_mode.run_case(self)  # SPMD on the MPI ranks, no parent side
            return
        super().runtest()


class MultiProcessTestCaseClass(_CaseCollector):
    """Collects MultiProcessTestCase methods, one item per size of a ``world_size`` marker.

    A class that keeps its ranks alive (``reuse_processes``) is marked ``xdist_group``
    when pytest-xdist is loaded, so that ``--dist loadgroup`` runs it on one worker.
    """

    def collect(self) -> Iterator[Any]:
        _ = self.obj  # markers of the class are read when its object is first fetched
        self._group_for_xdist()
        marker = self.get_closest_marker("world_size")
        sizes = _sizes(marker) if marker is not None else None
        for item in super().collect():
            if not isinstance(item, pytest.Function):
                yield item
                continue
            if sizes is None:
                yield MultiProcessTestCaseFunction.from_parent(self, name=item.name)
                continue
            for n in sizes:
                new = MultiProcessTestCaseFunction.from_parent(
                    self, name=f"{item.name}[ws{n}]", originalname=item.name
                )
                new.mpdist_world_size = n
                _pytest_internals.set_param_id(new, item.name, f"ws{n}")
                yield new

    def _group_for_xdist(self) -> None:
        if not self.config.pluginmanager.hasplugin("xdist"):
            return
        if self.get_closest_marker("xdist_group") is not None:
            return  # the user's own grouping
        if _config.reuse_processes(bool(getattr(self.obj, "reuse_processes", False))):
            self.add_marker(pytest.mark.xdist_group(name=f"mpdist:{self.nodeid}"))


def _sizes(marker: pytest.Mark) -> list[int]:
    sizes = list(marker.args)
    if len(sizes) == 1 and isinstance(sizes[0], (list, tuple, range)):
        sizes = list(sizes[0])
    if not sizes or not all(isinstance(n, int) and n >= 1 for n in sizes):
        raise ValueError(f"@pytest.mark.world_size needs positive integers, got {marker.args!r}")
    return sizes


def _harness_classes() -> tuple[type, ...]:
    """The harness's test case classes imported so far: a class can only derive from one
    once its module is imported (``mpdist.testing`` imports each on first use)."""
    found = []
    for module_name, class_name in (
        ("mpdist.testing.multiprocess", "MultiProcessTestCase"),
        ("mpdist.testing.multithreaded", "MultiThreadedTestCase"),
    ):
        cls = getattr(sys.modules.get(module_name), class_name, None)
        if isinstance(cls, type):
            found.append(cls)
    return tuple(found)


@pytest.hookimpl(tryfirst=True)
def pytest_pycollect_makeitem(collector: Any, name: str, obj: object) -> Any:
    if _UNITTEST_NODES is None or not isinstance(obj, type):
        return None
    bases = _harness_classes()
    if bases and issubclass(obj, bases):
        if obj in bases or not getattr(obj, "__test__", True):
            return None
        return MultiProcessTestCaseClass.from_parent(collector, name=name, obj=obj)
    return None


# -- mpdist-marked functions -------------------------------------------------------------------


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    marker = metafunc.definition.get_closest_marker("world_size")
    if marker is None:
        return
    sizes = _sizes(marker)
    if "world_size" not in metafunc.fixturenames:
        metafunc.fixturenames.append("world_size")
    metafunc.parametrize("world_size", sizes, ids=[f"ws{n}" for n in sizes])


@pytest.fixture
def world_size(request: pytest.FixtureRequest) -> int:
    """World size of an mpdist test (its marker's, else ``--ranks``, else ``$MPDIST_WORLD_SIZE``,
    else ini ``mpdist_ranks``, else 2)."""
    marker = request.node.get_closest_marker("mpdist")
    if marker is not None and marker.kwargs.get("world_size") is not None:
        return int(marker.kwargs["world_size"])
    return _config.default_world_size()


@pytest.fixture
def rank() -> int:
    """This rank's number inside an mpdist test (-1 in the parent process)."""
    return -1


def _marker_world_size(item: pytest.Function) -> tuple[pytest.Mark, int]:
    """The ``mpdist`` marker of ``item``, checked, and the world size its test runs at."""
    marker = item.get_closest_marker("mpdist")
    assert marker is not None
    unknown = set(marker.kwargs) - {"world_size", "backend", "timeout"}
    if marker.args or unknown:
        raise TypeError(
            f"@pytest.mark.mpdist takes world_size=, backend=, timeout= keywords, "
            f"got args={marker.args!r} kwargs={sorted(unknown)!r}"
        )
    world_size = item.funcargs.get("world_size")
    if not isinstance(world_size, int):
        world_size = marker.kwargs.get("world_size") or _config.default_world_size()
    _config.check_capacity(int(world_size))
    return marker, int(world_size)


def _run_in_threads(item: pytest.Function) -> None:
    """``backend="threaded"``: the ranks are threads of this process, as the threaded
    backend needs (one process per rank would give each its own world of one)."""
    from mpdist.testing.multithreaded import ThreadRanks, run_threads

    marker, world_size = _marker_world_size(item)
    kwargs = {name: item.funcargs[name] for name in _pytest_internals.requested_fixtures(item)}

    def body(rank: int) -> Any:
        mine = dict(kwargs)
        if "rank" in mine:
            mine["rank"] = rank
        if "world_size" in mine:
            mine["world_size"] = world_size
        return item.obj(**mine)

    ranks = ThreadRanks(world_size, body, seed=1234)
    run_threads(ranks, marker.kwargs.get("timeout"), item.nodeid, item.originalname)


def _function_spec(item: pytest.Function, workdir: str) -> tuple[TaskSpec, float | None]:
    import pickle

    from mpdist.testing._worker import TaskSpec
    from mpdist.testing.multiprocess import module_path

    marker, world_size = _marker_world_size(item)
    argnames = _pytest_internals.requested_fixtures(item)
    kwargs: dict[str, Any] = {}
    for name in argnames:
        value = item.funcargs[name]
        try:
            pickle.dumps(value)
        except Exception as exc:
            raise TypeError(
                f"fixture {name!r} of {item.nodeid} cannot be sent to the ranks "
                f"(not picklable: {exc}); mpdist tests take picklable fixtures "
                f"such as tmp_path, rank, world_size"
            ) from None
        kwargs[name] = value
    module = item.module
    assert module is not None
    debug = _config.debug_rank()
    if debug is not None and not 0 <= debug < world_size:
        debug = None
    spec = TaskSpec(
        kind="function",
        module=module.__name__,
        path=module_path(module.__name__),
        qualname=item.cls.__qualname__ if item.cls is not None else item.originalname,
        method=item.originalname,
        world_size=int(world_size),
        file_name=os.path.join(workdir, "store"),
        workdir=workdir,
        test_id=item.nodeid,
        rewrite=_pytest_internals.was_rewritten(module),
        backend=marker.kwargs.get("backend", "tcp"),
        funcargs=pickle.dumps(kwargs),
        env=dict(os.environ),
        sys_path=list(sys.path),
        cwd=os.getcwd(),
        debug_rank=debug,
    )
    timeout = None if debug is not None else _config.default_timeout(marker.kwargs.get("timeout"))
    return spec, timeout


@pytest.hookimpl(tryfirst=True)
def pytest_pyfunc_call(pyfuncitem: pytest.Function) -> bool | None:
    marker = pyfuncitem.get_closest_marker("mpdist")
    if marker is None:
        return None
    if marker.kwargs.get("backend") == "threaded":
        _run_in_threads(pyfuncitem)
        return True
    if _config.current().mpi:
        from mpdist.testing import _mpi_mode

        _mpi_mode.run_function(pyfuncitem)
        return True
    from mpdist.testing import _coordinator
    from mpdist.testing._report import raise_for, rerun_command
    from mpdist.testing.multiprocess import make_workdir, preload_for, remove_workdir

    workdir = make_workdir()
    try:
        spec, timeout = _function_spec(pyfuncitem, workdir)
        ctx = _coordinator.get_context(_config.start_method(None), preload_for(spec.module))
        outcome = _coordinator.run_ranks(spec, ctx=ctx, timeout=timeout)
        pyfuncitem.stash[_outcome_key] = outcome
        raise_for(outcome, rerun_command(pyfuncitem.nodeid, pyfuncitem.nodeid, spec.world_size))
    finally:
        remove_workdir(workdir)
    return True


# -- pytest-timeout ----------------------------------------------------------------------------


def _is_multi_rank(item: pytest.Item) -> bool:
    return isinstance(item, MultiProcessTestCaseFunction) or (
        isinstance(item, pytest.Function) and item.get_closest_marker("mpdist") is not None
    )


@pytest.hookimpl(optionalhook=True)
def pytest_timeout_set_timer(item: pytest.Item, settings: Any) -> bool | None:
    """pytest-timeout's deadline for a multi-rank test becomes the harness's.

    At the deadline every rank dumps its stacks and the process tree is killed: the
    test fails as a normal :class:`~mpdist.testing.MultiProcessTimeout`, which
    pytest-timeout's own methods (a signal in the parent, or ``os._exit`` of the whole
    session) could not give. pytest-timeout's timer still runs, ``TIMEOUT_BACKSTOP``
    seconds later, in case the harness itself hangs.
    """
    timeout = getattr(settings, "timeout", None)
    if not _is_multi_rank(item) or not timeout or timeout <= 0:
        return None
    _config.current().item_timeout = float(timeout)
    if _config.debug_rank() is not None:
        return True  # a rank on the terminal, maybe in a debugger: no deadline at all
    timeout_plugin = item.config.pluginmanager.get_plugin("timeout")
    set_timer = getattr(timeout_plugin, "pytest_timeout_set_timer", None)
    replace = getattr(settings, "_replace", None)
    if set_timer is not None and replace is not None:
        set_timer(item=item, settings=replace(timeout=float(timeout) + TIMEOUT_BACKSTOP))
    return True


@pytest.hookimpl(optionalhook=True)
def pytest_timeout_cancel_timer(item: pytest.Item) -> bool | None:
    """The test is over: its pytest-timeout deadline no longer applies (pytest-timeout's
    own hook then cancels the backstop)."""
    _config.current().item_timeout = None
    return None


# -- pytest-xdist ------------------------------------------------------------------------------


@pytest.hookimpl(optionalhook=True)
def pytest_xdist_auto_num_workers(config: pytest.Config) -> int | None:
    """``-n auto`` / ``-n logical``: as many workers as the usable cpus hold the run's ranks.

    The ranks are the run's default world size (``--ranks``, ``$MPDIST_WORLD_SIZE``, ini
    ``mpdist_ranks``, else the test classes' 4); ``$PYTEST_XDIST_AUTO_NUM_WORKERS`` wins.
    """
    if os.environ.get("PYTEST_XDIST_AUTO_NUM_WORKERS"):
        return None  # xdist's own hook reads it
    _config.push(_settings(config))  # called before pytest_configure pushes them
    try:
        ranks = _config.default_world_size(_config.CASE_DEFAULT_WORLD_SIZE)
    finally:
        _config.pop()
    return max(1, _config.usable_cpus() // max(1, ranks))


# -- reporting ---------------------------------------------------------------------------------


def _sections(outcome: Outcome) -> list[tuple[str, str]]:
    sections = []
    for r in outcome.results:
        for name, text in (("stdout", r.stdout), ("stderr", r.stderr)):
            if text:
                sections.append((f"Captured {name} rank {r.rank}", text))
    return sections


def _junit_sections(outcome: Outcome) -> list[tuple[str, str]]:
    """Every rank's output, each block headed ``--- rank k ---``, as junitxml reads it
    (from the teardown report, under ``Captured stdout`` / ``Captured stderr``)."""
    sections = []
    for name in ("stdout", "stderr"):
        blocks = [
            f"--- rank {r.rank} ---\n{text if text.endswith(chr(10)) else text + chr(10)}"
            for r in outcome.results
            if (text := getattr(r, name))
        ]
        if blocks:
            sections.append((f"Captured {name} ranks", "".join(blocks)))
    return sections


def _properties(outcome: Outcome) -> list[tuple[str, object]]:
    failed = [r.rank for r in outcome.results if r.status not in ("passed", "skipped")]
    first = "" if outcome.first_failure is None else str(outcome.first_failure)
    return [
        ("mpdist_world_size", str(outcome.world_size)),
        ("mpdist_failed_ranks", ",".join(map(str, failed))),
        ("mpdist_first_failing_rank", first),
        ("mpdist_timed_out", "yes" if outcome.timed_out else "no"),
    ]


def _set_properties(item: pytest.Item, outcome: Outcome) -> None:
    # Replaced, not appended: a rerun (pytest-rerunfailures) reuses the item.
    props = _properties(outcome)
    names = {name for name, _ in props}
    item.user_properties[:] = [p for p in item.user_properties if p[0] not in names] + props


@dataclasses.dataclass(frozen=True)
class _FailureLine:
    """Where a failed test is and its one-line summary (pytest's ``reprcrash`` protocol)."""

    path: str
    lineno: int
    message: str

    def toterminal(self, tw: Any) -> None:
        tw.line(str(self))

    def __str__(self) -> str:
        return f"{self.path}:{self.lineno}: {self.message}"


@dataclasses.dataclass(frozen=True)
class FailureRepr:
    """A failed multi-rank test's report: the full text, and its first line for summaries.

    pytest's short summary, JUnit's ``message`` attribute, ``--tb=line`` and
    pytest-rerunfailures' ``--only-rerun`` read ``longrepr.reprcrash.message``. Given a
    plain string instead, pytest's summary on CI (``$CI`` set) repeats all of it, every
    rank's traceback and stack dump, once more per failed test.
    """

    text: str
    reprcrash: _FailureLine

    def toterminal(self, tw: Any) -> None:
        for line in self.text.split("\n"):
            tw.line(line)

    def __str__(self) -> str:
        return self.text


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]) -> Any:
    report = yield
    if call.when == "setup":
        if _outcome_key in item.stash:  # a rerun starts without the last run's outcome
            del item.stash[_outcome_key]
        return report
    if call.when == "teardown":
        ran = item.stash.get(_outcome_key, None)
        if ran is not None and getattr(item.config.option, "xmlpath", None):
            report.sections.extend(_junit_sections(ran))
        return report
    failure_type = getattr(sys.modules.get("mpdist.testing._report"), "MultiProcessFailure", None)
    outcome: Outcome | None = None
    failure = None
    if (
        failure_type is not None
        and call.excinfo is not None
        and isinstance(call.excinfo.value, failure_type)
    ):
        failure = call.excinfo.value
        outcome = failure.outcome
    else:
        outcome = item.stash.get(_outcome_key, None)
        if outcome is None:
            # pytest's instance of a test case, the same the test ran on (teardown drops it).
            instance = item.instance if isinstance(item, pytest.Function) else None
            outcome = getattr(instance, "_mpdist_outcome", None)
    if outcome is None:
        return report
    from mpdist.testing._report import format_outcome

    item.stash[_outcome_key] = outcome
    _set_properties(item, outcome)
    report.user_properties = list(item.user_properties)
    sections = _sections(outcome)
    report.sections.extend(sections)
    if failure is not None and report.failed:
        text = format_outcome(outcome, include_output=False, rerun=failure.rerun)
        path, lineno, _ = item.location
        where = _FailureLine(path, 0 if lineno is None else lineno + 1, text.split("\n", 1)[0])
        report.longrepr = FailureRepr(text, where)
        if failure.rerun and sections:
            # The report ends with the command, after the per-rank output.
            report.sections.append(("rerun just this test", failure.rerun))
    return report
