"""The mpi backend and the mpi:// rendezvous, each test a real ``mpiexec -n N`` job.

The scripts next to this file run under mpiexec and assert on every rank; here each job
is bounded by a timeout, its output checked, and its whole process tree must be gone
afterwards (a hang is killed and fails the test). Skipped without mpi4py or mpiexec.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import psutil
import pytest

pytest.importorskip("mpi4py")
MPIEXEC = shutil.which("mpiexec", path=os.path.dirname(sys.executable)) or shutil.which("mpiexec")
if MPIEXEC is None:
    pytest.skip("mpiexec is not installed (pip install 'mpdist[mpi]')", allow_module_level=True)

from mpdist._proctree import kill_tree  # noqa: E402

HERE = Path(__file__).parent


def _env() -> dict[str, str]:
    env = dict(os.environ)
    for var in ("MASTER_ADDR", "MASTER_PORT", "RANK", "WORLD_SIZE", "LOCAL_WORLD_SIZE"):
        env.pop(var, None)  # the scripts rely on MPI for the rendezvous
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(HERE), env.get("PYTHONPATH", "")]))
    return env


def mpirun(
    n: int, script: str, *args: str, timeout: float = 60.0, env: dict[str, str] | None = None
) -> str:
    """Run ``script`` on ``n`` MPI ranks; the ranks' reports, rank by rank, then the job's
    output. Fails on a non-zero exit or a timeout; either way no process of the job
    outlives the call."""
    with tempfile.TemporaryDirectory() as where:
        out = _job(n, script, args, timeout, {**(env or {}), "MPDIST_MPI_TEST_OUT": where})
        reports = [Path(where, f"rank{r}") for r in range(n)]
        return "".join(p.read_text() for p in reports if p.exists()) + out


def _job(n: int, script: str, args: tuple[str, ...], timeout: float, extra: dict[str, str]) -> str:
    cmd = [MPIEXEC, "-n", str(n), sys.executable, str(HERE / script), *args]
    proc = subprocess.Popen(
        cmd,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        env={**_env(), **extra},
        start_new_session=True,  # the job is its own process group: nothing escapes the sweep
    )
    tree = [proc.pid, *(c.pid for c in psutil.Process(proc.pid).children(recursive=True))]
    try:
        out, _ = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        kill_tree([proc.pid], [proc.pid])
        out, _ = proc.communicate()
        pytest.fail(f"mpiexec -n {n} {script} {' '.join(args)} hung for {timeout} s:\n{out}")
    finally:
        kill_tree([proc.pid], [proc.pid], grace=0.5)
        left = [p for p in tree if psutil.pid_exists(p) and _alive(p)]
        left += [p.pid for p in psutil.process_iter() if _in_group(p, proc.pid)]
        assert not left, f"processes of the mpiexec job outlived it: {left}"
    assert proc.returncode == 0, f"mpiexec -n {n} {script} exited {proc.returncode}:\n{out}"
    return out


def _alive(pid: int) -> bool:
    try:
        return psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False


def _in_group(p: psutil.Process, pgid: int) -> bool:
    try:
        return os.getpgid(p.pid) == pgid and p.status() != psutil.STATUS_ZOMBIE
    except (ProcessLookupError, psutil.NoSuchProcess):
        return False


@pytest.mark.parametrize(("n", "check"), [(1, "1"), (2, "1"), (3, "1"), (4, "1"), (3, "0")])
def test_every_collective_equals_tcp(n: int, check: str) -> None:
    """check "0": the same with the header check off (MPDIST_MPI_CHECK_SHAPES=0)."""
    out = mpirun(n, "_collectives.py", timeout=90, env={"MPDIST_MPI_CHECK_SHAPES": check})
    oks = sorted(line.split()[1] for line in out.splitlines() if line.startswith("ok "))
    assert oks == sorted(str(r) for r in range(n)), out
    # every rank ran every comparison (hundreds: dtypes x shapes x ops x collectives)
    counts = {line.split()[2] for line in out.splitlines() if line.startswith("ok ")}
    assert len(counts) == 1 and int(counts.pop()) > 600, out


def test_mismatches_give_a_clear_error_on_every_rank() -> None:
    out = mpirun(2, "_mismatch.py")
    cases = {}
    for line in out.splitlines():
        if line.startswith("case "):
            head, _, text = line.partition(": ")
            cases[head[5:]] = text
    expected = {
        "shape": "mismatch between rank {me} and rank {other} in collective #1: ",
        "dtype": "dtype float",
        "reshape": "different shapes on rank {me} and rank {other}",
        # the headers of calls seen before are kept, not rebuilt: still compared
        "reshape again": "different shapes on rank {me} and rank {other}",
        "agreed before": "bytes on rank {me} vs ",
        "op": "called ",
        "root": "root {me} on rank {me} vs root {other} on rank {other}",
        "redop": "reduce op ",
        "alltoall": "rank 1 expected a block of 24 bytes from rank 0 but rank 0 sends 16 bytes",
        "async": "all_reduce: mismatch between rank {me} and rank {other}",
    }
    for name, text in expected.items():
        for me in (0, 1):
            got = cases.get(f"{name} rank {me}")
            assert got is not None and text.format(me=me, other=1 - me) in got, (name, me, out)
    assert "16 bytes on rank 0 vs 20 bytes on rank 1" in cases["shape rank 0"]
    assert "rank 0 called all_reduce but rank 1 called broadcast" in cases["op rank 0"]
    assert "reduce op MAX on rank 1 vs SUM on rank 0" in cases["redop rank 1"]
    assert (
        "recv: rank 1 posted a receive of 24 bytes (float64) with tag 0 but rank 0 sent 40"
        in (cases["recv rank 1"])
    )
    assert "Rank 1 failed to pass monitoredBarrier in 500 ms" in cases["monitored rank 0"]
    assert "waiting for rank 0 to release it" in cases["monitored rank 1"]
    assert "done 0" in out and "done 1" in out


def test_direct_list_calls_that_disagree_raise_before_sending() -> None:
    out = mpirun(2, "_direct_lists.py")
    assert "rank 0 raised 7" in out and "rank 1 raised 7" in out, out


def test_ddp_trains_the_same_as_on_tcp() -> None:
    out = mpirun(2, "_ddp_and_rendezvous.py", "ddp")
    assert "ok 0" in out and "ok 1" in out


@pytest.mark.parametrize("part", ["bare", "explicit"])
def test_mpi_rendezvous(part: str) -> None:
    out = mpirun(3 if part == "bare" else 2, "_ddp_and_rendezvous.py", part)
    assert out.count("ok ") == (3 if part == "bare" else 2), out


def test_mpdist_never_imports_mpi4py_unasked() -> None:
    code = (
        "import sys, mpdist, mpdist.distributed, mpdist.nn, mpdist.parallel, mpdist.backends;"
        "assert 'mpi4py' not in sys.modules, 'imported'"
    )
    subprocess.run([sys.executable, "-c", code], check=True, timeout=60, env=_env())


def test_launcher_detection() -> None:
    from mpdist.store.rendezvous import _mpi_launched

    assert _mpi_launched({"PMI_SIZE": "2", "PMI_RANK": "0"})
    assert _mpi_launched({"OMPI_COMM_WORLD_SIZE": "2"})
    assert not _mpi_launched({"PMI_SIZE": "2", "MASTER_ADDR": "h"})  # env:// asked for
    assert not _mpi_launched({"PMI_SIZE": "2", "RANK": "0"})
    assert not _mpi_launched({})


def test_check_shapes_option() -> None:
    from mpdist.backends.mpi import MpiOptions, check_shapes_default

    assert check_shapes_default(None) is (os.environ.get("MPDIST_MPI_CHECK_SHAPES") != "0")
    assert check_shapes_default(MpiOptions(check_shapes=False)) is False
    assert check_shapes_default({"check_shapes": False}) is False
    assert check_shapes_default(MpiOptions(check_shapes=True)) is True
