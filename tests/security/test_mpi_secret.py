"""mpi://: rank 0 makes the job secret and broadcasts it over MPI; the store refuses strangers."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

pytest.importorskip("mpi4py")
MPIEXEC = shutil.which("mpiexec", path=os.path.dirname(sys.executable)) or shutil.which("mpiexec")
if MPIEXEC is None:
    pytest.skip("mpiexec is not installed (pip install 'mpdist[mpi]')", allow_module_level=True)


def test_mpi_rendezvous_authenticates_with_a_broadcast_secret() -> None:
    env = {
        k: v
        for k, v in os.environ.items()
        if k not in ("MASTER_ADDR", "MASTER_PORT", "RANK", "WORLD_SIZE", "LOCAL_WORLD_SIZE")
        and not k.startswith("MPDIST_JOB_SECRET")
    }
    script = Path(__file__).with_name("_mpi_secret_job.py")
    out = subprocess.run(
        [MPIEXEC, "-n", "2", sys.executable, str(script)],
        capture_output=True,
        text=True,
        timeout=120,
        env=env,
        start_new_session=True,
    )
    assert out.returncode == 0, out.stdout + out.stderr
    assert "rank 0 ok" in out.stdout and "rank 1 ok" in out.stdout
