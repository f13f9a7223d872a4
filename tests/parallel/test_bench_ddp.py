"""Smoke test of ``python -m mpdist bench ddp`` (it runs and prints its table; no timing)."""

from __future__ import annotations

import pytest

from mpdist.benchmarks import ddp


def test_bench_ddp_runs(capsys: pytest.CaptureFixture[str]) -> None:
    assert ddp.main(["--steps", "1", "--warmup", "0", "--batch", "4", "--vs", "none"]) == 0
    out = capsys.readouterr().out
    assert "DDP 2 ranks, overlap on (2 buckets)" in out
    assert "DDP 2 ranks, overlap off (1 bucket" in out
    assert "one process, batch 8" in out
    assert "torch" not in out.splitlines()[1]
    assert "overlap on vs off" in out and "cpu" in out.splitlines()[1]


def test_bench_ddp_rejects_bad_arguments() -> None:
    with pytest.raises(SystemExit):
        ddp.main(["--world-size", "1"])
    with pytest.raises(SystemExit):
        ddp.main(["--repeat", "0"])


def test_bench_ddp_vs_torch(capsys: pytest.CaptureFixture[str]) -> None:
    pytest.importorskip("torch")
    assert ddp.main(["--steps", "1", "--warmup", "0", "--batch", "4", "--vs", "torch"]) == 0
    out = capsys.readouterr().out
    assert "torch wall" in out.splitlines()[1] and "torch cpu" in out.splitlines()[1]
    assert "torch DDP (gloo) overlap on vs off" in out
