"""The mpdist pytest plugin, registered through the ``pytest11`` entry point.

It adds the command-line options shared by every multi-rank test
(``--ranks``, ``--mp-timeout``, ``--mp-start-method``, ``--mp-debug-rank``),
the markers ``world_size(*sizes)`` and ``mpdist(world_size=None, backend="tcp")``,
the fixtures ``rank`` and ``world_size``, and the reporting: one outcome per
test with every rank's traceback, per-rank output as report sections, and a
command that reruns just the failing test.

Usage::

    @pytest.mark.world_size(2, 4)           # test_sum[ws2], test_sum[ws4]
    @pytest.mark.mpdist                     # body runs in every rank, group initialized
    def test_sum(rank, world_size, tmp_path):   # tmp_path is shared by the ranks
        a = np.full(3, rank); dist.all_reduce(a)
        assert (a == sum(range(world_size))).all()

    pytest --ranks 4 --mp-timeout 60          # default world size, per-test deadline
    pytest --mp-debug-rank 1 -k test_sum      # rank 1 on the terminal: breakpoint() works
    pytest -n auto                            # xdist: no port or file clashes
"""

from __future__ import annotations

import multiprocessing
import os
import pickle
import re
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from mpdist.testing import _config, _coordinator, _pool, _preload, _pytest_internals
from mpdist.testing._coordinator import Outcome
from mpdist.testing._report import MultiProcessFailure, format_outcome, raise_for, rerun_command
from mpdist.testing._worker import TaskSpec
from mpdist.testing.multiprocess import (
    MultiProcessTestCase,
    make_workdir,
    module_path,
    preload_for,
    remove_workdir,
)
from mpdist.testing.multithreaded import MultiThreadedTestCase


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
        "--mp-debug-rank",
        type=int,
        default=None,
        metavar="K",
        help="run rank K attached to the terminal (breakpoint() works), no timeout "
        "(also $MPDIST_DEBUG_RANK)",
    )


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line(
        "markers",
        "world_size(*sizes): run the test once per world size (test ids [ws2], [ws4], ...); "
        "for MultiProcessTestCase classes and mpdist function tests",
    )
    config.addinivalue_line(
        "markers",
        'mpdist(world_size=None, backend="tcp", timeout=None): run this test function in '
        "every rank with the default process group initialized; fixtures rank and world_size",
    )
    rerun: list[str] = []
    if config.option.mp_start_method:
        rerun += ["--mp-start-method", config.option.mp_start_method]
    _config.push(
        _config.Settings(
            ranks=config.option.ranks,
            timeout=config.option.mp_timeout,
            start_method=config.option.mp_start_method,
            debug_rank=config.option.mp_debug_rank,
            rerun_args=tuple(rerun),
            under_pytest=True,
        )
    )


# The torch modules a test file imports, read off its source before pytest imports it.
_TORCH_IMPORTS = re.compile(rb"^[ \t]*(?:from|import)[ \t]+(torch(?:\.\w+)*)", re.MULTILINE)
# What starts rank processes (a module using only MultiThreadedTestCase needs no server).
_PROCESS_HARNESS = re.compile(
    rb"MultiProcessTestCase|DistributedTestBase|MultiProcContinuousTest|spawn_ranks|mark\.mpdist"
)
_early_start_key = pytest.StashKey[bool]()
# The outcome of an mpdist-marked function, for its report.
_outcome_key = pytest.StashKey[Outcome]()


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
    try:
        source = file_path.read_bytes()
    except OSError:
        return
    modules = [m.decode() for m in _TORCH_IMPORTS.findall(source)]
    if not modules or b"mpdist" not in source or not _PROCESS_HARNESS.search(source):
        return
    config.stash[_early_start_key] = True
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
    _pool.close_all()
    _config.pop()


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


class MultiProcessTestCaseClass(_CaseCollector):
    """Collects MultiProcessTestCase methods, one item per size of a ``world_size`` marker."""

    def collect(self) -> Iterator[Any]:
        _ = self.obj  # markers of the class are read when its object is first fetched
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


def _sizes(marker: pytest.Mark) -> list[int]:
    sizes = list(marker.args)
    if len(sizes) == 1 and isinstance(sizes[0], (list, tuple, range)):
        sizes = list(sizes[0])
    if not sizes or not all(isinstance(n, int) and n >= 1 for n in sizes):
        raise ValueError(f"@pytest.mark.world_size needs positive integers, got {marker.args!r}")
    return sizes


@pytest.hookimpl(tryfirst=True)
def pytest_pycollect_makeitem(collector: Any, name: str, obj: object) -> Any:
    if _UNITTEST_NODES is None:
        return None
    if isinstance(obj, type) and issubclass(obj, (MultiProcessTestCase, MultiThreadedTestCase)):
        if obj in (MultiProcessTestCase, MultiThreadedTestCase) or not getattr(
            obj, "__test__", True
        ):
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
    """World size of an mpdist test (its marker's, else ``--ranks``, else ``$MPDIST_WORLD_SIZE``, else 2)."""
    marker = request.node.get_closest_marker("mpdist")
    if marker is not None and marker.kwargs.get("world_size") is not None:
        return int(marker.kwargs["world_size"])
    return _config.default_world_size()


@pytest.fixture
def rank() -> int:
    """This rank's number inside an mpdist test (-1 in the parent process)."""
    return -1


def _function_spec(item: pytest.Function, workdir: str) -> tuple[TaskSpec, float | None]:
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
    if pyfuncitem.get_closest_marker("mpdist") is None:
        return None
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


# -- reporting ---------------------------------------------------------------------------------


def _sections(outcome: Outcome) -> list[tuple[str, str]]:
    sections = []
    for r in outcome.results:
        for name, text in (("stdout", r.stdout), ("stderr", r.stderr)):
            if text:
                sections.append((f"Captured {name} rank {r.rank}", text))
    return sections


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]) -> Any:
    report = yield
    if call.when != "call":
        return report
    outcome: Outcome | None = None
    failure = None
    if call.excinfo is not None and isinstance(call.excinfo.value, MultiProcessFailure):
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
    sections = _sections(outcome)
    report.sections.extend(sections)
    if failure is not None and report.failed:
        report.longrepr = format_outcome(outcome, include_output=False, rerun=failure.rerun)
        if failure.rerun and sections:
            # The report ends with the command, after the per-rank output.
            report.sections.append(("rerun just this test", failure.rerun))
    return report
