"""``python -m mpdist bench`` (collectives): it runs, prints one row per op and size, and
rejects bad options. Only the table's shape is checked; benchmarks are never timed here."""

from __future__ import annotations

import multiprocessing as mp

import pytest

from mpdist.benchmarks import collectives
from mpdist.benchmarks.collectives import parse_size


def test_parse_size():
    assert parse_size("4") == 4
    assert parse_size("64K") == 64 << 10
    assert parse_size("1M") == 1 << 20
    assert parse_size("2g") == 2 << 30
    with pytest.raises(Exception, match="bad size"):
        parse_size("lots")


def test_bench_prints_a_row_per_op_and_size(capsys):
    code = collectives.main(
        [
            "--world-size",
            "2",
            "--ops",
            "all_reduce,all_gather,barrier",
            "--sizes",
            "4,1K",
            "--iters",
            "3",
        ]
    )
    assert code == 0
    lines = capsys.readouterr().out.strip().splitlines()
    assert lines[0].startswith("# mpdist tcp collectives: world size 2")
    assert "algbw(GB/s)" in lines[1] and "busbw(GB/s)" in lines[1]
    rows = [line.split() for line in lines[2:]]
    assert [(r[0], r[1]) for r in rows] == [
        ("all_reduce", "4"),
        ("all_reduce", "1K"),
        ("all_gather", "4"),
        ("all_gather", "1K"),
        ("barrier", "0"),
    ]
    assert all(float(r[2]) > 0 for r in rows)
    assert not mp.active_children()


@pytest.mark.parametrize("argv", [["--ops", "all_sum"], ["--world-size", "0"], ["--sizes", "big"]])
def test_bench_rejects_bad_options(argv, capsys):
    assert collectives.main(argv) == 2
    assert "mpdist bench" in capsys.readouterr().err
