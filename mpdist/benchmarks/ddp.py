"""``python -m mpdist bench ddp``: DDP step time of a ~1M-parameter MLP against one process.

Rows: the model trained in one process (on one rank's batch, and on the global batch), and
under DDP on ``--world-size`` real processes (spawned, meeting through a FileStore) with
gradient reduction overlapped with backward (small buckets) and not overlapped (one bucket,
reduced after backward). A step is zero_grad + forward + MSE loss + backward + SGD step.
Configurations alternate step by step (all ranks meet at a barrier before each step; the
single-process rows run on rank 0 while the others wait), so drifting machine load hits them
alike. Each row reports the median step time (the slowest rank's median for DDP).
"""

from __future__ import annotations

import argparse
import multiprocessing as mp
import os
import statistics
import sys
import tempfile
import time
import traceback
from collections.abc import Sequence
from datetime import timedelta
from typing import Any

import numpy as np

__all__ = ["main"]

_THREAD_VARS = ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS")
WIDTHS = (512, 512, 512, 512, 512, 16)  # 1,058,832 parameters


def _model(seed: int = 0) -> Any:
    import mpdist
    from mpdist import nn

    mpdist.manual_seed(seed)
    layers: list[Any] = []
    for i in range(len(WIDTHS) - 1):
        layers.append(nn.Linear(WIDTHS[i], WIDTHS[i + 1]))
        if i < len(WIDTHS) - 2:
            layers.append(nn.ReLU())
    return nn.Sequential(*layers)


def _batch(n: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((n, WIDTHS[0])).astype(np.float32)
    y = rng.standard_normal((n, WIDTHS[-1])).astype(np.float32)
    return x, y


class _Stepper:
    """One model with its SGD optimizer and a fixed batch; ``step()`` times one step."""

    def __init__(self, model: Any, x: np.ndarray, y: np.ndarray) -> None:
        from mpdist.optim import SGD

        self.model, self.x, self.y = model, x, y
        self.opt = SGD(model.parameters(), lr=1e-3, momentum=0.9)

    def step(self) -> float:
        from mpdist.nn import functional as F

        t0 = time.perf_counter()
        self.opt.zero_grad()
        F.mse_loss(self.model(self.x), self.y).backward()
        self.opt.step()
        return time.perf_counter() - t0


def _rank_main(rank: int, world: int, path: str, cfg: dict[str, Any], q: Any) -> None:
    try:
        import mpdist.distributed as dist
        from mpdist.parallel import DistributedDataParallel as DDP
        from mpdist.parallel import reducer
        from mpdist.store import FileStore

        dist.init_process_group(
            "tcp",
            store=FileStore(path, world),
            rank=rank,
            world_size=world,
            timeout=timedelta(seconds=300),
        )
        try:
            x, y = _batch(cfg["batch"], seed=rank)
            views = cfg["grad_views"]
            reducer.DEFAULT_FIRST_BUCKET_BYTES = 1 << 20
            overlap = DDP(
                _model(), bucket_cap_mb=cfg["bucket_cap_mb"], gradient_as_bucket_view=views
            )
            # One bucket holding every parameter: it is full (and reduced) only once backward
            # has produced the last gradient, so nothing overlaps.
            reducer.DEFAULT_FIRST_BUCKET_BYTES = 1 << 40
            one_bucket = DDP(_model(), bucket_cap_mb=1 << 20, gradient_as_bucket_view=views)
            buckets = {"overlap": len(overlap.reducer.buckets), "no overlap": 1}
            steppers = {
                "overlap": _Stepper(overlap, x, y),
                "no overlap": _Stepper(one_bucket, x, y),
                # single-process rows run on rank 0 while the other ranks wait at the barrier
                "single": _Stepper(_model(), x, y),
                "single global": _Stepper(_model(), *_batch(cfg["batch"] * world, seed=0)),
            }
            times: dict[str, list[float]] = {m: [] for m in steppers}
            # Modes alternate step by step, so drift in machine load hits them all alike.
            for i in range(cfg["warmup"] + cfg["steps"]):
                for mode, stepper in steppers.items():
                    dist.barrier()
                    if mode.startswith("single") and rank != 0:
                        continue
                    t = stepper.step()
                    if i >= cfg["warmup"]:
                        times[mode].append(t)
            results = {m: statistics.median(t) for m, t in times.items() if t}
            gathered: list[Any] = [None] * world
            dist.all_gather_object(gathered, results)
            if rank == 0:
                q.put(("ok", (gathered, buckets)))
        finally:
            dist.destroy_process_group()
    except BaseException:
        q.put(("error", f"rank {rank}:\n{traceback.format_exc()}"))


def main(argv: Sequence[str] | None = None) -> int:
    """Run the benchmark and print a table; returns the exit status."""
    p = argparse.ArgumentParser(prog="mpdist bench ddp", description=__doc__.splitlines()[0])
    p.add_argument("--world-size", type=int, default=2)
    p.add_argument("--batch", type=int, default=64, help="samples per rank per step")
    p.add_argument("--steps", type=int, default=30, help="timed steps per configuration")
    p.add_argument("--warmup", type=int, default=3)
    p.add_argument(
        "--grad-views", action="store_true", help="DDP with gradient_as_bucket_view=True"
    )
    p.add_argument("--threads-per-rank", type=int, default=1, help="BLAS threads per process")
    p.add_argument("--bucket-cap-mb", type=float, default=1.0, help="bucket size with overlap on")
    args = p.parse_args(list(argv) if argv is not None else None)
    if args.world_size < 2:
        p.error("--world-size must be at least 2")
    if args.steps < 1 or args.warmup < 0 or args.batch < 1:
        p.error("--steps and --batch must be positive, --warmup non-negative")

    cfg = dict(
        batch=args.batch,
        steps=args.steps,
        grad_views=args.grad_views,
        warmup=args.warmup,
        bucket_cap_mb=args.bucket_cap_mb,
    )
    ctx = mp.get_context("spawn")
    q = ctx.Queue()
    # A fixed number of BLAS threads per process: N ranks on N cores must not oversubscribe.
    saved = {k: os.environ.get(k) for k in _THREAD_VARS}
    os.environ.update({k: str(args.threads_per_rank) for k in _THREAD_VARS})
    with tempfile.TemporaryDirectory(prefix="mpdist-bench-ddp-") as tmp:
        path = os.path.join(tmp, "store")
        procs = [
            ctx.Process(target=_rank_main, args=(r, args.world_size, path, cfg, q))
            for r in range(args.world_size)
        ]
        try:
            for pr in procs:
                pr.start()
        finally:
            for k, v in saved.items():
                if v is None:
                    os.environ.pop(k, None)
                else:
                    os.environ[k] = v
        try:
            status, payload = q.get(timeout=900)
        finally:
            for pr in procs:
                pr.join(timeout=60)
                if pr.is_alive():
                    pr.kill()
                    pr.join()
    q.close()
    q.join_thread()
    if status != "ok":
        print(payload, file=sys.stderr)
        return 1
    per_rank, buckets = payload
    n_params = sum(q.numel() for q in _model().parameters())
    ws, b = args.world_size, args.batch
    gb = b * ws
    rows = [
        (f"single process, batch {b}", per_rank[0]["single"], b),
        (f"single process, batch {gb}", per_rank[0]["single global"], gb),
    ]
    for mode in ("overlap", "no overlap"):
        t = max(r[mode] for r in per_rank)  # the slowest rank sets the pace
        rows.append((f"DDP {ws} ranks, {mode} ({buckets[mode]} buckets)", t, gb))

    print(
        f"model: MLP {'-'.join(map(str, WIDTHS))}, {n_params:,} parameters (float32); "
        f"batch {b} per rank; median of {args.steps} steps, configurations interleaved; "
        f"{args.threads_per_rank} BLAS thread(s) per process"
        + ("; gradient_as_bucket_view" if args.grad_views else "")
    )
    print(f"{'configuration':<44} {'step ms':>9} {'samples/s':>10}")
    for name, t, n in rows:
        print(f"{name:<44} {t * 1e3:9.2f} {n / t:10.0f}")
    single, single_global, on, off = (r[1] for r in rows)
    print(
        f"overlap on vs off: {off / on:.2f}x faster; DDP step vs one process on the same "
        f"per-rank batch: {on / single:.2f}x the time; DDP throughput vs one process on the "
        f"global batch: {single_global / on:.2f}x"
    )
    return 0
