"""Run under mpiexec: the folded collectives (payload in the header check's records) against
the same calls on tcp, on both sides of the slot's size, blocking and async.

Every call is also counted: a folded one makes exactly one record exchange and no other
MPI call on the group's communicator, an unfolded one an exchange and its own call; with
the header check off (MPDIST_MPI_CHECK_SHAPES=0) there is no exchange at all. Inputs are
small integers, so the two backends agree bit for bit. Prints ``ok <rank> <checks>``.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Callable
from typing import Any

import numpy as np
from _out import report
from _same_arrays import assert_same_arrays

import mpdist as dist
from mpdist import ReduceOp
from mpdist.backends.mpi import MpiProcessGroup
from mpdist.distributed import _get_default_group

dist.init_process_group("mpi")
R, P = dist.get_rank(), dist.get_world_size()
TCP = dist.new_group(backend="tcp")
PG = _get_default_group()
assert isinstance(PG, MpiProcessGroup), PG
CHECK = os.environ.get("MPDIST_MPI_CHECK_SHAPES", "1") != "0"
SLOT = PG._records.slot
checks = 0


class _Counting:
    """The group's communicator, counting the calls made on it."""

    def __init__(self, comm: Any) -> None:
        self.comm, self.calls = comm, 0

    def __getattr__(self, name: str) -> Any:
        self.calls += 1
        return getattr(self.comm, name)


COMM = _Counting(PG._comm)
PG._comm = COMM  # type: ignore[assignment]
_gather = PG._records._gather
exchanges = 0


def _counted_gather() -> None:
    global exchanges
    exchanges += 1
    _gather()


PG._records._gather = _counted_gather  # type: ignore[assignment]

DTYPES = ["float32", "float64", "int32", "int64", "uint8", "bool", "float16", "complex64"]


def ops_of(dt: str) -> list[ReduceOp]:
    if dt == "bool":
        return [ReduceOp.SUM, ReduceOp.PRODUCT, ReduceOp.MIN, ReduceOp.MAX, ReduceOp.BXOR]
    if dt == "complex64":
        return [ReduceOp.SUM, ReduceOp.PRODUCT, ReduceOp.AVG]
    if dt.startswith("float"):
        return [ReduceOp.SUM, ReduceOp.PRODUCT, ReduceOp.MIN, ReduceOp.MAX, ReduceOp.AVG]
    return [ReduceOp.SUM, ReduceOp.MIN, ReduceOp.AVG, ReduceOp.BAND, ReduceOp.BOR, ReduceOp.BXOR]


def data(dt: str, shape: tuple[int, ...], rank: int, salt: int = 0) -> np.ndarray:
    n = int(np.prod(shape))
    vals = (np.arange(n) * 7 + rank * 3 + salt) % 5 + (rank % 2)
    if dt == "bool":
        return (vals % 2 == 0).reshape(shape)
    return vals.astype(dt).reshape(shape)


def same(name: str, fn: Callable[[Any], list[np.ndarray]], folded: bool, calls: int = 1) -> None:
    """fn(group) -> arrays: equal (values, dtype, shape) on mpi and tcp; on mpi, ``calls``
    collectives made one exchange each and (unfolded) their own MPI calls."""
    global checks
    before = (exchanges, COMM.calls)
    a = fn(None)
    made = (exchanges - before[0], COMM.calls - before[1])
    if P > 1:
        if not CHECK:
            assert made[0] == 0 and made[1] >= calls, (name, made)
        elif folded:
            assert made == (calls, 0), (name, "folded", made)
        else:
            assert made[0] == calls and made[1] >= calls, (name, "unfolded", made)
    assert_same_arrays(name, R, a, fn(TCP))
    checks += 1


def check_dtype(dt: str) -> None:
    item = np.dtype(dt).itemsize
    fits = SLOT // item  # the most elements a folded call carries
    for count, shape in [(1, ()), (6, (2, 3)), (fits, (fits,)), (fits + 1, (fits + 1,))]:
        fold = count * item <= SLOT
        for op in ops_of(dt):

            def allreduce(g: Any, op: ReduceOp = op, shape: tuple = shape) -> list[np.ndarray]:
                x = data(dt, shape, R)
                dist.all_reduce(x, op=op, group=g)
                return [x]

            same(f"all_reduce {dt} {shape} {op}", allreduce, fold)

            def asyncred(g: Any, op: ReduceOp = op, shape: tuple = shape) -> list[np.ndarray]:
                xs = [data(dt, shape, R, s) for s in range(3)]
                works = [dist.all_reduce(x, op=op, group=g, async_op=True) for x in xs]
                for w in works:
                    assert w is not None
                    w.wait()
                return xs

            same(f"async all_reduce {dt} {shape} {op}", asyncred, fold, 3)

        for root in range(P):

            def bcast(g: Any, shape: tuple = shape, root: int = root) -> list[np.ndarray]:
                x = data(dt, shape, R)
                dist.broadcast(x, src=root, group=g)
                return [x]

            same(f"broadcast {dt} {shape} root {root}", bcast, fold)

        def allgather(g: Any, shape: tuple = shape) -> list[np.ndarray]:
            outs = [np.zeros(shape, dt) for _ in range(P)]
            dist.all_gather(outs, data(dt, shape, R), group=g)
            return outs

        same(f"all_gather {dt} {shape}", allgather, fold)

        def allgather_tensor(g: Any, count: int = count) -> list[np.ndarray]:
            big = np.zeros(P * count, dt)
            dist.all_gather_into_tensor(big, data(dt, (count,), R), group=g)
            return [big]

        same(f"all_gather_into_tensor {dt} {count}", allgather_tensor, fold)

        def asyncgather(g: Any, shape: tuple = shape) -> list[np.ndarray]:
            outs = [np.zeros(shape, dt) for _ in range(P)]
            w = dist.all_gather(outs, data(dt, shape, R), group=g, async_op=True)
            assert w is not None
            w.wait()
            return outs

        same(f"async all_gather {dt} {shape}", asyncgather, fold)

    # reduce_scatter: each rank contributes P blocks
    fits = SLOT // (item * P)
    for count in (1, 3, fits, fits + 1):
        fold = P * count * item <= SLOT
        for op in ops_of(dt):

            def rs(g: Any, op: ReduceOp = op, count: int = count) -> list[np.ndarray]:
                out = np.zeros(count, dt)
                ins = [data(dt, (count,), R, j) for j in range(P)]
                dist.reduce_scatter(out, ins, op=op, group=g)
                out2 = np.zeros(count, dt)
                dist.reduce_scatter_tensor(out2, data(dt, (P * count,), R), op=op, group=g)
                return [out, out2]

            same(f"reduce_scatter {dt} {count} {op}", rs, fold, 2)

            def asyncrs(g: Any, op: ReduceOp = op, count: int = count) -> list[np.ndarray]:
                out = np.zeros(count, dt)
                ins = [data(dt, (count,), R, j) for j in range(P)]
                w = dist.reduce_scatter(out, ins, op=op, group=g, async_op=True)
                assert w is not None
                w.wait()
                return [out]

            same(f"async reduce_scatter {dt} {count} {op}", asyncrs, fold)


for dt in DTYPES:
    check_dtype(dt)

# in place: the output is this rank's block of the input
for k in (3, SLOT // 8 + 1):
    x = np.arange(P * k, dtype=np.int64) + R
    dist.reduce_scatter_tensor(x[R * k : R * k + k], x)
    want = (np.arange(P * k, dtype=np.int64) * P + sum(range(P)))[R * k : R * k + k]
    assert (x[R * k : R * k + k] == want).all(), (k, x, want)
    checks += 1

# the process group's own methods take lists of other shapes (same bytes) than the input's
for count in (3, SLOT // 8 + 1):
    outs = [np.zeros((1, count), np.int64) for _ in range(P)]
    PG.allgather([outs], [data("int64", (count,), R)]).wait()
    for r in range(P):
        assert (outs[r] == data("int64", (1, count), r)).all(), (count, r, outs[r])
    out = np.zeros(count, np.int64)
    PG.reduce_scatter([out], [[data("int64", (1, count), R, j) for j in range(P)]]).wait()
    assert (out == sum(data("int64", (count,), r, R) for r in range(P))).all(), (count, out)
    checks += 1


def barrier(g: Any) -> list[np.ndarray]:
    dist.barrier(group=g)
    w = dist.barrier(group=g, async_op=True)
    assert w is not None
    w.wait()
    return []


same("barrier", barrier, True, 2)


def mixed(g: Any) -> list[np.ndarray]:
    """Folded and unfolded calls queued together, completed in issue order."""
    small, big = data("int64", (3,), R), data("int64", (SLOT,), R)
    outs = [np.zeros(3, np.int64) for _ in range(P)]
    works = [
        dist.all_reduce(small, group=g, async_op=True),
        dist.all_reduce(big, group=g, async_op=True),
        dist.all_gather(outs, small, group=g, async_op=True),
        dist.broadcast(big, src=P - 1, group=g, async_op=True),
    ]
    for w in works:
        assert w is not None
        w.wait()
    return [small, big, *outs]


if P > 1 and CHECK:  # the calls are counted apart (2 folded, 2 not): compare values only
    for name, g in (("mixed mpi", None), ("mixed tcp", TCP)):
        got = mixed(g)
        if g is None:
            mine = got
        else:
            assert all(np.array_equal(a, b) for a, b in zip(mine, got, strict=True)), name
    checks += 1

dist.destroy_process_group()
report(R, f"ok {R} {checks}")
sys.exit(0)
