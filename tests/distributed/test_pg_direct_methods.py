"""The torch-style methods of a built-in group, called directly (``pg.allreduce([a])``):
bad arrays raise before anything is sent and leave the group usable; empty row blocks work."""

from __future__ import annotations

import numpy as np
import pytest

import mpdist as dist
from mpdist import AllreduceOptions, BroadcastOptions, ReduceOp
from mpdist.process_group import ReduceScatterOptions
from mpdist.testing import spawn_ranks, spawn_threads


def _check_usable(pg, n: int) -> None:
    a = np.ones(3)
    pg.allreduce([a]).wait()
    np.testing.assert_array_equal(a, [n, n, n])


def bad_list_calls(pg, n: int) -> list:
    """Direct list calls whose entries disagree with the other argument (or the group
    size): (exception, message, call), each raising before anything is sent."""
    four, five = np.zeros(4), np.zeros(5)
    return [
        (ValueError, "elements", lambda: pg.allgather([[four] * n], [five])),
        (ValueError, "entries", lambda: pg.allgather([[four] * (n + 1)], [four])),
        (TypeError, "dtypes", lambda: pg.allgather([[four.astype(np.float32)] * n], [four])),
        (ValueError, "elements", lambda: pg.reduce_scatter([four], [[five] * n])),
        (ValueError, "entries", lambda: pg.reduce_scatter([four], [[four] * (n + 1)])),
        (ValueError, "elements", lambda: pg._allgather_base(np.zeros(4 * n), five)),
        (ValueError, "elements", lambda: pg._reduce_scatter_base(four, np.zeros(5 * n))),
    ]


def bad_direct_calls(rank: int, n: int) -> int:
    pg = dist.distributed._get_default_group()
    strided = np.zeros((4, 4))[:, 0]  # not contiguous
    ro = np.zeros(4)
    ro.setflags(write=False)
    bad = [
        (ValueError, "contiguous", lambda: pg.allreduce([strided])),
        (ValueError, "contiguous", lambda: pg.allreduce([strided], AllreduceOptions())),
        (ValueError, "read-only", lambda: pg.allreduce([ro])),
        (TypeError, "dtype", lambda: pg.allreduce([np.array(["x"], dtype=object)])),
        (TypeError, "ndarray", lambda: pg.allreduce([[1.0, 2.0]])),
        (ValueError, "contiguous", lambda: pg.broadcast([strided], BroadcastOptions(0))),
        (ValueError, "not a rank", lambda: pg.broadcast([np.ones(3)], BroadcastOptions(n))),
        (ValueError, "not a rank", lambda: pg.broadcast([np.ones(3)], BroadcastOptions(-1))),
        (
            ValueError,
            "contiguous",
            lambda: pg.allgather([[np.zeros(4)] * n], [strided]),
        ),
        (ValueError, "contiguous", lambda: pg.alltoall_base(np.zeros(8), strided, [], [])),
        (ValueError, "contiguous", lambda: pg.send([strided], 1 - rank % 2)),
        # list entries must match the other argument (the backend's _c_* rely on it)
        *bad_list_calls(pg, n),
        # so must reduce ops their arrays' dtype (a bitwise op on floats)
        (
            ValueError,
            "bitwise",
            lambda: pg.allreduce([np.ones(3)], AllreduceOptions(ReduceOp.BAND)),
        ),
        (
            ValueError,
            "bitwise",
            lambda: pg.allreduce_stepped([np.ones(3)], AllreduceOptions(ReduceOp.BOR)),
        ),
        (
            ValueError,
            "bitwise",
            lambda: pg.reduce_scatter(
                [np.ones(3)], [[np.ones(3)] * n], ReduceScatterOptions(ReduceOp.BXOR)
            ),
        ),
        (
            ValueError,
            "bitwise",
            lambda: pg._reduce_scatter_base(
                np.ones(3), np.ones(3 * n), ReduceScatterOptions(ReduceOp.BAND)
            ),
        ),
        (TypeError, "ReduceOp", lambda: pg.allreduce([np.ones(3)], AllreduceOptions("max"))),  # type: ignore[arg-type]
    ]
    for exc, text, call in bad:
        with pytest.raises(exc, match=text):
            call()
        _check_usable(pg, n)
    return len(bad)


def test_bad_arrays_in_direct_methods_raise_and_the_group_stays_usable():
    assert spawn_threads(bad_direct_calls, 2) == [23, 23]
    assert spawn_ranks(bad_direct_calls, 2) == [23, 23]


def empty_alltoall_base(rank: int, n: int) -> bool:
    pg = dist.distributed._get_default_group()
    for splits in ([], [0] * n):
        out = np.zeros((0, 3), np.float32)
        inp = np.zeros((0, 3), np.float32)
        pg.alltoall_base(out, inp, splits, splits).wait()
        assert out.shape == (0, 3)
        _check_usable(pg, n)
    # a rank that sends nothing to some peers, next to rows that do travel
    inp = np.full((n - 1, 2), rank, np.int64) if rank == 0 else np.zeros((0, 2), np.int64)
    ins = [0] + [1] * (n - 1) if rank == 0 else [0] * n
    outs = [1 if rank > 0 else 0] + [0] * (n - 1)
    out = np.full((sum(outs), 2), -1, np.int64)
    pg.alltoall_base(out, inp, outs, ins).wait()
    np.testing.assert_array_equal(out, np.zeros((sum(outs), 2), np.int64))
    r = np.array([rank], np.int64)
    pg.allreduce([r], AllreduceOptions(ReduceOp.MAX)).wait()
    return int(r[0]) == n - 1


@pytest.mark.parametrize("backend", ["threaded", "tcp"])
def test_alltoall_base_with_empty_row_blocks(backend):
    # tcp too: zero-byte payloads take their own path through the socket transport
    run = spawn_threads if backend == "threaded" else spawn_ranks
    assert run(empty_alltoall_base, 3) == [True] * 3
