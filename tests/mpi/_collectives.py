"""Run under mpiexec: every collective on the mpi backend against the same call on tcp.

The default group is ``init_process_group("mpi")`` with no init_method and no
MASTER_ADDR (so the rendezvous is mpi://); a tcp group over the same ranks comes from
``new_group(backend="tcp")``. Inputs are small integers, so every reduction is exact and
the two backends must agree bit for bit. Prints ``ok <rank> <checks>`` at the end.
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

assert "MASTER_ADDR" not in os.environ
dist.init_process_group("mpi")
R, P = dist.get_rank(), dist.get_world_size()
assert dist.get_backend() == "mpi", dist.get_backend()
TCP = dist.new_group(backend="tcp")
SUB = dist.new_group(ranks=list(range(0, P, 2)), backend="mpi")  # even ranks
checks = 0

DTYPES = ["float32", "float64", "int32", "int64", "uint8", "bool", "float16", "complex64"]
OPS = {
    "bool": [
        ReduceOp.SUM,
        ReduceOp.PRODUCT,
        ReduceOp.MIN,
        ReduceOp.MAX,
        ReduceOp.BAND,
        ReduceOp.BOR,
        ReduceOp.BXOR,
    ],
    "complex64": [ReduceOp.SUM, ReduceOp.PRODUCT, ReduceOp.AVG],
    "float": [ReduceOp.SUM, ReduceOp.PRODUCT, ReduceOp.MIN, ReduceOp.MAX, ReduceOp.AVG],
    "int": [
        ReduceOp.SUM,
        ReduceOp.PRODUCT,
        ReduceOp.MIN,
        ReduceOp.MAX,
        ReduceOp.AVG,
        ReduceOp.BAND,
        ReduceOp.BOR,
        ReduceOp.BXOR,
    ],
}


def ops_of(dt: str) -> list[ReduceOp]:
    if dt in OPS:
        return OPS[dt]
    return OPS["float"] if dt.startswith("float") else OPS["int"]


def data(dt: str, shape: tuple[int, ...], rank: int, salt: int = 0) -> np.ndarray:
    n = int(np.prod(shape))
    vals = (np.arange(n) * 7 + rank * 3 + salt) % 5 + (rank % 2)
    if dt == "bool":
        return (vals % 2 == 0).reshape(shape)
    return vals.astype(dt).reshape(shape)


def same(name: str, fn: Callable[[Any], list[np.ndarray]]) -> None:
    """fn(group) -> arrays; equal (values, dtype, shape) on mpi and tcp."""
    global checks
    assert_same_arrays(name, R, fn(None), fn(TCP))
    checks += 1


def check_dtype(dt: str) -> None:
    """Every collective on dtype ``dt`` (closures bind ``dt`` per call)."""
    for shape in [(5,), (2, 3), ()]:
        for op in ops_of(dt):

            def allreduce(g: Any, op: ReduceOp = op, shape: tuple = shape) -> list[np.ndarray]:
                x = data(dt, shape, R)
                dist.all_reduce(x, op=op, group=g)
                return [x]

            same(f"all_reduce {dt} {shape} {op}", allreduce)

            def reduce(g: Any, op: ReduceOp = op, shape: tuple = shape) -> list[np.ndarray]:
                x = data(dt, shape, R)
                dist.reduce(x, dst=P - 1, op=op, group=g)
                return [x]

            same(f"reduce {dt} {shape} {op}", reduce)

            def rs(g: Any, op: ReduceOp = op) -> list[np.ndarray]:
                out = np.zeros(3, dt)
                dist.reduce_scatter(out, [data(dt, (3,), R, j) for j in range(P)], op=op, group=g)
                out2 = np.zeros(2, dt)
                dist.reduce_scatter_tensor(out2, data(dt, (2 * P,), R), op=op, group=g)
                return [out, out2]

            same(f"reduce_scatter {dt} {op}", rs)

            def asyncred(g: Any, op: ReduceOp = op) -> list[np.ndarray]:
                xs = [data(dt, (4,), R, s) for s in range(3)]
                works = [dist.all_reduce(x, op=op, group=g, async_op=True) for x in xs]
                for w in works:
                    assert w is not None
                    w.wait()
                return xs

            same(f"async all_reduce {dt} {op}", asyncred)

        def bcast(g: Any, shape: tuple = shape) -> list[np.ndarray]:
            outs = []
            for root in range(P):
                x = data(dt, shape, R)
                dist.broadcast(x, src=root, group=g)
                outs.append(x)
            return outs

        same(f"broadcast {dt} {shape}", bcast)

        def allgather(g: Any, shape: tuple = shape) -> list[np.ndarray]:
            outs = [np.zeros(shape, dt) for _ in range(P)]
            dist.all_gather(outs, data(dt, shape, R), group=g)
            big = np.zeros((P * 2, 3), dt)
            dist.all_gather_into_tensor(big, data(dt, (2, 3), R), group=g)
            return [*outs, big]

        same(f"all_gather {dt} {shape}", allgather)

        def gather(g: Any, shape: tuple = shape) -> list[np.ndarray]:
            root = P // 2
            outs = [np.zeros(shape, dt) for _ in range(P)] if root == R else None
            dist.gather(data(dt, shape, R), outs, dst=root, group=g)
            return outs or []

        same(f"gather {dt} {shape}", gather)

        def scatter(g: Any, shape: tuple = shape) -> list[np.ndarray]:
            out = np.zeros(shape, dt)
            ins = [data(dt, shape, R, j) for j in range(P)] if R == 0 else None
            dist.scatter(out, ins, src=0, group=g)
            return [out]

        same(f"scatter {dt} {shape}", scatter)

    def alltoall(g: Any) -> list[np.ndarray]:
        # rank i sends j+1 rows... sizes differ per pair
        ins = [data(dt, (R + j + 1,), R, j) for j in range(P)]
        outs = [np.zeros(j + R + 1, dt) for j in range(P)]
        dist.all_to_all(outs, ins, group=g)
        inp = data(dt, (sum(R + j + 1 for j in range(P)), 2), R)
        out = np.zeros((sum(j + R + 1 for j in range(P)), 2), dt)
        dist.all_to_all_single(
            out, inp, [j + R + 1 for j in range(P)], [R + j + 1 for j in range(P)], group=g
        )
        even = np.zeros((P, 3), dt)
        dist.all_to_all_single(even, data(dt, (P, 3), R), group=g)
        return [*outs, out, even]

    same(f"all_to_all {dt}", alltoall)


for dt in DTYPES:
    check_dtype(dt)


def p2p(g: Any) -> list[np.ndarray]:
    got = []
    if P == 1:
        return got
    right, left = (R + 1) % P, (R - 1) % P
    for tag in (0, 5):
        x = data("float64", (6,), R, tag)
        y = np.zeros(6)
        if R % 2 == 0:
            dist.send(x, right, group=g, tag=tag)
            dist.recv(y, left, group=g, tag=tag)
        else:
            dist.recv(y, left, group=g, tag=tag)
            dist.send(x, right, group=g, tag=tag)
        got.append(y)
    # non-blocking, both directions at once (would deadlock if isend blocked)
    big = data("float32", (1 << 18,), R)
    back = np.zeros_like(big)
    reqs = [dist.isend(big, right, group=g, tag=9), dist.irecv(back, left, group=g, tag=9)]
    for w in reqs:
        assert w is not None
        w.wait()
    got.append(back)
    ops = [
        dist.P2POp(dist.isend, data("int64", (3,), R), right, g),
        dist.P2POp(dist.irecv, np.zeros(3, np.int64), left, g),
    ]
    for w in dist.batch_isend_irecv(ops):
        w.wait()
    got.append(ops[1].tensor)
    if R == 0:  # any source: everyone else sends to 0
        for _ in range(P - 1):
            z = np.zeros(2, np.int64)
            src = dist.recv(z, group=g, tag=3)
            assert z[0] == src, (z, src)
    else:
        dist.send(np.array([R, R], np.int64), 0, group=g, tag=3)
    return got


same("send/recv", p2p)


def objects(g: Any) -> list[np.ndarray]:
    objs: list[Any] = [None] * P
    dist.all_gather_object(objs, {"rank": R, "x": list(range(R))}, group=g)
    lst: list[Any] = [("hello", R)] if R == 0 else [None]
    dist.broadcast_object_list(lst, src=0, group=g)
    return [np.frombuffer(repr((objs, lst)).encode(), np.uint8)]


same("object collectives", objects)
dist.barrier()
dist.monitored_barrier()

if SUB is not dist.GroupMember.NON_GROUP_MEMBER:
    x = np.full(3, R, np.int64)
    dist.all_reduce(x, group=SUB)
    assert (x == sum(range(0, P, 2))).all(), x
    assert dist.get_rank(SUB) == R // 2

dist.destroy_process_group()
report(R, f"ok {R} {checks}")
sys.exit(0)
