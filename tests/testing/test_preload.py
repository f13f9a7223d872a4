"""The forkserver preloads the heavy packages of every test module, not only the first one's."""

from __future__ import annotations

import multiprocessing
import os
import sys
import textwrap
import threading
from typing import Any

import psutil
import pytest
from _harness_helpers import alive

from mpdist.testing import _coordinator, _preload

# Ranks note which forkserver forked them (their parent) and who imported the heavy package.
NOTE = """
import os
import sys
import pytest
import numpy as np
import mpdist as dist


def note(tag):
    path = os.path.join(os.environ["PID_DIR"], f"{tag}-{os.getpid()}")
    with open(path, "w") as f:
        f.write(str(os.getppid()))
"""

TESTS = """
@pytest.mark.mpdist(world_size=2)
def test_{i}(rank, world_size):
    note("{tag}")
    {check}
    a = np.ones(2)
    dist.all_reduce(a)
    assert a[0] == 2
"""


# In the ranks of the last module: the server stopped for the restart is already reaped
# (gone, not a zombie of the pytest process), while the session still runs.
OLD_SERVER_REAPED = """
def old_server_reaped():
    import psutil
    for name in os.listdir(os.environ["PID_DIR"]):
        if name.startswith("light1-"):
            with open(os.path.join(os.environ["PID_DIR"], name)) as f:
                assert not psutil.pid_exists(int(f.read()))
"""


def module(tag: str, header: str = "", tests: int = 2, check: str = "") -> str:
    body = NOTE + header + "".join(TESTS.format(i=i, tag=tag, check=check) for i in range(tests))
    return textwrap.dedent(body)


def servers(pid_dir: str, tag: str) -> set[int]:
    """The forkservers (parents) of the ranks that wrote notes tagged ``tag``."""
    found = set()
    for name in os.listdir(pid_dir):
        if name.startswith(tag + "-"):
            with open(os.path.join(pid_dir, name)) as f:
                found.add(int(f.read()))
    return found


def importers(pid_dir: str) -> set[int]:
    return {int(n.split("-")[1]) for n in os.listdir(pid_dir) if n.startswith("heavy-")}


def rank_pids(pid_dir: str) -> set[int]:
    return {
        int(n.rsplit("-", 1)[1])
        for n in os.listdir(pid_dir)
        if not n.startswith(("heavy-", "body-"))
    }


def test_a_later_module_with_a_heavy_package_gets_it_preloaded(
    pytester: pytest.Pytester, pid_dir: str
) -> None:
    # A package of many modules stands for torch or hypothesis; its import notes who ran it.
    pkg = pytester.mkpydir("heavypkg")
    for i in range(_preload.HEAVY_PACKAGE_MODULES + 5):
        (pkg / f"m{i}.py").write_text(f"VALUE = {i}\n")
    (pkg / "__init__.py").write_text(
        textwrap.dedent(
            f"""
            import os
            from heavypkg import {", ".join(f"m{i}" for i in range(_preload.HEAVY_PACKAGE_MODULES + 5))}
            open(os.path.join(os.environ["PID_DIR"], f"heavy-{{os.getpid()}}"), "w").close()
            """
        )
    )
    pytester.makepyfile(
        test_1_light=module("light1"),
        test_2_heavy=module("heavy_test", "import heavypkg\n", tests=3),
        test_3_light=module("light3", OLD_SERVER_REAPED, check="old_server_reaped()"),
    )
    result = pytester.runpytest_subprocess(
        "-p", "no:cacheprovider", "-p", "no:hypothesispytest", "-p", "no:randomly", timeout=120
    )
    result.assert_outcomes(passed=7)

    first, heavy, after = (servers(pid_dir, t) for t in ("light1", "heavy_test", "light3"))
    # One restart, for the heavy module; the light module after it needs none.
    assert len(first) == len(heavy) == 1
    assert first != heavy
    assert after == heavy
    # The package was imported by pytest's collection and by the new forkserver, never by a rank.
    assert heavy <= importers(pid_dir)
    assert not importers(pid_dir) & rank_pids(pid_dir)
    # Nothing outlives the session: the stopped server was reaped at once, the last one
    # ends with the pytest process (it sees the end of its "alive" pipe).
    _, left = psutil.wait_procs(
        [psutil.Process(p) for p in alive(sorted(first | heavy))], timeout=10
    )
    assert not left


def blocked() -> None:
    threading.Event().wait()


def test_a_forkserver_with_a_live_child_is_not_idle() -> None:
    ctx: Any = _coordinator.get_context("forkserver", [__name__])
    proc = ctx.Process(target=blocked)
    proc.start()
    try:
        server = psutil.Process(proc.pid).ppid()
        assert server == multiprocessing.forkserver._forkserver._forkserver_pid
        assert not _preload._idle(server)
    finally:
        proc.kill()
        proc.join()
        proc.close()
    assert _preload._idle(server)


def stand_in_torch(pytester: pytest.Pytester) -> None:
    """A package named torch, heavy enough to preload, that notes who imports it."""
    pkg = pytester.mkpydir("torch")
    names = [f"m{i}" for i in range(_preload.HEAVY_PACKAGE_MODULES + 5)]
    for name in names:
        (pkg / f"{name}.py").write_text("VALUE = 1\n")
    (pkg / "__init__.py").write_text(
        textwrap.dedent(
            f"""
            import os
            from torch import {", ".join(names)}
            open(os.path.join(os.environ["PID_DIR"], f"heavy-{{os.getpid()}}"), "w").close()
            """
        )
    )


def test_a_module_importing_torch_starts_the_forkserver_during_collection(
    pytester: pytest.Pytester, pid_dir: str
) -> None:
    # The plugin reads "import torch" off a process-harness test file before importing it
    # and starts the forkserver with torch preloaded, so the server's import runs beside
    # the parent's.
    stand_in_torch(pytester)
    pytester.makepyfile(
        test_uses_torch=module(
            "ranks",
            textwrap.dedent(
                """
                import multiprocessing.forkserver
                import torch

                def test_0_server_already_up():
                    # no multi-rank test has run yet
                    assert multiprocessing.forkserver._forkserver._forkserver_pid is not None
                """
            ),
        )
    )
    result = pytester.runpytest_subprocess("-p", "no:cacheprovider", "-p", "no:randomly")
    result.assert_outcomes(passed=3)
    (server,) = servers(pid_dir, "ranks")  # one server forked every rank: no restart
    assert server in importers(pid_dir)  # it preloaded "torch"
    assert not importers(pid_dir) & rank_pids(pid_dir)


def test_a_thread_harness_module_starts_no_forkserver(
    pytester: pytest.Pytester, pid_dir: str
) -> None:
    # Rank threads need no server: starting one would only import torch a second time.
    stand_in_torch(pytester)
    pytester.makepyfile(
        test_threads_only=textwrap.dedent(
            """
            import multiprocessing.forkserver
            import torch
            from mpdist.testing import MultiThreadedTestCase

            class TestThreads(MultiThreadedTestCase):
                torch_world = False
                world_size = 2

                def test_no_server(self):
                    assert multiprocessing.forkserver._forkserver._forkserver_pid is None
            """
        )
    )
    result = pytester.runpytest_subprocess("-p", "no:cacheprovider", "-p", "no:randomly")
    result.assert_outcomes(passed=1)
    assert len(importers(pid_dir)) == 1  # the test process only


# A test module that notes every process running its body, and a rank-side plain assert
# whose explanation only pytest's rewriting gives.
RUNS_NOTED = """
import os
import sys
open(os.path.join(os.environ["PID_DIR"], f"body-{os.getpid()}"), "w").close()
"""

EXPLAINED = """
@pytest.mark.mpdist(world_size=2)
def test_explained(rank, world_size):
    note("ranks")
    assert [1, 2, rank] == [1, 2, 7]
"""


def bodies(pid_dir: str) -> set[int]:
    return {int(n.split("-")[1]) for n in os.listdir(pid_dir) if n.startswith("body-")}


def test_the_forkserver_runs_the_test_module_so_no_rank_loads_it(
    pytester: pytest.Pytester, pid_dir: str
) -> None:
    # Started during collection of the module pytest was asked for (not of the first file
    # of its directory), the server runs that module, asserts rewritten, once; each rank
    # it forks finds the module loaded (a torch test module costs a rank 0.1-0.2 s).
    stand_in_torch(pytester)
    pytester.makepyfile(
        test_a_not_asked_for=module("other", RUNS_NOTED + "import torch\n"),
        test_b_asked_for=module("ranks", RUNS_NOTED + "import torch\n") + EXPLAINED,
    )
    result = pytester.runpytest_subprocess(
        "test_b_asked_for.py", "-p", "no:cacheprovider", "-p", "no:randomly"
    )
    result.assert_outcomes(passed=2, failed=1)
    result.stdout.fnmatch_lines(["*At index 2 diff: 0 != 7*"])  # rewritten in the rank
    (server,) = servers(pid_dir, "ranks")
    # the body ran twice: in pytest's process and in the server; never in a rank
    assert server in bodies(pid_dir) and len(bodies(pid_dir)) == 2
    assert not bodies(pid_dir) & rank_pids(pid_dir)
    assert not servers(pid_dir, "other")


def test_a_module_without_torch_runs_in_the_first_server_too(
    pytester: pytest.Pytester, pid_dir: str
) -> None:
    # No early start: the server starts with the first multi-rank test and runs its module.
    pytester.makepyfile(test_light=module("ranks", RUNS_NOTED) + EXPLAINED)
    result = pytester.runpytest_subprocess("-p", "no:cacheprovider", "-p", "no:randomly")
    result.assert_outcomes(passed=2, failed=1)
    result.stdout.fnmatch_lines(["*At index 2 diff: 0 != 7*"])
    (server,) = servers(pid_dir, "ranks")
    assert server in bodies(pid_dir)
    assert not bodies(pid_dir) & rank_pids(pid_dir)


def test_a_module_changed_since_it_ran_runs_again(tmp_path: Any) -> None:
    # A server (or pooled rank) that ran a test module must not hand out an old version.
    from mpdist.testing import _worker

    path = tmp_path / "mpdist_changed_module.py"
    name = "mpdist_changed_module"
    path.write_text("VALUE = 1\n")
    try:
        first = _worker._load_rewritten(name, str(path), None)
        assert _worker._load_rewritten(name, str(path), None) is first
        path.write_text("VALUE = 22\n")
        second = _worker._load_rewritten(name, str(path), None)
        assert (first.VALUE, second.VALUE) == (1, 22)
        assert sys.modules[name] is second
    finally:
        sys.modules.pop(name, None)
        _worker._rewritten.pop((name, str(path)), None)
