"""Smoke test of ``python -m mpdist bench layers`` (it runs and prints its table; no timing).

One real run, with torch's column where torch is installed; what ``--vs none`` and
``--repeat`` change in the table is checked with the runs replaced by fixed figures.
"""

from __future__ import annotations

import importlib.util

import pytest

from mpdist import cli
from mpdist.benchmarks import layers


def test_bench_layers_runs(capsys: pytest.CaptureFixture[str]) -> None:
    vs = "torch" if importlib.util.find_spec("torch") is not None else "none"
    assert cli.main(["bench", "layers", "--steps", "1", "--warmup", "0", "--vs", vs]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert "median of 1 steps" in lines[0] and "1 BLAS/torch thread(s)" in lines[0]
    assert lines[2].startswith("Conv2d 3->16 k3 p1, batch 32, 32x32")
    assert lines[3].startswith("LSTM 256->256 x3 layers, batch 12, seq 100")
    if vs == "torch":
        assert lines[1].split() == ["layer", "mpdist", "torch", "ratio"]
        assert all(line.endswith("x") and len(line.split()) >= 3 for line in lines[2:4])
    else:
        assert lines[1].split() == ["layer", "mpdist"]


def test_bench_layers_vs_none_and_best_of_repeats(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    figures = iter([0.004, 0.002, 0.003])
    cfgs: list[dict] = []

    def fixed_run(cfg: dict) -> dict:
        cfgs.append(cfg)
        t = next(figures)
        return {"mpdist": {"conv2d": t, "lstm": 10 * t}}

    monkeypatch.setattr(layers, "_run", fixed_run)
    assert layers.main(["--vs", "none", "--repeat", "3", "--steps", "4"]) == 0
    out = capsys.readouterr().out.splitlines()
    assert [c["vs_torch"] for c in cfgs] == [False] * 3 and cfgs[0]["steps"] == 4
    assert "best of 3 runs" in out[0] and "torch" not in out[1]
    assert out[2].split()[-1] == "2.00" and out[3].split()[-1] == "20.00"  # the best run's


def test_bench_layers_rejects_bad_arguments() -> None:
    for bad in (["--steps", "0"], ["--repeat", "0"], ["--threads", "0"], ["--warmup", "-1"]):
        with pytest.raises(SystemExit):
            layers.main(bad)
