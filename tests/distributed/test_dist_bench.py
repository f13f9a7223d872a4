"""``python -m mpdist bench`` (collectives): it runs, prints one row per op and size, and
rejects bad options. Only the table's shape is checked; benchmarks are never timed here."""

from __future__ import annotations

import multiprocessing as mp
import os
import sys

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


def _layout(q) -> None:
    # where the interpreter's own code lies (a builtin function object in its data), and
    # which process forked this one
    q.put((id(len), os.getppid(), os.getpid()))


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="forkserver ranks: Linux")
def test_bench_ranks_share_one_address_layout(monkeypatch):
    # Ranks that take turns on a core run small collectives up to 2x faster when their
    # interpreters lie at the same addresses (rank_context's docstring): the bench's ranks
    # are forked from one process, as the harness's are, not exec'd one by one.
    monkeypatch.delenv("MPDIST_START_METHOD", raising=False)
    ctx = collectives.rank_context()
    assert ctx.get_start_method() == "forkserver"
    q = ctx.Queue()
    procs = [ctx.Process(target=_layout, args=(q,)) for _ in range(3)]
    for p in procs:
        p.start()
    seen = [q.get(timeout=60) for _ in procs]
    for p in procs:
        p.join(timeout=60)
    q.close()
    q.join_thread()
    assert len({pid for _, _, pid in seen}) == 3
    assert len({parent for _, parent, _ in seen}) == 1  # the forkserver
    assert seen[0][1] != os.getpid()
    assert len({where for where, _, _ in seen}) == 1
