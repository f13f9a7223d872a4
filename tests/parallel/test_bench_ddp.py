"""Smoke test of ``python -m mpdist bench ddp`` (it runs and prints its table; no timing).

One real run covers both libraries where torch is installed (torch's rows come on top of
mpdist's, so a second mpdist-only run would repeat work); what ``--vs none`` leaves out is
checked on the table with the runs replaced by fixed figures.
"""

from __future__ import annotations

import importlib.util

import pytest

from mpdist.benchmarks import ddp

SMOKE = ["--steps", "1", "--warmup", "0", "--batch", "4"]


def test_bench_ddp_runs(capsys: pytest.CaptureFixture[str]) -> None:
    vs = "torch" if importlib.util.find_spec("torch") is not None else "none"
    assert ddp.main([*SMOKE, "--vs", vs]) == 0
    out = capsys.readouterr().out
    assert "DDP 2 ranks, overlap on (2 buckets, " in out
    assert "DDP 2 ranks, overlap off (1 bucket" in out
    assert "not chosen here: overlap on, " in out and "(overlap on with the " in out
    assert "one process, batch 8" in out
    assert "overlap on vs off" in out and "cpu" in out.splitlines()[1]
    if vs == "torch":
        assert "torch wall" in out.splitlines()[1] and "torch cpu" in out.splitlines()[1]
        assert "torch DDP (gloo) overlap on vs off" in out


def test_bench_ddp_vs_none_leaves_torch_out(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    libs: list[str] = []

    def fixed_run(lib: str, world: int, cfg: dict) -> tuple[dict, dict]:
        libs.append(lib)
        return {m: (0.002, 0.001) for m in ddp.MODES}, {"overlap": 2, "no overlap": 1, "stepped": 1}

    monkeypatch.setattr(ddp, "_run", fixed_run)
    assert ddp.main([*SMOKE, "--vs", "none", "--repeat", "2"]) == 0
    out = capsys.readouterr().out
    assert libs == ["mpdist", "mpdist"]
    assert "torch" not in out.splitlines()[1] and "torch DDP" not in out
    assert "DDP 2 ranks, overlap on (2 buckets, stepped)" in out and "median of 2 runs" in out
    assert "not chosen here: overlap on, comm thread" in out


def test_bench_ddp_rejects_bad_arguments() -> None:
    with pytest.raises(SystemExit):
        ddp.main(["--world-size", "1"])
    with pytest.raises(SystemExit):
        ddp.main(["--repeat", "0"])
