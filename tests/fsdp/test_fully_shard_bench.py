"""``python -m mpdist bench fsdp`` runs end to end (a tiny model) and prints its rows."""

from __future__ import annotations

import subprocess
import sys


def test_bench_fsdp_prints_its_rows() -> None:
    args = ["--hidden", "32", "--layers", "4", "--steps", "1", "--warmup", "0"]
    res = subprocess.run(
        [sys.executable, "-m", "mpdist", "bench", "fsdp", *args, "--world-size", "2", "--no-torch"],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert res.returncode == 0, res.stderr
    row = [line for line in res.stdout.splitlines() if line.startswith("mpdist fully_shard 2")]
    assert len(row) == 1, res.stdout
    # step ms, and a peak of one to two gathered units (a unit is 32 * 33 * 4 bytes)
    step_ms, peak_kib = (float(v) for v in row[0].split()[4:6])
    assert step_ms > 0 and 32 * 33 * 4 / 1024 <= peak_kib <= 2 * 32 * 33 * 4 / 1024 + 0.1


def test_bench_fsdp_refuses_an_uneven_batch() -> None:
    res = subprocess.run(
        [sys.executable, "-m", "mpdist", "bench", "fsdp", "--batch", "6", "--world-size", "4"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert res.returncode == 2 and "multiple of every --world-size" in res.stderr
