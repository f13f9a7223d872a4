"""``python -m mpdist bench tp``: tensor-parallel step time of a 4-layer MLP against one process and DDP.

The model: 4 Linear layers of width ``--hidden`` (1024) with ReLUs between, float32. Rows,
each a step of zero_grad + forward + MSE loss + backward + SGD on the same global batch:

* one process;
* TP on ``--world-size`` ranks: layers 1, 3 ``ColwiseParallel``, layers 2, 4
  ``RowwiseParallel`` (each rank holds 1/n of every weight; one all-reduce per layer pair
  forward, none backward for an input that needs no gradient, one per pair backward
  otherwise);
* the same TP step with every collective timed (a ``CollectiveMode`` that times each
  collective and its wait): where the time goes, collectives against the rest;
* DDP on the same ranks, each with 1/n of the batch.

Ranks are spawned processes meeting through a FileStore. Rows alternate step by step
(all ranks meet at a barrier before each step; the one-process row runs on rank 0 while the
others wait), so drifting machine load hits them alike. Each row reports the median wall
time (the slowest rank's) and the median CPU time of the process per step.
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

from mpdist.benchmarks import output
from mpdist.benchmarks._env import blas_threads, sgd_mse_step

__all__ = ["main"]

ROWS = ("single", "tp", "tp timed", "ddp")


def _model(hidden: int) -> Any:
    import mpdist
    from mpdist import nn

    mpdist.manual_seed(0)
    layers: list[Any] = []
    for i in range(4):
        layers.append(nn.Linear(hidden, hidden))
        if i < 3:
            layers.append(nn.ReLU())
    return nn.Sequential(*layers)


class _CommTimer:
    """A collective mode that adds up the wall time spent inside collectives and waits."""

    def __init__(self) -> None:
        self.seconds = 0.0
        self.count = 0

    def __collective__(
        self,
        func: Any,
        types: tuple[type, ...],
        args: tuple[Any, ...] = (),
        kwargs: dict[str, Any] | None = None,
    ) -> Any:
        t0 = time.perf_counter()
        try:
            return func(*args, **(kwargs or {}))
        finally:
            self.seconds += time.perf_counter() - t0
            if "wait_tensor" not in str(func):
                self.count += 1


def _rank_main(rank: int, world: int, path: str, cfg: dict[str, Any], q: Any) -> None:
    try:
        import mpdist.distributed as dist
        from mpdist.device_mesh import init_device_mesh
        from mpdist.distributed import dispatch
        from mpdist.parallel import DistributedDataParallel as DDP
        from mpdist.store import FileStore
        from mpdist.tensor.parallel import ColwiseParallel, RowwiseParallel, parallelize_module

        dist.init_process_group(
            "tcp",
            store=FileStore(path, world),
            rank=rank,
            world_size=world,
            timeout=timedelta(seconds=300),
        )
        try:
            hidden, batch = cfg["hidden"], cfg["batch"]
            rng = np.random.default_rng(0)
            x = rng.standard_normal((batch, hidden)).astype(np.float32)
            y = rng.standard_normal((batch, hidden)).astype(np.float32)
            share = slice(rank * batch // world, (rank + 1) * batch // world)
            mesh = init_device_mesh("cpu", (world,))
            plan = {
                str(i): ColwiseParallel() if i % 4 == 0 else RowwiseParallel() for i in (0, 2, 4, 6)
            }
            tp = parallelize_module(_model(hidden), mesh, plan)
            models = {"single": _model(hidden), "tp": tp, "ddp": DDP(_model(hidden))}
            timer = _CommTimer()

            steps = {
                "single": sgd_mse_step(models["single"], x, y, 1e-4, 0.9),
                "tp": sgd_mse_step(tp, x, y, 1e-4, 0.9),
                "ddp": sgd_mse_step(models["ddp"], x[share], y[share], 1e-4, 0.9),
            }

            def timed() -> None:
                dispatch.push(timer)
                try:
                    steps["tp"]()
                finally:
                    dispatch.pop(timer)

            steps["tp timed"] = timed
            times: dict[str, list[float]] = {m: [] for m in ROWS}
            cpu: dict[str, list[float]] = {m: [] for m in ROWS}
            comm: list[float] = []
            count = 0
            for i in range(cfg["warmup"] + cfg["steps"]):
                order = ROWS if i % 2 == 0 else ROWS[:1] + ROWS[1:][::-1]
                for row in order:
                    dist.barrier()
                    if row == "single" and rank != 0:
                        continue  # one process alone: the other ranks wait at the barrier
                    timer.seconds, timer.count = 0.0, 0
                    c0, t0 = time.process_time(), time.perf_counter()
                    steps[row]()
                    if i >= cfg["warmup"]:
                        times[row].append(time.perf_counter() - t0)
                        cpu[row].append(time.process_time() - c0)
                        if row == "tp timed":
                            comm.append(timer.seconds)
                            count = timer.count
            med = {
                m: (statistics.median(times[m]), statistics.median(cpu[m]))
                for m in ROWS
                if times[m]
            }
            q.put(("ok", rank, med, (statistics.median(comm), count)))
        finally:
            dist.destroy_process_group()
    except BaseException:
        q.put(("error", rank, f"rank {rank}:\n{traceback.format_exc()}", None))


def _run(world: int, cfg: dict[str, Any]) -> tuple[dict[str, tuple[float, float]], float, int]:
    """The rows in ``world`` spawned processes: (row -> (wall, cpu) seconds, the slowest
    rank's median collective seconds in a timed TP step, collectives per TP step)."""
    ctx = mp.get_context("spawn")
    q = ctx.Queue()
    with tempfile.TemporaryDirectory(prefix="mpdist-bench-tp-") as tmp:
        path = os.path.join(tmp, "store")
        procs = [
            ctx.Process(target=_rank_main, args=(r, world, path, cfg, q)) for r in range(world)
        ]
        with blas_threads(cfg["threads"]):
            for pr in procs:
                pr.start()
        per_rank: dict[int, dict[str, tuple[float, float]]] = {}
        comm: dict[int, tuple[float, int]] = {}
        try:
            for _ in range(world):
                status, rank, payload, extra = q.get(timeout=900)
                if status != "ok":
                    raise RuntimeError(f"tp bench failed on {payload}")
                per_rank[rank], comm[rank] = payload, extra
        finally:
            for pr in procs:
                pr.join(timeout=60)
                if pr.is_alive():
                    pr.kill()
                    pr.join()
            q.close()
            q.join_thread()
    result = {"single": per_rank[0]["single"]}
    for row in ROWS[1:]:
        result[row] = (
            max(r[row][0] for r in per_rank.values()),
            max(r[row][1] for r in per_rank.values()),
        )
    return result, max(c[0] for c in comm.values()), comm[0][1]


def main(argv: Sequence[str] | None = None) -> int:
    """Run the benchmark and print a table; returns the exit status."""
    p = argparse.ArgumentParser(prog="mpdist bench tp", description=__doc__.splitlines()[0])
    p.add_argument("--world-size", type=int, default=2)
    p.add_argument("--hidden", type=int, default=1024, help="width of the 4 layers")
    p.add_argument("--batch", type=int, default=64, help="global batch per step")
    p.add_argument("--steps", type=int, default=20, help="timed steps per row")
    p.add_argument("--warmup", type=int, default=3)
    p.add_argument("--threads-per-rank", type=int, default=1, help="BLAS threads per process")
    output.add_options(p)
    args = p.parse_args(list(argv) if argv is not None else None)
    if args.world_size < 2:
        p.error("--world-size must be at least 2")
    if (problem := output.check_options(args)) is not None:
        p.error(problem)
    if min(args.steps, args.batch, args.hidden) < 1 or args.warmup < 0:
        p.error("--steps, --batch and --hidden must be positive, --warmup non-negative")
    if args.hidden % args.world_size or args.batch % args.world_size:
        p.error("--hidden and --batch must be multiples of --world-size")
    cfg = dict(
        hidden=args.hidden,
        batch=args.batch,
        steps=args.steps,
        warmup=args.warmup,
        threads=args.threads_per_rank,
    )
    try:
        res, comm, count = _run(args.world_size, cfg)
    except RuntimeError as exc:
        print(exc, file=sys.stderr)
        return 1
    ws, h, b = args.world_size, args.hidden, args.batch
    names = {
        "single": f"one process, batch {b}",
        "tp": f"TP {ws} ranks (colwise/rowwise pairs), batch {b}",
        "tp timed": f"TP {ws} ranks, collectives timed",
        "ddp": f"DDP {ws} ranks, batch {b // ws} each",
    }
    n_params = 4 * (h * h + h)
    print(
        f"model: 4 x Linear({h}, {h}) with ReLUs, {n_params:,} parameters (float32); global "
        f"batch {b}; median of {args.steps} steps, rows interleaved; "
        f"{args.threads_per_rank} BLAS thread(s) per process; os.cpu_count()={os.cpu_count()}"
    )
    print(f"{'row (ms per step)':<48} {'wall':>8} {'cpu':>8} {'vs one':>7}")
    one = res["single"][0]
    records: list[dict[str, object]] = []
    for row in ROWS:
        wall, c = res[row]
        print(f"{names[row]:<48} {wall * 1e3:8.2f} {c * 1e3:8.2f} {one / wall:6.2f}x")
        records.append(
            {
                "row": row,
                "description": names[row],
                "wall_ms": wall * 1e3,
                "cpu_ms": c * 1e3,
                "speedup_vs_one": one / wall,
            }
        )
    records[ROWS.index("tp timed")].update(collectives_ms=comm * 1e3, collectives_per_step=count)
    output.write_json(args.json, "tp", records, args)
    timed = res["tp timed"][0]
    print(
        f"TP step, where the time goes: collectives {comm * 1e3:.2f} ms ({count} per step, "
        f"with their waits; {100 * comm / timed:.0f}%), the rest {(timed - comm) * 1e3:.2f} ms "
        f"({100 * (timed - comm) / timed:.0f}%: compute and DTensor bookkeeping)"
    )
    print(
        "(vs one: one-process wall time / row wall time, above 1 = faster than one process; "
        "cpu: CPU time of the process, all threads, slowest rank; on a shared machine wall far "
        "above cpu means the process waited for a core)"
    )
    return 0
