"""Run under mpiexec -n 2: ranks that disagree get a clear error, then the group still works.

Each case prints ``case <name>: <error text>`` (rank 0 and rank 1 alike); the group is
used again after every error, so the header check must leave it consistent.
"""

from __future__ import annotations

import time
from datetime import timedelta

import numpy as np
from _out import report

import mpdist as dist
from mpdist.errors import DistBackendError

dist.init_process_group("mpi")
R = dist.get_rank()
assert dist.get_world_size() == 2


def case(name: str, fn) -> None:  # type: ignore[no-untyped-def]
    try:
        fn()
    except DistBackendError as e:
        report(R, f"case {name} rank {R}: {e}")
    else:
        report(R, f"case {name} rank {R}: NO ERROR")
    x = np.ones(3)
    dist.all_reduce(x)  # still in step
    assert (x == 2).all(), x


case("shape", lambda: dist.all_reduce(np.ones(4 if R == 0 else 5, np.float32)))
case("dtype", lambda: dist.all_reduce(np.ones(4, np.float32 if R == 0 else np.float64)))
case("reshape", lambda: dist.all_reduce(np.ones((2, 3) if R == 0 else (3, 2))))
# each rank now keeps the header of its own shape ready: the same call checks alike
case("reshape again", lambda: dist.all_reduce(np.ones((2, 3) if R == 0 else (3, 2))))
case("agreed before", lambda: dist.all_reduce(np.ones(3 if R == 0 else 4)))
case("op", lambda: dist.all_reduce(np.ones(2)) if R == 0 else dist.broadcast(np.ones(2), 0))
case("root", lambda: dist.broadcast(np.ones(2), src=R))
case(
    "redop",
    lambda: dist.all_reduce(np.ones(2), op=dist.ReduceOp.SUM if R == 0 else dist.ReduceOp.MAX),
)


def pairs() -> None:
    # rank 1 expects 3 elements from rank 0, which sends 2
    out = [np.zeros(3), np.zeros(1)] if R == 1 else [np.zeros(1), np.zeros(1)]
    ins = [np.ones(1), np.ones(2)] if R == 0 else [np.ones(1), np.ones(1)]
    dist.all_to_all(out, ins)


case("alltoall", pairs)


def asynchronous() -> None:
    w = dist.all_reduce(np.ones(4 if R == 0 else 6), async_op=True)
    assert w is not None
    w.wait()


case("async", asynchronous)


def recv_size() -> None:
    if R == 0:
        dist.send(np.ones(5), 1)
    else:
        dist.recv(np.zeros(3), 0)


try:
    recv_size()
except DistBackendError as e:
    report(R, f"case recv rank {R}: {e}")
if R == 1:
    time.sleep(1.5)  # late for rank 0's deadline
try:
    dist.monitored_barrier(timeout=timedelta(seconds=0.5))
except DistBackendError as e:
    report(R, f"case monitored rank {R}: {e}")
dist.barrier()
dist.destroy_process_group()
report(R, f"done {R}")
