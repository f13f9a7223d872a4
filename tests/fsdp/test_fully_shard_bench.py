"""``python -m mpdist bench fsdp`` runs end to end (a tiny model) and prints its rows."""

from __future__ import annotations

import subprocess
import sys

HIDDEN, LAYERS, WORLD = 32, 4, 2
UNIT = HIDDEN * (HIDDEN + 1) * 4  # bytes of one Linear's parameters


def test_bench_fsdp_prints_every_row() -> None:
    args = ["--hidden", str(HIDDEN), "--layers", str(LAYERS), "--steps", "1", "--warmup", "0"]
    res = subprocess.run(
        [sys.executable, "-m", "mpdist", "bench", "fsdp", *args, "--world-size", "2", "--no-torch"],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert res.returncode == 0, res.stderr
    rows = {}
    for line in res.stdout.splitlines():
        if line.startswith("mpdist "):
            name, values = line[:36].strip(), line[36:].split()
            rows[name] = [float(v) for v in values[:4]]
    names = [f"mpdist {k} {WORLD} ranks" for k in ("fully_shard", "FSDP FULL_SHARD")]
    names += [f"mpdist {k} {WORLD} ranks" for k in ("FSDP SHARD_GRAD_OP", "DDP")]
    assert sorted(rows) == sorted(names), res.stdout
    total_kib = LAYERS * UNIT / 1024
    for name, (step_ms, held, gathered, peak) in rows.items():
        assert step_ms > 0 and abs(held + gathered - peak) < 0.2, (name, res.stdout)
    # DDP holds everything and gathers nothing; the sharded ones hold about half
    assert rows[names[3]][1:3] == [total_kib, 0.0]
    for name in names[:3]:
        held, gathered = rows[name][1:3]
        assert total_kib / WORLD - 0.1 <= held <= total_kib / WORLD + 1
        assert gathered >= UNIT / 1024 - 0.1, (name, res.stdout)
    # FULL_SHARD and fully_shard gather one to two units at a time; SHARD_GRAD_OP keeps each
    # unit from its forward to its backward, so all of them at once
    for name in names[:2]:
        assert rows[name][2] <= 2 * UNIT / 1024 + 0.2, (name, res.stdout)
    assert rows[names[2]][2] >= total_kib - 0.2, res.stdout


def test_bench_fsdp_refuses_an_uneven_batch() -> None:
    res = subprocess.run(
        [sys.executable, "-m", "mpdist", "bench", "fsdp", "--batch", "6", "--world-size", "4"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert res.returncode == 2 and "multiple of every --world-size" in res.stderr
