"""``mpdist bench ... --json PATH`` (every bench: one record per table row, with the machine) and
``--plot PATH.png`` (collectives: bus bandwidth and latency against size), run end to end tiny."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from mpdist.benchmarks import output

MACHINE_KEYS = {"hostname", "cpu_model", "cpu_count", "usable_cpus", "python", "versions", "time"}


def bench(*args: object, env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "mpdist", "bench", *map(str, args)],
        capture_output=True,
        text=True,
        timeout=300,
        env=env,
    )


def table_rows(stdout: str, first_word: set[str]) -> list[str]:
    return [
        line for line in stdout.splitlines() if line.split()[:1] and line.split()[0] in first_word
    ]


def load(path: Path, name: str) -> list[dict]:
    doc = json.loads(path.read_text())
    assert doc["benchmark"] == name
    assert set(doc["machine"]) >= MACHINE_KEYS
    assert doc["machine"]["versions"]["numpy"]
    assert "json" not in doc["params"]
    return doc["records"]


def test_collectives_json_has_one_record_per_row(tmp_path):
    out = tmp_path / "c.json"
    res = bench(
        "--world-size",
        2,
        "--ops",
        "all_reduce,barrier",
        "--sizes",
        "4,1K",
        "--iters",
        3,
        "--json",
        out,
    )
    assert res.returncode == 0, res.stderr
    rows = table_rows(res.stdout, {"all_reduce", "barrier"})
    records = load(out, "collectives")
    assert len(records) == len(rows) == 3
    assert [(r["op"], r["bytes"]) for r in records] == [
        ("all_reduce", 4),
        ("all_reduce", 1024),
        ("barrier", 0),
    ]
    for rec, row in zip(records, rows, strict=True):
        mine = rec["results"]["mpdist tcp"]
        assert float(row.split()[2]) == pytest.approx(mine["time_us"], abs=0.051)  # the printed 0.1
        assert rec["world_size"] == 2 and rec["dtype"] == "float32"
    assert records[1]["results"]["mpdist tcp"]["algbw_GBps"] == pytest.approx(
        1024 / records[1]["results"]["mpdist tcp"]["time_us"] / 1e3
    )


def test_collectives_plot_is_a_png(tmp_path):
    pytest.importorskip("matplotlib")
    import matplotlib.image

    png = tmp_path / "c.png"
    res = bench(
        "--world-size",
        2,
        "--ops",
        "all_reduce,all_gather",
        "--sizes",
        "1K,64K",
        "--iters",
        3,
        "--plot",
        png,
    )
    assert res.returncode == 0, res.stderr
    image = matplotlib.image.imread(png)
    assert image.shape[0] > 400 and image.shape[1] > 800  # two ops: two rows of two panels
    assert image.std() > 0.05  # something was drawn


def test_plot_leaves_out_barrier_and_missing_times(tmp_path):
    pytest.importorskip("matplotlib")
    import matplotlib.image

    recs = [
        {"op": "barrier", "bytes": 0, "results": {"a": {"time_us": 5.0, "busbw_GBps": 0.0}}},
        {"op": "all_reduce", "bytes": 1024, "results": {"a": {"time_us": 5.0, "busbw_GBps": 0.2}}},
        {
            "op": "all_reduce",
            "bytes": 4096,
            "results": {"a": {"time_us": 9.0, "busbw_GBps": 0.4}, "b": {"time_us": None}},
        },
    ]
    png = tmp_path / "p.png"
    output.plot_collectives(str(png), recs, "t")
    assert matplotlib.image.imread(png).shape[0] < 500  # one op: one row of panels
    with pytest.raises(ValueError, match="nothing to plot"):
        output.plot_collectives(str(png), recs[:1], "t")


def test_plot_without_matplotlib_is_refused_before_running(tmp_path, monkeypatch, capsys):
    from mpdist.benchmarks import collectives

    real = output.importlib.util.find_spec
    monkeypatch.setattr(
        output.importlib.util,
        "find_spec",
        lambda name, *a: None if name == "matplotlib" else real(name, *a),
    )
    assert collectives.main(["--plot", str(tmp_path / "x.png")]) == 2
    assert "pip install 'mpdist[plot]'" in capsys.readouterr().err
    assert not (tmp_path / "x.png").exists()


def test_json_into_a_missing_directory_is_refused(tmp_path, capsys):
    from mpdist.benchmarks import collectives

    assert collectives.main(["--json", str(tmp_path / "no" / "x.json")]) == 2
    assert "does not exist" in capsys.readouterr().err


@pytest.mark.parametrize(
    ("name", "args", "first_words", "key"),
    [
        (
            "store",
            ["--iters", 20, "--round-trips", 5, "--no-torch"],
            {"HashStore", "FileStore", "TCPStore"},
            "store",
        ),
        ("layers", ["--steps", 1, "--warmup", 0, "--vs", "none"], None, "layer"),
        ("tp", ["--steps", 1, "--warmup", 0, "--hidden", 8, "--batch", 4], None, "row"),
        ("ddp", ["--steps", 1, "--warmup", 0, "--batch", 2, "--vs", "none"], None, "configuration"),
        ("harness", ["--tests", 2, "--no-torch"], None, "harness"),
    ],
)
def test_every_bench_writes_json(tmp_path, name, args, first_words, key):
    out = tmp_path / f"{name}.json"
    res = bench(name, *args, "--json", out)
    assert res.returncode == 0, res.stderr
    records = load(out, name)
    assert records and all(key in r for r in records)
    if first_words is not None:
        assert len(records) == len(table_rows(res.stdout, first_words))
    for r in records:  # each record's description is a printed row
        text = r.get("description", r.get("harness"))
        if text is not None:
            assert any(line.startswith(text) for line in res.stdout.splitlines())


def test_fsdp_json_records_match_the_printed_rows(tmp_path):
    out = tmp_path / "fsdp.json"
    res = bench(
        "fsdp",
        *("--hidden", 16, "--layers", 2, "--batch", 4, "--steps", 1, "--warmup", 0),
        *("--world-size", 2, "--kinds", "fully_shard", "DDP", "--no-torch", "--json", out),
    )
    assert res.returncode == 0, res.stderr
    records = load(out, "fsdp")
    rows = table_rows(res.stdout, {"mpdist", "torch"})
    assert [r["description"] for r in records] == [
        "mpdist fully_shard 2 ranks",
        "mpdist DDP 2 ranks",
    ]
    assert len(rows) == len(records)
    for rec, row in zip(records, rows, strict=True):
        assert row.startswith(rec["description"])
        assert rec["library"] == "mpdist" and rec["world_size"] == 2
        step, held, gathered, peak = map(float, row[len(rec["description"]) :].split()[:4])
        assert step == pytest.approx(rec["step_ms"], abs=0.051)
        assert held == pytest.approx(rec["held_bytes"] / 1024, abs=0.051)
        assert gathered == pytest.approx(rec["gathered_bytes"] / 1024, abs=0.051)
        assert rec["peak_bytes"] == rec["held_bytes"] + rec["gathered_bytes"]
        assert peak == pytest.approx(rec["peak_bytes"] / 1024, abs=0.051)
    ddp = records[1]
    assert ddp["gathered_bytes"] == 0 and ddp["held_bytes"] == 2 * (16 * 16 + 16) * 4
    assert records[0]["held_bytes"] == ddp["held_bytes"] // 2  # sharded over 2 ranks
    assert "vs_torch" not in records[0]  # no torch row to compare with


def test_the_harness_bench_leaves_no_temporary_file(tmp_path):
    # torch's MultiProcessTestCase makes a store file per test and leaves its removal to
    # the test class; the bench's runs must not leave them (nor anything else) behind
    pytest.importorskip("torch")
    tmp = tmp_path / "tmp"
    tmp.mkdir()
    res = bench("harness", "--tests", 2, env={**os.environ, "TMPDIR": str(tmp)})
    assert res.returncode == 0, res.stderr
    assert "torch MultiProcessTestCase" in res.stdout
    # torch may keep its compiler cache there (torchinductor_<user>): a cache meant to
    # outlive the run, not a file the run leaves behind
    left = [p.name for p in tmp.iterdir() if not p.name.startswith("torchinductor_")]
    assert left == []
