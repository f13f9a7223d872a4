"""Benchmark of the TCP transport + algorithms with real processes, optionally vs torch gloo.

Not a test. ``python tests/transport/bench_transport.py --ranks 2 --vs-gloo``
"""

from __future__ import annotations

import argparse
import multiprocessing as mp
import os
import statistics
import sys
import tempfile
import time

import numpy as np

SIZES = {"4": 4, "1K": 1 << 10, "64K": 64 << 10, "1M": 1 << 20, "16M": 16 << 20}


class DirStore:
    """A store of one file per key in a directory (enough for the transport's set/get)."""

    def __init__(self, path: str, timeout: float = 60.0) -> None:
        self.path = path
        self.timeout = timeout

    def _f(self, key: str) -> str:
        return os.path.join(self.path, key.replace("/", "_"))

    def set(self, key: str, value) -> None:
        data = value.encode() if isinstance(value, str) else value
        tmp = self._f(key) + f".tmp{os.getpid()}"
        with open(tmp, "wb") as f:
            f.write(data)
        os.replace(tmp, self._f(key))

    def get(self, key: str) -> bytes:
        deadline = time.monotonic() + self.timeout
        while True:
            try:
                with open(self._f(key), "rb") as f:
                    return f.read()
            except FileNotFoundError:
                if time.monotonic() > deadline:
                    raise TimeoutError(key) from None
                time.sleep(0.001)


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


def mpdist_worker(path: str, rank: int, size: int, ops: list[str], sizes: list[str], q) -> None:
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))))
    import mpdist.algorithms as A
    from mpdist.transport import TcpTransport

    t = TcpTransport(DirStore(path), rank, size, 60.0)
    comm = A.Communicator(t, 60.0)
    res = {}
    for op in ops:
        for s in sizes:
            nbytes = SIZES[s]
            a = np.zeros(max(nbytes // 4, 1), dtype=np.float32)
            if op == "all_reduce":
                fn = lambda a=a: A.allreduce(comm, a, A.ReduceOp.SUM)  # noqa: E731
            elif op == "broadcast":
                fn = lambda a=a: A.broadcast(comm, a, 0)  # noqa: E731
            elif op == "all_gather":
                outs = [np.empty_like(a) for _ in range(size)]
                fn = lambda a=a, outs=outs: A.allgather(comm, outs, a)  # noqa: E731
            res[(op, s)] = _time(fn, lambda: A.barrier(comm), _iters(nbytes))
    t.close()
    if rank == 0:
        q.put(res)


def gloo_worker(path: str, rank: int, size: int, ops: list[str], sizes: list[str], q) -> None:
    import torch
    import torch.distributed as dist

    dist.init_process_group("gloo", init_method=f"file://{path}/gloo", rank=rank, world_size=size)
    res = {}
    for op in ops:
        for s in sizes:
            nbytes = SIZES[s]
            a = torch.ones(max(nbytes // 4, 1), dtype=torch.float32)
            if op == "all_reduce":
                fn = lambda a=a: dist.all_reduce(a)  # noqa: E731
            elif op == "broadcast":
                fn = lambda a=a: dist.broadcast(a, 0)  # noqa: E731
            elif op == "all_gather":
                outs = [torch.empty_like(a) for _ in range(size)]
                fn = lambda a=a, outs=outs: dist.all_gather(outs, a)  # noqa: E731
            res[(op, s)] = _time(fn, dist.barrier, _iters(nbytes))
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
