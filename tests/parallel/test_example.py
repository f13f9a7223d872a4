"""examples/ddp_train.py under the launcher: it trains, its loss decreases, replicas agree."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def test_example_runs_under_launcher_and_loss_decreases() -> None:
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "mpdist",
            "run",
            "--nproc",
            "2",
            "examples/ddp_train.py",
            "--epochs",
            "5",
        ],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    losses = [
        float(m) for m in re.findall(r"^\[rank 0\] epoch +\d+ +loss ([0-9.]+)$", proc.stdout, re.M)
    ]
    assert len(losses) == 5, proc.stdout
    assert losses[-1] < losses[0] / 2
    assert "[rank 0] parameters identical on all 2 ranks" in proc.stdout
    assert "[rank 1] epoch" not in proc.stdout  # only rank 0 reports
