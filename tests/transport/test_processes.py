"""TcpTransport between real processes: collectives, and a rank that dies mid-job."""

from __future__ import annotations

import multiprocessing as mp
import os

import numpy as np
from mesh_helpers import DirStore

import mpdist.algorithms as A
from mpdist.errors import DistNetworkError
from mpdist.transport import TcpTransport

CTX = mp.get_context("spawn")


def _collectives(path: str, rank: int, size: int, conn) -> None:
    t = TcpTransport(DirStore(path), rank, size, 30.0)
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
        conn.send((small, big[:3].copy(), big[-1], b, np.stack(outs)))
    except BaseException as e:
        conn.send(e)
    finally:
        t.close()
        conn.close()


def _dies(path: str, rank: int, size: int, conn) -> None:
    t = TcpTransport(DirStore(path), rank, size, 30.0)
    try:
        comm = A.Communicator(t, 30.0)
        try:
            # the last rank leaves without a goodbye once the barrier is through; the others
            # must notice (in the barrier already, or in the all_reduce after it)
            A.barrier(comm)
            if rank == size - 1:
                os._exit(0)
            A.allreduce(comm, np.ones(4))
            conn.send("no error")
        except DistNetworkError as e:
            conn.send(str(e))
    finally:
        t.close()
        conn.close()


def _run(target, size: int, tmp_path) -> list:
    pipes = [CTX.Pipe(duplex=False) for _ in range(size)]
    procs = [
        CTX.Process(target=target, args=(str(tmp_path), r, size, pipes[r][1])) for r in range(size)
    ]
    for p in procs:
        p.start()
    for _, w in pipes:
        w.close()
    out: list = []
    try:
        for r, _ in pipes:
            try:
                out.append(r.recv() if r.poll(60) else TimeoutError("no result"))
            except EOFError as e:  # the rank exited without reporting
                out.append(e)
    finally:
        for p in procs:
            p.join(30)
            if p.is_alive():
                p.kill()
                p.join()
        for r, _ in pipes:
            r.close()
    return out


def test_collectives_across_processes(tmp_path) -> None:
    size = 3
    res = _run(_collectives, size, tmp_path)
    for r in res:
        assert not isinstance(r, BaseException), r
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
    res = _run(_dies, 3, tmp_path)
    for msg in res[:2]:
        assert isinstance(msg, str) and "rank 2" in msg, msg
    assert isinstance(res[2], EOFError)
