"""``python -m mpdist bench --vs mpi``: the mpi backend and raw mpi4py timed under an
``mpiexec`` the bench starts itself, their columns next to gloo's; a job that dies or
stalls is an error, never a hang, and leaves no process behind. Only the table's shape
is checked; nothing is timed here. The runs skip without mpi4py or mpiexec."""

from __future__ import annotations

import importlib.util
import os
import stat
from collections.abc import Callable
from pathlib import Path

import psutil
import pytest

from mpdist.benchmarks import _mpi_job, collectives

needs_mpi = pytest.mark.skipif(
    importlib.util.find_spec("mpi4py") is None or _mpi_job.find_mpiexec() is None,
    reason="needs mpi4py and mpiexec (pip install 'mpdist[mpi]')",
)

BASE = ["op", "size", "time(us)", "algbw(GB/s)", "busbw(GB/s)"]
MPI_COLS = ["mpi(us)", "mpi4py(us)", "mpi4py busbw", "mpi/mpi4py", "mpi-mpi4py(us)"]


def _descendants() -> set[int]:
    # multiprocessing's resource tracker, started with the first spawned rank, lives as
    # long as this process by design
    pids = set()
    for p in psutil.Process().children(recursive=True):
        try:
            if "resource_tracker" not in " ".join(p.cmdline()):
                pids.add(p.pid)
        except psutil.NoSuchProcess:
            pass
    return pids


def _heading(line: str) -> list[str]:
    # two headings are two words: "gloo busbw", "mpi4py busbw"
    words = line.split()
    out: list[str] = []
    for w in words:
        if w == "busbw" and out:
            out[-1] += " busbw"
        else:
            out.append(w)
    return out


def _agrees(printed: str, a: str, b: str, fn: Callable[[float, float], float]) -> bool:
    """``printed`` equals ``fn`` of the times printed as ``a`` and ``b`` to within their
    rounding (0.05 us each) and its own (half its last digit)."""
    x, y = float(a), float(b)
    values = [fn(x + dx, y + dy) for dx in (-0.05, 0.05) for dy in (-0.05, 0.05)]
    return min(values) - 0.006 <= float(printed) <= max(values) + 0.06


def _bench(
    argv: list[str], capsys: pytest.CaptureFixture[str]
) -> tuple[str, list[str], list[list[str]]]:
    before = _descendants()
    code = collectives.main(argv)
    out, err = capsys.readouterr()
    assert code == 0, err
    assert _descendants() <= before, "processes of the bench outlived it"
    lines = out.strip().splitlines()
    return lines[0], _heading(lines[1]), [line.split() for line in lines[2:]]


@needs_mpi
def test_vs_mpi_prints_the_mpi_columns_next_to_gloos(capsys: pytest.CaptureFixture[str]) -> None:
    vs_gloo = importlib.util.find_spec("torch") is not None
    argv = ["-n", "2", "--ops", "all_reduce,all_gather,barrier", "--sizes", "4,64K"]
    argv += ["--iters", "3", "--vs", "mpi"] + (["--vs", "gloo"] if vs_gloo else [])
    title, heading, rows = _bench(argv, capsys)
    assert title.startswith("# mpdist tcp collectives: world size 2, float32")
    assert "mpdist mpi [header check on] and raw mpi4py [" in title and "under mpiexec" in title
    gloo = ["gloo(us)", "gloo busbw", "tcp/gloo"] if vs_gloo else []
    assert heading == BASE + gloo + MPI_COLS + ["tcp/mpi4py"]
    assert [r[:2] for r in rows] == [
        ["all_reduce", "4"],
        ["all_reduce", "64K"],
        ["all_gather", "4"],
        ["all_gather", "64K"],
        ["barrier", "0"],
    ]
    for r in rows:
        assert len(r) == len(heading), r  # every library ran every row (no n/a, no gap)
        cells = dict(zip(heading, r, strict=True))
        mpi, raw = float(cells["mpi(us)"]), float(cells["mpi4py(us)"])
        assert mpi > 0 and raw > 0 and float(cells["time(us)"]) > 0
        # the derived columns are the printed times' ratio and difference
        ratio, diff = (lambda x, y: x / y), (lambda x, y: x - y)
        assert _agrees(cells["mpi/mpi4py"], cells["mpi(us)"], cells["mpi4py(us)"], ratio), r
        assert _agrees(cells["mpi-mpi4py(us)"], cells["mpi(us)"], cells["mpi4py(us)"], diff), r
        assert _agrees(cells["tcp/mpi4py"], cells["time(us)"], cells["mpi4py(us)"], ratio), r


@needs_mpi
@pytest.mark.parametrize("check", ["1", "0"])
def test_backend_mpi_runs_under_mpiexec(
    check: str, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """``--backend mpi`` is started by mpiexec too; the title says whether the header
    check (MPDIST_MPI_CHECK_SHAPES) was on, and no column appears twice."""
    monkeypatch.setenv("MPDIST_MPI_CHECK_SHAPES", check)
    argv = ["-n", "3", "--backend", "mpi", "--vs", "mpi", "--ops", "reduce_scatter,all_to_all"]
    title, heading, rows = _bench(argv + ["--sizes", "1K", "--iters", "2"], capsys)
    state = "on" if check == "1" else "off"
    assert title.startswith(f"# mpdist mpi [header check {state}] collectives: world size 3")
    assert heading == BASE + MPI_COLS
    assert [r[:2] for r in rows] == [["reduce_scatter", "1K"], ["all_to_all", "1K"]]
    assert all(len(r) == len(heading) for r in rows), rows


def test_without_mpi_the_bench_says_what_to_install(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(_mpi_job, "find_mpiexec", lambda: None)
    assert collectives.main(["--vs", "mpi"]) == 2
    assert "pip install 'mpdist[mpi]'" in capsys.readouterr().err


def _fake_mpiexec(tmp_path: Path, body: str, monkeypatch: pytest.MonkeyPatch) -> None:
    script = tmp_path / "mpiexec"
    script.write_text(f"#!/bin/sh\n{body}\n")
    script.chmod(script.stat().st_mode | stat.S_IXUSR)
    monkeypatch.setattr(_mpi_job, "find_mpiexec", lambda: str(script))


def test_a_job_that_exits_before_its_ranks_connect_is_an_error(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    _fake_mpiexec(tmp_path, "echo 'no hosts here' >&2; exit 3", monkeypatch)
    job = _mpi_job.MpiJob("mpi", 2, str(tmp_path / "store"), None, "float32", str(tmp_path / "log"))
    try:
        with pytest.raises(RuntimeError, match="exited with code 3 before all 2 ranks") as e:
            job.connect()
        assert "no hosts here" in str(e.value)
    finally:
        job.stop(grace=0)


def test_a_job_whose_ranks_never_connect_times_out_and_is_killed(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    _fake_mpiexec(tmp_path, "exec sleep 60", monkeypatch)
    log = str(tmp_path / "log")
    job = _mpi_job.MpiJob("mpi", 2, str(tmp_path / "s"), None, "float32", log, startup_timeout=0.5)
    try:
        with pytest.raises(RuntimeError, match="did not all connect within 0.5 s"):
            job.connect()
    finally:
        job.stop(grace=0)
    assert job.proc.returncode is not None and not psutil.pid_exists(job.proc.pid)


@needs_mpi
def test_a_rank_that_fails_is_reported_with_its_traceback(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A rank's exception reaches the bench (here: a backend that does not exist)."""
    job = _mpi_job.MpiJob("no-such", 2, str(tmp_path / "s"), None, "float32", str(tmp_path / "l"))
    try:
        conns = job.connect()
        for c in conns:
            kind, text = c.recv()
            assert kind == "error" and "Invalid backend: 'no-such'" in text, text
            c.close()
    finally:
        job.stop(grace=30)
    assert job.proc.returncode == 0, job.output()
    assert os.path.exists(job.log_path)
