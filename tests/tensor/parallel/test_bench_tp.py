"""``python -m mpdist bench tp`` runs end to end (a tiny model) and prints every row."""

from __future__ import annotations

import subprocess
import sys


def test_bench_tp_prints_its_table() -> None:
    args = ["--hidden", "32", "--batch", "8", "--steps", "2", "--warmup", "0"]
    res = subprocess.run(
        [sys.executable, "-m", "mpdist", "bench", "tp", *args],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert res.returncode == 0, res.stderr
    out = res.stdout
    for row in ("one process, batch 8", "TP 2 ranks (colwise", "collectives timed", "DDP 2 ranks"):
        assert row in out, out
    # a TP step of two colwise/rowwise pairs: two all-reduces forward, one backward
    assert "collectives" in out and "(3 per step" in out, out


def test_bench_tp_refuses_uneven_sizes() -> None:
    res = subprocess.run(
        [sys.executable, "-m", "mpdist", "bench", "tp", "--hidden", "33"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert res.returncode == 2 and "multiples of --world-size" in res.stderr
