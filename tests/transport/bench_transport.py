"""Benchmark of the TCP transport + algorithms with real processes, optionally vs torch gloo.

Not a test. ``python tests/transport/bench_transport.py --ranks 2 --vs-gloo``
"""

from __future__ import annotations

import argparse
import multiprocessing as mp
import statistics
import tempfile
import time

import numpy as np
from mesh_helpers import DirStore

SIZES = {"4": 4, "1K": 1 << 10, "64K": 64 << 10, "1M": 1 << 20, "16M": 16 << 20}


def _time(fn, sync, iters: int, reps: int = 5) -> float:
    for _ in range(max(2, iters // 5)):
        fn()
    out = []
    for _ in range(reps):
        sync()
        t0 = time.perf_counter()
        for _ in range(iters):
            fn()
        out.append((time.perf_counter() - t0) / iters)
    return statistics.median(out)


def _iters(nbytes: int) -> int:
    return 300 if nbytes <= 64 << 10 else 40 if nbytes <= 1 << 20 else 6


def _measure(
    ops: list[str], sizes: list[str], size: int, make, all_reduce, broadcast, all_gather, sync
) -> dict:
    """Seconds per call of each op and size; ``make(n)`` makes a float32 array of n items,
    the three kernels are one library's all_reduce(a), broadcast(a) and all_gather(outs, a)."""
    res = {}
    for op in ops:
        for s in sizes:
            nbytes = SIZES[s]
            a = make(max(nbytes // 4, 1))
            if op == "all_reduce":
                fn = lambda a=a: all_reduce(a)  # noqa: E731
            elif op == "broadcast":
                fn = lambda a=a: broadcast(a)  # noqa: E731
            elif op == "all_gather":
                outs = [make(a.shape[0]) for _ in range(size)]
                fn = lambda a=a, outs=outs: all_gather(outs, a)  # noqa: E731
            res[(op, s)] = _time(fn, sync, _iters(nbytes))
    return res


def mpdist_worker(path: str, rank: int, size: int, ops: list[str], sizes: list[str], q) -> None:
    import mpdist.algorithms as A
    from mpdist.transport import TcpTransport

    t = TcpTransport(DirStore(path, 60.0), rank, size, 60.0).connect()
    comm = A.Communicator(t, 60.0)
    res = _measure(
        ops,
        sizes,
        size,
        lambda n: np.zeros(n, np.float32),
        lambda a: A.allreduce(comm, a, A.ReduceOp.SUM),
        lambda a: A.broadcast(comm, a, 0),
        lambda outs, a: A.allgather(comm, outs, a),
        lambda: A.barrier(comm),
    )
    t.close()
    if rank == 0:
        q.put(res)


def gloo_worker(path: str, rank: int, size: int, ops: list[str], sizes: list[str], q) -> None:
    import torch
    import torch.distributed as dist

    dist.init_process_group("gloo", init_method=f"file://{path}/gloo", rank=rank, world_size=size)
    res = _measure(
        ops,
        sizes,
        size,
        lambda n: torch.ones(n, dtype=torch.float32),
        dist.all_reduce,
        lambda a: dist.broadcast(a, 0),
        dist.all_gather,
        dist.barrier,
    )
    dist.destroy_process_group()
    if rank == 0:
        q.put(res)


def run(worker, size: int, ops: list[str], sizes: list[str]) -> dict:
    ctx = mp.get_context("spawn")
    q = ctx.Queue()
    with tempfile.TemporaryDirectory() as path:
        procs = [
            ctx.Process(target=worker, args=(path, r, size, ops, sizes, q)) for r in range(size)
        ]
        for p in procs:
            p.start()
        res = q.get(timeout=600)
        for p in procs:
            p.join()
    return res


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--ranks", type=int, default=2)
    ap.add_argument("--ops", default="all_reduce,broadcast,all_gather")
    ap.add_argument("--sizes", default="4,64K,1M,16M")
    ap.add_argument("--vs-gloo", action="store_true")
    args = ap.parse_args()
    ops, sizes = args.ops.split(","), args.sizes.split(",")
    mine = run(mpdist_worker, args.ranks, ops, sizes)
    gloo = run(gloo_worker, args.ranks, ops, sizes) if args.vs_gloo else {}
    print(f"ranks={args.ranks}")
    print(f"{'op':<12}{'size':>6}{'mpdist ms':>12}{'gloo ms':>10}{'ratio':>8}")
    for key, v in mine.items():
        g = gloo.get(key)
        gs = f"{g * 1e3:10.3f}{v / g:8.2f}" if g else ""
        print(f"{key[0]:<12}{key[1]:>6}{v * 1e3:12.3f}{gs}")


if __name__ == "__main__":
    main()
