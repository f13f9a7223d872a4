"""The job secret: made by mpdist run and the harness, shared by a job's ranks, read from a
private file, and never on a command line, in the launcher's output or in a failure report."""

from __future__ import annotations

import hashlib
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import psutil
import pytest

import mpdist as dist
from mpdist import _auth
from mpdist.testing import MultiProcessFailure, spawn_ranks

TIMEOUT = 120

# A rank of `mpdist run`: meets the others (env://), checks that its store authenticates and
# that no process of the job shows the secret on its command line, and leaves the secret
# in a private file for the test to look for elsewhere.
RANK_SCRIPT = """
import os, sys, psutil
import numpy as np
import mpdist as dist
from mpdist import _auth
from mpdist.distributed import _get_default_store

secret = _auth.job_secret()
assert secret is not None
dist.init_process_group("tcp")
a = np.ones(2)
dist.all_reduce(a)
assert a[0] == dist.get_world_size()
procs = [psutil.Process(), psutil.Process().parent()]
for p in procs:
    assert secret.decode() not in " ".join(p.cmdline()), p.cmdline()
if dist.get_rank() == 0:
    fd = os.open(sys.argv[1], os.O_WRONLY | os.O_CREAT, 0o600)
    os.write(fd, secret)
    os.close(fd)
print("rank", dist.get_rank(), "file" if os.environ.get("MPDIST_JOB_SECRET_FILE") else "env",
      "fails" if len(sys.argv) > 2 else "ok", flush=True)
dist.destroy_process_group()
if len(sys.argv) > 2:
    raise SystemExit(3)
"""


def run(
    tmp_path: Path, *options: str, fail: bool = False
) -> tuple[subprocess.CompletedProcess, Path]:
    script = tmp_path / "rank.py"
    script.write_text(textwrap.dedent(RANK_SCRIPT))
    seen = tmp_path / "seen"
    env = {k: v for k, v in os.environ.items() if not k.startswith("MPDIST_JOB_SECRET")}
    cmd = [sys.executable, "-m", "mpdist", "run", "--nproc", "2", *options, str(script), str(seen)]
    cmd += ["fail"] if fail else []
    out = subprocess.run(cmd, capture_output=True, text=True, timeout=TIMEOUT, env=env)
    return out, seen


def test_mpdist_run_gives_its_ranks_a_fresh_secret_they_share(tmp_path) -> None:
    out, seen = run(tmp_path)
    assert out.returncode == 0, out.stderr
    assert "[rank 0] rank 0 env ok" in out.stdout and "[rank 1] rank 1 env ok" in out.stdout
    secret = seen.read_bytes()
    assert len(bytes.fromhex(secret.decode())) == 32
    assert secret.decode() not in out.stdout + out.stderr
    (tmp_path / "again").mkdir()
    out2, seen2 = run(tmp_path / "again")  # another job: another secret
    assert out2.returncode == 0, out2.stderr
    assert len(seen2.read_bytes()) == 64 and seen2.read_bytes() != secret


def test_a_failing_job_does_not_show_its_secret(tmp_path) -> None:
    out, seen = run(tmp_path, fail=True)
    assert out.returncode == 3
    assert "stopping the other ranks" in out.stderr or "exited with code 3" in out.stderr
    assert seen.read_bytes().decode() not in out.stdout + out.stderr


def test_mpdist_run_secret_file(tmp_path) -> None:
    f = tmp_path / "job.secret"
    f.write_text("a-secret-both-nodes-share-0123456789\n")
    f.chmod(0o600)
    out, seen = run(tmp_path, "--secret-file", str(f))
    assert out.returncode == 0, out.stderr
    assert "[rank 1] rank 1 file ok" in out.stdout
    assert seen.read_bytes() == b"a-secret-both-nodes-share-0123456789"
    assert "a-secret-both" not in out.stdout + out.stderr
    f.chmod(0o644)
    bad, _ = run(tmp_path, "--secret-file", str(f))
    assert bad.returncode == 2
    assert f"--secret-file: MPDIST_JOB_SECRET_FILE: '{f}' has mode 0644" in bad.stderr
    assert "a-secret-both" not in bad.stdout + bad.stderr
    assert "[rank" not in bad.stdout  # nothing started


def job_secret_digest(rank: int, world_size: int) -> str:
    secret = _auth.job_secret()
    assert secret is not None
    a = np.ones(1)
    dist.all_reduce(a)
    return hashlib.sha256(secret).hexdigest()


def test_the_harness_gives_each_test_s_ranks_one_secret(monkeypatch) -> None:
    monkeypatch.delenv(_auth.SECRET_ENV, raising=False)
    monkeypatch.delenv(_auth.SECRET_FILE_ENV, raising=False)
    first = spawn_ranks(job_secret_digest, 2)
    second = spawn_ranks(job_secret_digest, 2)
    assert first[0] == first[1] and second[0] == second[1]
    assert first[0] != second[0]
    assert _auth.SECRET_ENV not in os.environ  # only the ranks got it
    # a secret the user set is the one the ranks use
    monkeypatch.setenv(_auth.SECRET_ENV, "the-users-own-secret-0123")
    assert (
        spawn_ranks(job_secret_digest, 2)[0]
        == hashlib.sha256(b"the-users-own-secret-0123").hexdigest()
    )


def fails_after_a_collective(rank: int, world_size: int) -> None:
    a = np.ones(1)
    dist.all_reduce(a)
    if rank == 1:
        raise ValueError("rank 1 goes wrong on purpose")
    dist.barrier()


def test_a_failure_report_does_not_show_the_secret(monkeypatch) -> None:
    secret = "report-must-not-show-this-0123456789"
    monkeypatch.setenv(_auth.SECRET_ENV, secret)
    with pytest.raises(MultiProcessFailure) as e:
        spawn_ranks(fails_after_a_collective, 2, timeout=60)
    text = str(e.value)
    assert "rank 1 goes wrong on purpose" in text
    assert secret not in text


def test_no_process_shows_the_secret_on_its_command_line(monkeypatch) -> None:
    # the harness's secret travels in the ranks' environment (readable only by this user)
    secret = "command-lines-must-not-show-this-0123"
    monkeypatch.setenv(_auth.SECRET_ENV, secret)
    assert spawn_ranks(cmdlines_without, 2, secret) == [True, True]
    assert all(
        secret not in " ".join(p.info["cmdline"] or []) for p in psutil.process_iter(["cmdline"])
    )


def cmdlines_without(rank: int, world_size: int, secret: str) -> bool:
    me = psutil.Process()
    procs = [me, *me.parents()[:2]]
    return all(secret not in " ".join(p.cmdline()) for p in procs)
