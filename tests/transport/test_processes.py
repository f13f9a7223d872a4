"""TcpTransport between real processes: collectives, and a rank that dies mid-job."""

from __future__ import annotations

import os

import numpy as np
from mesh_helpers import DirStore

import mpdist.algorithms as A
from mpdist.errors import DistNetworkError
from mpdist.testing import spawn_ranks
from mpdist.transport import TcpTransport


def collectives(rank: int, size: int, path: str) -> tuple:
    """Rank job: the collectives over a raw TcpTransport; what each rank ends up with."""
    t = TcpTransport(DirStore(path), rank, size, 30.0).connect()
    try:
        comm = A.Communicator(t, 30.0)
        small = np.arange(5, dtype=np.float64) + rank
        big = np.arange(600_000, dtype=np.float32) * (rank + 1)
        A.allreduce(comm, small)
        A.allreduce(comm, big)
        b = np.arange(4, dtype=np.int32) if rank == 1 else np.zeros(4, np.int32)
        A.broadcast(comm, b, 1)
        outs = [np.empty(3, np.int64) for _ in range(size)]
        A.allgather(comm, outs, np.full(3, rank, np.int64))
        return small, big[:3].copy(), big[-1], b, np.stack(outs)
    finally:
        t.close()


def dies(rank: int, size: int, path: str) -> str:
    """Rank job: the last rank leaves without a goodbye; the others report what they saw."""
    t = TcpTransport(DirStore(path), rank, size, 30.0).connect()
    try:
        comm = A.Communicator(t, 30.0)
        try:
            # the last rank leaves without a goodbye once the barrier is through; the others
            # must notice (in the barrier already, or in the all_reduce after it)
            A.barrier(comm)
            if rank == size - 1:
                os._exit(0)
            A.allreduce(comm, np.ones(4))
            return "no error"
        except DistNetworkError as e:
            return str(e)
    finally:
        t.close()


def test_collectives_across_processes(tmp_path) -> None:
    size = 3
    res = spawn_ranks(collectives, size, str(tmp_path), backend=None)
    exp_small = sum(np.arange(5, dtype=np.float64) + r for r in range(size))
    for small, big3, big_last, b, gathered in res:
        assert np.array_equal(small, exp_small)
        assert np.array_equal(big3, np.arange(3, dtype=np.float32) * 6)
        assert big_last == np.float32(599_999) * 6
        assert b.tolist() == [0, 1, 2, 3]
        assert gathered.tolist() == [[0] * 3, [1] * 3, [2] * 3]
    # bitwise identical everywhere
    assert len({r[0].tobytes() for r in res}) == 1


def test_rank_exiting_mid_job_raises_network_error_naming_it(tmp_path) -> None:
    res = spawn_ranks(dies, 3, str(tmp_path), backend=None, may_die=[2])
    for msg in res[:2]:
        assert isinstance(msg, str) and "rank 2" in msg, msg
    assert res[2] is None  # it exited without a result
