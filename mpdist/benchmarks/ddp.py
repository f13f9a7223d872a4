"""``python -m mpdist bench ddp``: DDP step time of a ~1M-parameter MLP against one process.

Rows: the model trained in one process (on one rank's batch, and on the global batch), and
under DDP on ``--world-size`` real processes (spawned, meeting through a FileStore) with
overlap on (DDP's buckets: the first 1 MiB, then ``--bucket-cap-mb``; each all-reduced as
soon as it is full, during backward) and off (one bucket, reduced after backward). Overlap
on is DDP as configured for this host (stepped all-reduces advanced by backward's own
thread, or a communication thread where the host has a core to spare per rank); the
other way is timed too, for comparison (mpdist only). A step is zero_grad + forward + MSE loss + backward + SGD step.
Configurations alternate step by step (all ranks meet at a barrier before each step; the
single-process rows run on rank 0 while the others wait), so drifting machine load hits them
alike. Each row reports the median step time (the slowest rank's median for DDP) and the
median CPU time the process used per step, which is what to compare on a shared machine.
When torch is installed the same rows run with torch's DDP over gloo (separate processes)
side by side (``--vs none`` skips them). ``--repeat`` runs everything several times.
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
from collections.abc import Callable, Sequence
from datetime import timedelta
from typing import Any

import numpy as np

from mpdist.benchmarks import output
from mpdist.benchmarks._env import blas_threads, sgd_mse_step, torch_side

__all__ = ["main"]

WIDTHS = (512, 512, 512, 512, 512, 16)  # 1,058,832 parameters
MODES = ("single", "single global", "overlap", "no overlap", "overlap, other")
DDP_MODES = MODES[2:]


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


def _mpdist_steppers(
    rank: int, world: int, path: str, cfg: dict[str, Any]
) -> tuple[dict, Callable, Callable, dict]:
    """mpdist: (mode -> step function, barrier, teardown, buckets per DDP mode)."""
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
    views = cfg["grad_views"]
    reducer.DEFAULT_FIRST_BUCKET_BYTES = 1 << 20
    overlap = DDP(_model(), bucket_cap_mb=cfg["bucket_cap_mb"], gradient_as_bucket_view=views)
    # the same, with the other way of progressing the buckets
    host_choice = reducer.communication_thread_pays
    reducer.communication_thread_pays = lambda world_size: not host_choice(world_size)
    try:
        other = DDP(_model(), bucket_cap_mb=cfg["bucket_cap_mb"], gradient_as_bucket_view=views)
    finally:
        reducer.communication_thread_pays = host_choice
    # One bucket holding every parameter: it is full (and reduced) only once backward has
    # produced the last gradient, so nothing overlaps.
    reducer.DEFAULT_FIRST_BUCKET_BYTES = 1 << 40
    one_bucket = DDP(_model(), bucket_cap_mb=1 << 20, gradient_as_bucket_view=views)
    models = {
        "single": _model(),
        "single global": _model(),
        "overlap": overlap,
        "no overlap": one_bucket,
        "overlap, other": other,
    }

    x, y = _batch(cfg["batch"], seed=rank)
    xg, yg = _batch(cfg["batch"] * world, seed=0)
    steps = {
        m: sgd_mse_step(model, *((xg, yg) if m == "single global" else (x, y)), 1e-3, 0.9)
        for m, model in models.items()
    }
    buckets = {
        "overlap": len(overlap.reducer.buckets),
        "no overlap": len(one_bucket.reducer.buckets),
        "stepped": int(overlap.reducer.stepped),
    }
    return steps, dist.barrier, dist.destroy_process_group, buckets


def _torch_steppers(
    rank: int, world: int, path: str, cfg: dict[str, Any]
) -> tuple[dict, Callable, Callable, dict]:
    """torch (gloo), the same model and rows."""
    import torch
    import torch.distributed as tdist
    from torch.nn.parallel import DistributedDataParallel as TDDP

    torch.set_num_threads(cfg["threads"])
    tdist.init_process_group("gloo", init_method=f"file://{path}", rank=rank, world_size=world)

    def model() -> Any:
        torch.manual_seed(0)
        layers: list[Any] = []
        for i in range(len(WIDTHS) - 1):
            layers.append(torch.nn.Linear(WIDTHS[i], WIDTHS[i + 1]))
            if i < len(WIDTHS) - 2:
                layers.append(torch.nn.ReLU())
        return torch.nn.Sequential(*layers)

    views = cfg["grad_views"]
    saved = tdist._DEFAULT_FIRST_BUCKET_BYTES
    try:
        overlap = TDDP(model(), bucket_cap_mb=cfg["bucket_cap_mb"], gradient_as_bucket_view=views)
        tdist._DEFAULT_FIRST_BUCKET_BYTES = 1 << 40
        one_bucket = TDDP(model(), bucket_cap_mb=1 << 20, gradient_as_bucket_view=views)
    finally:
        tdist._DEFAULT_FIRST_BUCKET_BYTES = saved
    models = {
        "single": model(),
        "single global": model(),
        "overlap": overlap,
        "no overlap": one_bucket,
    }

    def stepper(m: Any, x: np.ndarray, y: np.ndarray) -> Callable[[], None]:
        opt = torch.optim.SGD(m.parameters(), lr=1e-3, momentum=0.9)
        tx, ty = torch.from_numpy(x), torch.from_numpy(y)

        def step() -> None:
            opt.zero_grad()
            torch.nn.functional.mse_loss(m(tx), ty).backward()
            opt.step()

        return step

    x, y = _batch(cfg["batch"], seed=rank)
    xg, yg = _batch(cfg["batch"] * world, seed=0)
    steps = {
        m: stepper(mod, *((xg, yg) if m == "single global" else (x, y)))
        for m, mod in models.items()
    }
    return steps, tdist.barrier, tdist.destroy_process_group, {}


def _rank_main(lib: str, rank: int, world: int, path: str, cfg: dict[str, Any], q: Any) -> None:
    try:
        make = _torch_steppers if lib == "torch" else _mpdist_steppers
        steps, barrier, teardown, buckets = make(rank, world, path, cfg)
        try:
            modes = [m for m in MODES if m in steps]
            ddp_modes = [m for m in modes if m in DDP_MODES]
            times: dict[str, list[float]] = {m: [] for m in modes}
            cpu: dict[str, list[float]] = {m: [] for m in modes}
            # Modes alternate step by step, so drifting machine load hits them all alike; the
            # DDP modes run in reverse order every other step, so none always runs first.
            for i in range(cfg["warmup"] + cfg["steps"]):
                for mode in modes[:2] + (ddp_modes if i % 2 == 0 else ddp_modes[::-1]):
                    barrier()
                    if mode.startswith("single") and rank != 0:
                        continue  # one process alone: the other ranks wait at the barrier
                    c0, t0 = time.process_time(), time.perf_counter()
                    steps[mode]()
                    if i >= cfg["warmup"]:
                        times[mode].append(time.perf_counter() - t0)
                        cpu[mode].append(time.process_time() - c0)
            med = {
                m: (statistics.median(times[m]), statistics.median(cpu[m]))
                for m in modes
                if times[m]
            }
            q.put(("ok", rank, med, buckets))
        finally:
            teardown()
    except BaseException:
        q.put(("error", rank, f"rank {rank}:\n{traceback.format_exc()}", None))


def _run(
    lib: str, world: int, cfg: dict[str, Any]
) -> tuple[dict[str, tuple[float, float]], dict[str, int]]:
    """Run one library's rows in ``world`` spawned processes:
    (mode -> (wall seconds, CPU seconds of the process, all threads), buckets)."""
    ctx = mp.get_context("spawn")
    q = ctx.Queue()
    # A fixed number of BLAS threads per process: N ranks on N cores must not oversubscribe.
    with tempfile.TemporaryDirectory(prefix="mpdist-bench-ddp-") as tmp:
        path = os.path.join(tmp, "store")
        procs = [
            ctx.Process(target=_rank_main, args=(lib, r, world, path, cfg, q)) for r in range(world)
        ]
        with blas_threads(cfg["threads"]):
            for pr in procs:
                pr.start()
        per_rank: dict[int, dict[str, tuple[float, float]]] = {}
        buckets: dict[str, int] = {}
        try:
            for _ in range(world):
                status, rank, payload, b = q.get(timeout=900)
                if status != "ok":
                    raise RuntimeError(f"{lib} bench failed on {payload}")
                per_rank[rank] = payload
                buckets = b or buckets
        finally:
            for pr in procs:
                pr.join(timeout=60)
                if pr.is_alive():
                    pr.kill()
                    pr.join()
            q.close()
            q.join_thread()
    result = {m: per_rank[0][m] for m in ("single", "single global")}
    for m in DDP_MODES:
        if m not in per_rank[0]:
            continue
        # the slowest rank sets the pace
        result[m] = (
            max(r[m][0] for r in per_rank.values()),
            max(r[m][1] for r in per_rank.values()),
        )
    return result, buckets


def _ratio(off: float, on: float) -> str:
    return f"{off / on:.2f}x"


def main(argv: Sequence[str] | None = None) -> int:
    """Run the benchmark and print a table; returns the exit status."""
    p = argparse.ArgumentParser(prog="mpdist bench ddp", description=__doc__.splitlines()[0])
    p.add_argument("--world-size", type=int, default=2)
    p.add_argument("--batch", type=int, default=64, help="samples per rank per step")
    p.add_argument("--steps", type=int, default=40, help="timed steps per configuration")
    p.add_argument("--warmup", type=int, default=3)
    p.add_argument("--repeat", type=int, default=1, help="independent runs (medians are shown)")
    p.add_argument(
        "--grad-views", action="store_true", help="DDP with gradient_as_bucket_view=True"
    )
    p.add_argument("--threads-per-rank", type=int, default=1, help="BLAS threads per process")
    p.add_argument(
        "--bucket-cap-mb",
        type=float,
        default=25.0,
        help="bucket size with overlap on (DDP default 25)",
    )
    p.add_argument(
        "--vs",
        choices=["torch", "none"],
        default=None,
        help="torch DDP over gloo side by side (default: when torch is installed)",
    )
    output.add_options(p)
    args = p.parse_args(list(argv) if argv is not None else None)
    if args.world_size < 2:
        p.error("--world-size must be at least 2")
    if args.steps < 1 or args.warmup < 0 or args.batch < 1 or args.repeat < 1:
        p.error("--steps, --batch and --repeat must be positive, --warmup non-negative")
    if (problem := output.check_options(args)) is not None:
        p.error(problem)
    vs_torch = torch_side(args.vs, "ddp")
    if vs_torch is None:
        return 2

    cfg = dict(
        batch=args.batch,
        steps=args.steps,
        warmup=args.warmup,
        grad_views=args.grad_views,
        bucket_cap_mb=args.bucket_cap_mb,
        threads=args.threads_per_rank,
    )
    runs: list[dict[str, tuple[float, float]]] = []
    torch_runs: list[dict[str, tuple[float, float]]] = []
    buckets: dict[str, int] = {}
    try:
        for _ in range(args.repeat):
            ours, buckets = _run("mpdist", args.world_size, cfg)
            runs.append(ours)
            if vs_torch:
                torch_runs.append(_run("torch", args.world_size, cfg)[0])
    except RuntimeError as exc:
        print(exc, file=sys.stderr)
        return 1

    def med(rs: list[dict[str, tuple[float, float]]], mode: str, i: int) -> float:
        return statistics.median(r[mode][i] for r in rs) * 1e3

    n_params = sum(q.numel() for q in _model().parameters())
    ws, b = args.world_size, args.batch
    how = ("stepped", "comm thread")
    if not buckets.get("stepped", 1):
        how = how[::-1]
    names = {
        "single": f"one process, batch {b}",
        "single global": f"one process, batch {b * ws} (the global batch)",
        "overlap": f"DDP {ws} ranks, overlap on ({buckets['overlap']} buckets, {how[0]})",
        "no overlap": f"DDP {ws} ranks, overlap off ({buckets['no overlap']} bucket, at the end)",
        "overlap, other": f"  not chosen here: overlap on, {how[1]}",
    }
    print(
        f"model: MLP {'-'.join(map(str, WIDTHS))}, {n_params:,} parameters (float32); "
        f"batch {b} per rank; per run the median of {args.steps} steps, configurations "
        f"interleaved; {args.threads_per_rank} BLAS thread(s) per process"
        + ("; gradient_as_bucket_view" if args.grad_views else "")
        + (f"; median of {args.repeat} runs" if args.repeat > 1 else "")
    )
    head = f"{'configuration (ms per step)':<52} {'wall':>7} {'cpu':>7}"
    if torch_runs:
        head += f" {'torch wall':>11} {'torch cpu':>10}"
    print(head)
    records: list[dict[str, object]] = []
    for mode in MODES:
        line = f"{names[mode]:<52} {med(runs, mode, 0):7.2f} {med(runs, mode, 1):7.2f}"
        record: dict[str, object] = {
            "configuration": mode,
            "description": names[mode],
            "wall_ms": med(runs, mode, 0),
            "cpu_ms": med(runs, mode, 1),
        }
        if torch_runs and mode in torch_runs[0]:
            line += f" {med(torch_runs, mode, 0):11.2f} {med(torch_runs, mode, 1):10.2f}"
            record.update(
                torch_wall_ms=med(torch_runs, mode, 0), torch_cpu_ms=med(torch_runs, mode, 1)
            )
        print(line)
        records.append(record)
    output.write_json(args.json, "ddp", records, args)

    def ratios(rs: list[dict[str, tuple[float, float]]], i: int, on: str = "overlap") -> str:
        per_run = [r["no overlap"][i] / r[on][i] for r in rs]
        text = _ratio(med(rs, "no overlap", i), med(rs, on, i))
        if len(per_run) > 1:
            text += " (runs: " + " ".join(f"{x:.2f}" for x in per_run) + ")"
        return text

    print(
        f"overlap on vs off (off time / on time, above 1 = overlap faster): "
        f"wall {ratios(runs, 0)}, cpu {ratios(runs, 1)}"
    )
    print(
        f"  (overlap on with the {how[1]} instead: wall {ratios(runs, 0, 'overlap, other')}, "
        f"cpu {ratios(runs, 1, 'overlap, other')})"
    )
    if torch_runs:
        print(
            f"torch DDP (gloo) overlap on vs off: wall {ratios(torch_runs, 0)}, "
            f"cpu {ratios(torch_runs, 1)}"
        )
    print(
        f"DDP step vs one process on the same per-rank batch: "
        f"{med(runs, 'overlap', 0) / med(runs, 'single', 0):.2f}x the time; DDP throughput vs "
        f"one process on the global batch: "
        f"{med(runs, 'single global', 0) / med(runs, 'overlap', 0):.2f}x"
    )
    print(
        "(cpu: CPU time of the process, all threads, slowest rank; on a shared machine it is "
        "what to compare: wall far above cpu means the process waited for a core)"
    )
    return 0
