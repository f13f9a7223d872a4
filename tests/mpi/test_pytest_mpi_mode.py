"""``mpiexec -n N python -m pytest --mpi``: a generated test file run by real MPI jobs.

Each job is a subprocess bounded by a timeout; its exit status and rank 0's report are
checked, and no process of the job may outlive it. Skipped without mpi4py or mpiexec.
"""

from __future__ import annotations

import contextlib
import glob
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path
from xml.etree import ElementTree

import psutil
import pytest

pytest.importorskip("mpi4py")
MPIEXEC = shutil.which("mpiexec", path=os.path.dirname(sys.executable)) or shutil.which("mpiexec")
if MPIEXEC is None:
    pytest.skip("mpiexec is not installed (pip install 'mpdist[mpi]')", allow_module_level=True)

from mpdist._proctree import kill_tree  # noqa: E402

TESTS = """
import time
import numpy as np
import pytest
from mpdist import distributed as dist
from mpdist.testing import MultiProcessTestCase

@pytest.mark.mpdist
def test_sum(rank, world_size, tmp_path):
    a = np.full(3, float(rank))
    dist.all_reduce(a)
    assert (a == sum(range(world_size))).all()
    (tmp_path / f"rank{rank}").write_text("here")
    dist.barrier()
    assert len(list(tmp_path.iterdir())) == world_size  # one tmp_path, rank 0's, for all

@pytest.mark.mpdist
def test_rank_one_fails(rank, world_size):
    print(f"rank {rank} says hello")
    if rank == 1:
        raise ValueError(f"boom from rank 1 of {world_size}")
    a = np.ones(2)
    dist.all_reduce(a)

@pytest.mark.mpdist(world_size=7)
def test_seven_ranks(rank):
    raise AssertionError("never runs")

class TestCase(MultiProcessTestCase):
    def test_case_sees_the_world(self):
        assert 0 <= self.rank < self.world_size

@pytest.mark.mpdist
def test_group_back_after_a_failure(rank, world_size):
    a = np.ones(2)
    dist.all_reduce(a)
    assert a[0] == world_size == dist.get_world_size()
"""

HANG = """
import time
import numpy as np
import pytest
from mpdist import distributed as dist

@pytest.mark.mpdist
def test_before(rank):
    pass

@pytest.mark.mpdist(timeout=3)
def test_rank_one_hangs(rank):
    if rank == 1:
        print("rank 1 goes to sleep")
        time.sleep(600)
    a = np.ones(2)
    dist.all_reduce(a)

@pytest.mark.mpdist
def test_never_reached(rank):
    pass
"""


# MPICH's mpiexec (hydra) keeps a topology file in /tmp, whatever $TMPDIR says, and leaves it
# there when a job ends in MPI_Abort (a hang, a rank's os._exit): not ours to keep, but not
# to leave behind either.
_HYDRA_FILES = "/tmp/hydra_hwloc_xmlfile_*"


def _mpich_segments() -> set[str]:
    try:
        return {n for n in os.listdir("/dev/shm") if n.startswith("mpich_shm_")}
    except OSError:
        return set()


def _mapped_segments() -> set[str]:
    """The MPI segments some live process has mapped (another MPI job's on the machine)."""
    mapped = set()
    for pid in psutil.pids():
        with contextlib.suppress(OSError), open(f"/proc/{pid}/maps") as f:
            mapped.update(re.findall(r"/dev/shm/(mpich_shm_\S+)", f.read()))
    return mapped


def _run(
    n: int, where: str, *args: str, timeout: float = 120.0, cache: bool = False
) -> tuple[int, str]:
    """Run pytest --mpi on ``n`` ranks in ``where``: (exit status, output). Whatever the
    outcome, no process of the job outlives the call, and it leaves nothing behind: no
    MPI shared-memory segment, nothing in its temp directory (its own, so that other
    jobs on the machine do not count) but pytest's ``tmp_path`` base. A job that
    outlives ``timeout`` fails the test."""
    env = dict(os.environ)
    for var in ("MASTER_ADDR", "MASTER_PORT", "RANK", "WORLD_SIZE", "MPDIST_WORLD_SIZE"):
        env.pop(var, None)
    shm_before = _mpich_segments()
    hydra_before = set(glob.glob(_HYDRA_FILES))
    tmp = tempfile.mkdtemp(prefix="mpi-job-")
    env["TMPDIR"] = tmp
    try:
        code, out = _job(n, where, args, timeout, cache, env)
        left = [name for name in os.listdir(tmp) if not name.startswith("pytest-of-")]
        assert not left, f"the job left files in its temp directory: {left}\n{out}"
        leaked = _mpich_segments() - shm_before - _mapped_segments()
        assert not leaked, f"the job left MPI segments {leaked}\n{out}"
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
        for path in set(glob.glob(_HYDRA_FILES)) - hydra_before:
            with contextlib.suppress(OSError):
                os.unlink(path)
    return code, out


def _job(
    n: int, where: str, args: tuple[str, ...], timeout: float, cache: bool, env: dict[str, str]
) -> tuple[int, str]:
    cmd = [MPIEXEC, "-n", str(n), sys.executable, "-m", "pytest", "--mpi"]
    cmd += [] if cache else ["-p", "no:cacheprovider"]
    cmd += ["-p", "no:randomly", *args]
    proc = subprocess.Popen(
        cmd,
        cwd=where,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        env=env,
        start_new_session=True,
    )
    try:
        out, _ = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        kill_tree([proc.pid], [proc.pid])
        out, _ = proc.communicate()
        pytest.fail(f"pytest --mpi on {n} ranks hung for {timeout} s:\n{out}")
    finally:
        kill_tree([proc.pid], [proc.pid], grace=0.5)
        left = [p.pid for p in psutil.process_iter() if _in_group(p, proc.pid)]
        assert not left, f"processes of the mpiexec job outlived it: {left}"
    return proc.returncode, out


def _in_group(p: psutil.Process, pgid: int) -> bool:
    try:
        return os.getpgid(p.pid) == pgid and p.status() != psutil.STATUS_ZOMBIE
    except (ProcessLookupError, psutil.NoSuchProcess):
        return False


@pytest.mark.parametrize("n", [2, 3])
def test_outcomes_reported_once_by_rank_zero(pytester: pytest.Pytester, n: int) -> None:
    pytester.makepyfile(test_generated=TESTS)
    code, out = _run(n, str(pytester.path), "-v", "-rs", "test_generated.py")
    assert code == 1, out
    # one line per test: only rank 0's session writes
    for name, verdict in [
        ("test_sum", "PASSED"),
        ("test_rank_one_fails", "FAILED"),
        ("test_seven_ranks", "SKIPPED"),
        ("test_case_sees_the_world", "PASSED"),
        ("test_group_back_after_a_failure", "PASSED"),
    ]:
        lines = [ln for ln in out.splitlines() if f"::{name} {verdict}" in ln]
        assert len(lines) == 1, (name, verdict, out)
    assert "3 passed, 1 skipped" in out and "1 failed" in out, out
    # the failing rank's traceback, once, first in the report, naming the rank
    assert out.count('raise ValueError(f"boom from rank 1 of {world_size}")') == 1, out
    assert out.count(f"rank 1: ValueError: boom from rank 1 of {n}") == 1, out
    assert f"test_rank_one_fails failed in rank 1 (world size {n})" in out, out
    assert "after losing a peer (rank 1 failed first)" in out, out
    for rank in range(n):
        assert f"rank {rank} says hello" in out, out  # every rank's output, in rank 0's report
    assert f"mpiexec -n {n} python -m pytest --mpi test_generated.py::test_rank_one_fails" in out
    assert f"world size 7 is not the MPI communicator's {n}" in out, out


def test_all_passing_run_exits_zero(pytester: pytest.Pytester) -> None:
    pytester.makepyfile(test_generated=TESTS)
    code, out = _run(2, str(pytester.path), "test_generated.py", "-k", "sum or case")
    assert code == 0, out
    assert "2 passed, 3 deselected" in out, out


@pytest.mark.parametrize("n", [2, 3])
def test_a_hang_ends_the_run_with_every_stack(pytester: pytest.Pytester, n: int) -> None:
    pytester.makepyfile(test_hang=HANG)
    # MPI_Abort kills the ranks before their clean-up: _run checks nothing stays behind
    code, out = _run(
        n, str(pytester.path), "test_hang.py", "--junitxml=out.xml", timeout=60, cache=True
    )
    assert code != 0, out
    assert "test_hang.py::test_rank_one_hangs timed out: the run ends (MPI_Abort)" in out, out
    assert f"timed out after 3 s (world size {n})" in out, out
    for rank in range(n):
        assert f"--- rank {rank} stack dump ---" in out, out
    # rank 1's stack shows where it sleeps; its peers wait in the all_reduce
    assert out.count("in test_rank_one_hangs") >= n, out
    assert "last collective entered: all_reduce" in out, out
    assert "rank 1 goes to sleep" in out, out
    # what pytest does after a test and at the end, before the abort: the report of the
    # test (once), the summary, the JUnit file, the cache
    assert out.count("--- rank 0 stack dump ---") == 1, out
    assert "FAILED test_hang.py::test_rank_one_hangs - " in out, out
    assert "the run ends here (MPI_Abort), 1 test not run" in out, out
    assert re.search(r"=+ 1 failed, 1 passed in [\d.]+s", out), out
    suite = ElementTree.parse(pytester.path / "out.xml").getroot().find("testsuite")
    assert suite is not None
    assert (suite.get("tests"), suite.get("failures")) == ("2", "1"), out
    hung = next(c for c in suite.iter("testcase") if c.get("name") == "test_rank_one_hangs")
    failure = hung.find("failure")
    assert failure is not None and f"timed out after 3 s (world size {n})" in (
        failure.get("message") or ""
    )
    assert "--- rank 1 stack dump ---" in (failure.text or "")
    assert float(hung.get("time") or 0) >= 3.0
    props = {p.get("name"): p.get("value") for p in hung.iter("property")}
    assert props["mpdist_timed_out"] == "yes", props
    last_failed = json.loads((pytester.path / ".pytest_cache/v/cache/lastfailed").read_text())
    assert list(last_failed) == ["test_hang.py::test_rank_one_hangs"]


def test_only_rank_zero_writes_junit_xml_and_the_cache(pytester: pytest.Pytester) -> None:
    # pytest expands environment variables in both paths, so each rank names its own file
    # (PMI_RANK: MPICH's): a rank that writes leaves its file behind.
    pytester.makepyfile(test_generated=TESTS)
    code, out = _run(
        2,
        str(pytester.path),
        "test_generated.py",
        "--junitxml=out-$PMI_RANK.xml",
        "-o",
        "junit_logging=out-err",
        "-o",
        "cache_dir=cache-$PMI_RANK",
        cache=True,
    )
    assert code == 1, out
    assert not (pytester.path / "out-1.xml").exists(), out
    assert not (pytester.path / "cache-1").exists(), out
    last_failed = json.loads((pytester.path / "cache-0/v/cache/lastfailed").read_text())
    assert list(last_failed) == ["test_generated.py::test_rank_one_fails"]
    suite = ElementTree.parse(pytester.path / "out-0.xml").getroot().find("testsuite")
    assert suite is not None
    assert (suite.get("tests"), suite.get("failures"), suite.get("skipped")) == ("5", "1", "1")
    cases = {c.get("name"): c for c in suite.iter("testcase")}
    assert set(cases) == {
        "test_sum",
        "test_rank_one_fails",
        "test_seven_ranks",
        "test_case_sees_the_world",
        "test_group_back_after_a_failure",
    }
    failing = cases["test_rank_one_fails"]
    failure = failing.find("failure")
    assert failure is not None and "boom from rank 1 of 2" in (failure.text or ""), out
    system_out = failing.findtext("system-out") or ""
    # the test's rank blocks, each rank's output once, in rank order
    assert system_out.count("--- rank 0 ---\nrank 0 says hello") == 1, system_out
    assert system_out.count("--- rank 1 ---\nrank 1 says hello") == 1, system_out
    assert system_out.index("--- rank 0 ---") < system_out.index("--- rank 1 ---")
    props = {p.get("name"): p.get("value") for p in failing.iter("property")}
    assert props["mpdist_first_failing_rank"] == "1" and props["mpdist_world_size"] == "2", props


# -- start-up: a rank that cannot start with the others ends the run at once, named ------

PASSING = """
import pytest

@pytest.mark.mpdist
def test_one(rank):
    pass
"""

# Each entry: the file whose content makes one rank differ (ONLY is the rank that runs
# the odd part), and what rank 0's report must say.
START_UP = {
    "collection error": (
        "test_gen.py",
        "import os\nif os.environ['PMI_RANK'] == 'ONLY':\n"
        "    raise RuntimeError('rank ONLY cannot import this')\n" + PASSING,
        [
            "rank ONLY failed to collect test_gen.py",
            "RuntimeError: rank ONLY cannot import this",
        ],
    ),
    "conftest ImportError": (
        "conftest.py",
        "import os\nif os.environ['PMI_RANK'] == 'ONLY':\n    import no_such_module_here\n",
        [
            "rank ONLY left before the tests started: ModuleNotFoundError while loading conftest",
            "No module named 'no_such_module_here'",
        ],
    ),
    "os._exit(0)": (
        "test_gen.py",
        "import os\nif os.environ['PMI_RANK'] == 'ONLY':\n    os._exit(0)\n" + PASSING,
        ["rank ONLY left before the tests started: it called os._exit(0) at", "test_gen.py:3"],
    ),
    "another test list": (
        "test_gen.py",
        PASSING + "import os\nif os.environ['PMI_RANK'] == 'ONLY':\n"
        "    def test_extra():\n        pass\n",
        ["rank ONLY collected 2 tests, rank 0 1: rank ONLY also has test_gen.py::test_extra"],
    ),
    "another order": (
        "test_gen.py",
        # pytest orders a module's tests by their lines: rank ONLY defines test_b first
        "import os\nif os.environ['PMI_RANK'] == 'ONLY':\n    def test_b():\n        pass\n"
        + PASSING
        + "if os.environ['PMI_RANK'] != 'ONLY':\n    def test_b():\n        pass\n",
        ["rank ONLY collected 2 tests, rank 0 2: test 1 is test_gen.py::test_b in rank ONLY"],
    ),
}


@pytest.mark.parametrize(
    ("case", "n", "odd"),
    [(case, 2, 1) for case in START_UP] + [("collection error", 3, 0), ("os._exit(0)", 3, 2)],
)
def test_a_rank_that_cannot_start_ends_the_run_named(
    pytester: pytest.Pytester, case: str, n: int, odd: int
) -> None:
    name, source, expected = START_UP[case]
    if name != "test_gen.py":
        pytester.makepyfile(test_gen=PASSING)
    (pytester.path / name).write_text(source.replace("ONLY", str(odd)))
    code, out = _run(n, str(pytester.path), "-p", "no:faulthandler", timeout=60)
    assert code != 0, out
    assert "pytest --mpi: the ranks did not start alike" in out, out
    for text in expected:
        assert text.replace("ONLY", str(odd)) in out, out
    assert "(no test ran)" in out, out
    assert "passed" not in out, out


def test_a_rank_stuck_in_collection_ends_the_run(pytester: pytest.Pytester) -> None:
    pytester.makepyfile(
        test_gen="import os, time\nif os.environ['PMI_RANK'] == '1':\n    time.sleep(600)\n"
        + PASSING
    )
    code, out = _run(2, str(pytester.path), "--mp-timeout=3", timeout=60)
    assert code != 0, out
    assert "rank 1 did not finish collecting within 3 s of rank 0" in out, out


# -- what only rank 0 writes: Hypothesis's example database, --basetemp ---------------

HYPOTHESIS_TESTS = """
import os
import pytest
from hypothesis import given, settings, strategies as st

@settings(max_examples=20, deadline=None)
@given(st.integers(0, 100))
def test_decorated(x):
    assert x < 50

@given(st.integers(0, 100))
def test_plain(x):
    assert x < 50

@pytest.mark.mpdist
def test_spmd(rank, tmp_path):
    assert tmp_path.exists()

def test_where(tmp_path_factory):
    with open(f"basetemp-{os.environ['PMI_RANK']}", "w") as f:
        f.write(str(tmp_path_factory.getbasetemp()))
"""

# Each rank's database in a place of its own (named by rank), so that a rank that writes
# shows: the default database (under Hypothesis's storage directory), or a profile's.
HYPOTHESIS_CONFTESTS = {
    # Hypothesis's own default profile: on CI ($CI set) it loads its "ci" one, which keeps
    # no database at all
    "default": "import os\n"
    "from hypothesis import settings\n"
    "os.environ['HYPOTHESIS_STORAGE_DIRECTORY'] = 'hyp-' + os.environ['PMI_RANK']\n"
    "settings.load_profile('default')\n",
    "a profile": "import os\n"
    "from hypothesis import settings\n"
    "from hypothesis.database import DirectoryBasedExampleDatabase\n"
    "db = DirectoryBasedExampleDatabase('hyp-' + os.environ['PMI_RANK'] + '/examples')\n"
    "settings.register_profile('mine', database=db, max_examples=30)\n"
    "settings.load_profile('mine')\n",
}


@pytest.mark.parametrize("database", list(HYPOTHESIS_CONFTESTS))
def test_only_rank_zero_writes_the_hypothesis_database_and_basetemp(
    pytester: pytest.Pytester, database: str
) -> None:
    pytest.importorskip("hypothesis")
    pytester.makeconftest(HYPOTHESIS_CONFTESTS[database])
    pytester.makepyfile(test_hyp=HYPOTHESIS_TESTS)
    code, out = _run(2, str(pytester.path), "--basetemp=bt", "test_hyp.py")
    assert code == 1, out
    assert "2 failed, 2 passed" in out, out

    def saved(rank: int) -> list[Path]:
        examples = pytester.path / f"hyp-{rank}" / "examples"
        return [p for p in examples.rglob("*") if p.is_file()] if examples.exists() else []

    assert saved(0), out  # the failing examples, saved by rank 0
    assert not saved(1), [str(p) for p in saved(1)]
    assert (pytester.path / "basetemp-0").read_text() == str(pytester.path / "bt")
    assert (pytester.path / "basetemp-1").read_text() != str(pytester.path / "bt")


# -- a rank that calls os._exit once the tests run: mpiexec would end the job silently ----

EXITS = """
import os
import numpy as np
import pytest
from mpdist import distributed as dist

@pytest.mark.mpdist
def test_first(rank):
    pass

def test_plain():
    if os.environ["PMI_RANK"] == "PLAIN":
        os._exit(0)

@pytest.mark.mpdist
def test_exits(rank):
    print(f"rank {rank} is here")
    # every rank has printed before one exits: the report must carry both lines
    dist.barrier()
    if rank == SPMD:
        os._exit(0)
    a = np.ones(2)
    dist.all_reduce(a)

@pytest.mark.mpdist
def test_never_reached(rank):
    pass
"""


@pytest.mark.parametrize("who", [0, 1])
def test_os_exit_in_a_test_ends_the_run_with_its_report(
    pytester: pytest.Pytester, who: int
) -> None:
    pytester.makepyfile(test_exits=EXITS.replace("PLAIN", "none").replace("SPMD", str(who)))
    code, out = _run(2, str(pytester.path), "--junitxml=out.xml", "test_exits.py", timeout=60)
    assert code != 0, out
    assert f"test_exits.py::test_exits rank {who} called os._exit(0): the run ends" in out, out
    assert f"FAILED test_exits.py::test_exits - rank {who}: called os._exit(0) in the test" in out
    assert f"test_exits failed in rank {who} (world size 2)" in out, out
    assert 'File "' in out and "os._exit(0)" in out, out  # where it was called
    assert f"rank {1 - who}: killed after rank {who} failed" in out, out
    assert "rank 0 is here" in out and "rank 1 is here" in out, out
    assert "the run ends here (MPI_Abort), 1 test not run" in out, out
    assert re.search(r"=+ 1 failed, 2 passed in [\d.]+s", out), out
    suite = ElementTree.parse(pytester.path / "out.xml").getroot().find("testsuite")
    assert suite is not None and (suite.get("tests"), suite.get("failures")) == ("3", "1")


def test_os_exit_outside_a_multi_rank_test_ends_the_run(pytester: pytest.Pytester) -> None:
    pytester.makepyfile(test_exits=EXITS.replace("PLAIN", "1").replace("SPMD", "-1"))
    code, out = _run(2, str(pytester.path), "test_exits.py", timeout=60)
    assert code != 0, out
    where = "rank 1 called os._exit(0) in test_exits.py::test_plain (not a multi-rank test)"
    assert f"{where}: the run ends (MPI_Abort)" in out, out
    assert f"! --mpi: {where}; the run ends here (MPI_Abort) !" in out, out
