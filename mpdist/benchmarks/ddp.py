"""``python -m mpdist bench ddp``: DDP step time of a ~1M-parameter MLP against one process.

Rows: the model trained in one process (on one rank's batch, and on the global batch), and
under DDP on ``--world-size`` real processes (spawned, meeting through a FileStore) with
gradient reduction overlapped with backward (small buckets) and not overlapped (one bucket,
reduced after backward). A step is zero_grad + forward + MSE loss + backward + SGD step.
Each row reports the median step time (the slowest rank's median for DDP).
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


def _time_steps(
    model: Any, x: np.ndarray, y: np.ndarray, warmup: int, steps: int, sync: Any = None
) -> list[float]:
    from mpdist.nn import functional as F
    from mpdist.optim import SGD

    opt = SGD(model.parameters(), lr=1e-3, momentum=0.9)
    times = []
    for i in range(warmup + steps):
        if i == warmup and sync is not None:
            sync()
        t0 = time.perf_counter()
        opt.zero_grad()
        F.mse_loss(model(x), y).backward()
        opt.step()
        if i >= warmup:
            times.append(time.perf_counter() - t0)
    return times


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
            timeout=timedelta(seconds=120),
        )
        try:
            x, y = _batch(cfg["batch"], seed=rank)
            reducer.DEFAULT_FIRST_BUCKET_BYTES = 1 << 20
            views = cfg["grad_views"]
            overlap = DDP(
                _model(), bucket_cap_mb=cfg["bucket_cap_mb"], gradient_as_bucket_view=views
            )
            # One bucket holding every parameter: it is full (and reduced) only once backward
            # has produced the last gradient, so nothing overlaps.
            reducer.DEFAULT_FIRST_BUCKET_BYTES = 1 << 40
            single = DDP(_model(), bucket_cap_mb=1 << 20, gradient_as_bucket_view=views)
            models = {"overlap": overlap, "no overlap": single}
            times: dict[str, list[float]] = {m: [] for m in models}
            # Interleave the two modes in rounds so drift in machine load hits both alike.
            for _ in range(cfg["rounds"]):
                for mode, ddp in models.items():
                    times[mode] += _time_steps(
                        ddp, x, y, cfg["warmup"], cfg["steps"], sync=dist.barrier
                    )
            results = {
                m: (statistics.median(t), len(models[m].reducer.buckets)) for m, t in times.items()
            }
            gathered: list[Any] = [None] * world
            dist.all_gather_object(gathered, results)
            if rank == 0:
                q.put(("ok", gathered))
        finally:
            dist.destroy_process_group()
    except BaseException:
        q.put(("error", f"rank {rank}:\n{traceback.format_exc()}"))


def main(argv: Sequence[str] | None = None) -> int:
    """Run the benchmark and print a table; returns the exit status."""
    p = argparse.ArgumentParser(prog="mpdist bench ddp", description=__doc__.splitlines()[0])
    p.add_argument("--world-size", type=int, default=2)
    p.add_argument("--batch", type=int, default=64, help="samples per rank per step")
    p.add_argument("--steps", type=int, default=10, help="timed steps per round")
    p.add_argument("--rounds", type=int, default=4, help="rounds alternating the DDP modes")
    p.add_argument("--warmup", type=int, default=3)
    p.add_argument(
        "--grad-views",
        action="store_true",
        help="DDP with gradient_as_bucket_view=True (no copies)",
    )
    p.add_argument("--threads-per-rank", type=int, default=1, help="BLAS threads in each DDP rank")
    p.add_argument("--bucket-cap-mb", type=float, default=1.0, help="bucket size with overlap on")
    args = p.parse_args(list(argv) if argv is not None else None)
    if args.world_size < 2:
        p.error("--world-size must be at least 2")

    model = _model()
    n_params = sum(q.numel() for q in model.parameters())
    x1, y1 = _batch(args.batch, 0)
    xg, yg = _batch(args.batch * args.world_size, 0)
    n_single = args.steps * args.rounds
    single_local = statistics.median(_time_steps(model, x1, y1, args.warmup, n_single))
    single_global = statistics.median(_time_steps(_model(), xg, yg, args.warmup, n_single))

    cfg = dict(
        batch=args.batch,
        steps=args.steps,
        rounds=args.rounds,
        grad_views=args.grad_views,
        warmup=args.warmup,
        bucket_cap_mb=args.bucket_cap_mb,
    )
    ctx = mp.get_context("spawn")
    q = ctx.Queue()
    # One BLAS thread per rank: N ranks on N cores must not oversubscribe them.
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
            status, payload = q.get(timeout=600)
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
    rows = []
    for mode in ("overlap", "no overlap"):
        t = max(r[mode][0] for r in payload)
        rows.append((f"DDP {args.world_size} ranks, {mode} ({payload[0][mode][1]} buckets)", t))

    print(
        f"model: MLP {'-'.join(map(str, WIDTHS))}, {n_params:,} parameters (float32); "
        f"batch {args.batch} per rank; median of {n_single} steps; "
        f"{args.threads_per_rank} BLAS thread(s) per DDP rank"
        + ("; gradient_as_bucket_view" if args.grad_views else "")
    )
    print(f"{'configuration':<44} {'step ms':>9} {'samples/s':>10}")
    print(
        f"{'single process, batch ' + str(args.batch):<44} {single_local * 1e3:9.2f} {args.batch / single_local:10.0f}"
    )
    gb = args.batch * args.world_size
    print(
        f"{'single process, batch ' + str(gb):<44} {single_global * 1e3:9.2f} {gb / single_global:10.0f}"
    )
    for name, t in rows:
        print(f"{name:<44} {t * 1e3:9.2f} {gb / t:10.0f}")
    on, off = rows[0][1], rows[1][1]
    print(
        f"overlap on vs off: {off / on:.2f}x; DDP overhead vs one process on the same per-rank batch: "
        f"{on / single_local:.2f}x"
    )
    return 0
