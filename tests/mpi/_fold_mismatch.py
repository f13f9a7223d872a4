"""Run under mpiexec (2 or 3 ranks): ranks that disagree across the fold boundary (one
rank's call folded into the header check's record, another's not, or folded calls of
different kinds) all raise a clear error, and the group still works afterwards.

Rank 1 is the odd one out; the others call alike. Each case prints
``case <name> rank <r>: <error text>``.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
from _out import report

import mpdist as dist
from mpdist.distributed import _get_default_group
from mpdist.errors import DistBackendError

dist.init_process_group("mpi")
R, P = dist.get_rank(), dist.get_world_size()
ODD = R == 1
SLOT = _get_default_group()._records.slot  # type: ignore[attr-defined]
BIG = SLOT // 4 + 1  # float32 elements just too many to fold
HUGE = 1 << 16  # float32 elements: Bcast's and Allgather's rendezvous protocol


def case(name: str, fn: Callable[[], object]) -> None:
    try:
        fn()
    except DistBackendError as e:
        report(R, f"case {name} rank {R}: {e}")
    else:
        report(R, f"case {name} rank {R}: NO ERROR")
    for n in (3, BIG):  # still in step: a folded and an unfolded call
        x = np.ones(n, np.float32)
        dist.all_reduce(x)
        assert (x == P).all(), (name, x)


def wait(work: object) -> None:
    assert work is not None
    work.wait()  # type: ignore[attr-defined]


def f32(n: int) -> np.ndarray:
    return np.ones(n, np.float32)


case("all_reduce", lambda: dist.all_reduce(f32(BIG if ODD else 1)))
case("all_reduce huge", lambda: dist.all_reduce(f32(HUGE if ODD else 1)))
case("broadcast", lambda: dist.broadcast(f32(HUGE if ODD else 1), src=0))
case("broadcast root", lambda: dist.broadcast(f32(BIG if ODD else 1), src=R))


def all_gather() -> None:
    n = HUGE if ODD else 1
    dist.all_gather([f32(n) for _ in range(P)], f32(n))


case("all_gather", all_gather)


def all_gather_tensor() -> None:
    n = BIG if ODD else 4
    dist.all_gather_into_tensor(f32(P * n), f32(n))


case("all_gather_into_tensor", all_gather_tensor)


def reduce_scatter() -> None:
    n = BIG if ODD else 2
    dist.reduce_scatter(f32(n), [f32(n) for _ in range(P)])


case("reduce_scatter", reduce_scatter)
# folded calls of different kinds
case("kinds", lambda: dist.all_reduce(f32(4)) if ODD else dist.broadcast(f32(4), src=0))


def folded_vs_gather() -> None:
    if ODD:
        dist.gather(f32(2), [f32(2) for _ in range(P)] if R == 0 else None, dst=0)
    else:
        dist.all_gather([f32(2) for _ in range(P)], f32(2))


case("gather", folded_vs_gather)
case("barrier", lambda: dist.barrier() if ODD else dist.all_reduce(f32(HUGE)))
case("async", lambda: wait(dist.all_reduce(f32(HUGE if ODD else 2), async_op=True)))


def all_to_all() -> None:
    if ODD:
        dist.all_to_all_single(f32(P), f32(P))
    else:
        dist.all_reduce(f32(P))


case("all_to_all", all_to_all)
dist.barrier()
dist.destroy_process_group()
report(R, f"done {R}")
