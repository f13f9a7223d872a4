"""``python -m mpdist bench fsdp``: step time and parameter bytes per rank of an MLP under
mpdist's ``fully_shard``, FSDP1 (FULL_SHARD, SHARD_GRAD_OP) and DDP, side by side with
torch's ``fully_shard`` on gloo.

The model: ``--layers`` (8) Linear layers of width ``--hidden`` (1024) with ReLUs between,
float32; under ``fully_shard`` and FSDP1 each Linear is a unit, then the root. Every row
goes through one rank function and one timing loop; only the wrapping differs. A step is
zero_grad + forward + MSE + backward + SGD on the rank's ``--batch / world`` rows. Ranks are spawned
processes (one BLAS thread each) meeting through a file store; every step starts at a
barrier and counts as the slowest rank's wall time. Rows: each ``--world-size`` with mpdist's
``--kinds``, then torch's ``fully_shard`` (where installed); the ratio column is mpdist's
``fully_shard`` / torch's.
"""

from __future__ import annotations

import argparse
import multiprocessing as mp
import os
import statistics
import tempfile
import time
import traceback
from collections.abc import Sequence
from typing import Any

import numpy as np

from mpdist.benchmarks import output
from mpdist.benchmarks._env import blas_threads, sgd_mse_step

__all__ = ["main"]


KINDS = ("fully_shard", "FULL_SHARD", "SHARD_GRAD_OP", "DDP")  # mpdist's rows, in order


def _timed_steps(step: Any, barrier: Any, cfg: dict[str, Any]) -> list[float]:
    """Seconds of each measured step (warm-up steps dropped); each starts at a barrier."""
    times: list[float] = []
    for _ in range(cfg["warmup"] + cfg["steps"]):
        barrier()
        t = time.perf_counter()
        step()
        times.append(time.perf_counter() - t)
    return times[cfg["warmup"] :]


def _mpdist_rank(
    rank: int, world: int, path: str, cfg: dict[str, Any]
) -> tuple[list[float], int, int]:
    import mpdist
    from mpdist import distributed as dist
    from mpdist import nn

    dist.init_process_group("gloo", init_method=f"file://{path}", rank=rank, world_size=world)
    mpdist.manual_seed(0)
    layers: list[Any] = []
    for i in range(cfg["layers"]):
        layers.append(nn.Linear(cfg["hidden"], cfg["hidden"]))
        if i < cfg["layers"] - 1:
            layers.append(nn.ReLU())
    model: Any = nn.Sequential(*layers)
    kind = cfg["kind"]
    if kind == "fully_shard":
        from mpdist.fsdp import fully_shard, peak_unsharded_bytes

        for layer in layers:
            if isinstance(layer, nn.Linear):
                fully_shard(layer)
        fully_shard(model)
        meter = peak_unsharded_bytes
    elif kind == "DDP":
        from mpdist.parallel import DistributedDataParallel

        model = DistributedDataParallel(model)

        def meter(reset: bool = False) -> int:
            return 0  # nothing is gathered: every rank holds every parameter

    else:
        from mpdist.fsdp import FullyShardedDataParallel, ShardingStrategy
        from mpdist.fsdp import peak_unsharded_bytes as meter
        from mpdist.fsdp.wrap import ModuleWrapPolicy

        model = FullyShardedDataParallel(
            model,
            auto_wrap_policy=ModuleWrapPolicy({nn.Linear}),
            sharding_strategy=ShardingStrategy[kind],
        )
    held = sum(np.asarray(p.data).nbytes for p in model.parameters())
    rng = np.random.default_rng(rank)
    rows = cfg["batch"] // world
    x = rng.standard_normal((rows, cfg["hidden"])).astype(np.float32)
    y = rng.standard_normal((rows, cfg["hidden"])).astype(np.float32)
    step = sgd_mse_step(model, x, y, 1e-3)

    meter(reset=True)
    times = _timed_steps(step, dist.barrier, cfg)
    peak = meter()
    dist.destroy_process_group()
    return times, held, peak


def _torch_rank(
    rank: int, world: int, path: str, cfg: dict[str, Any]
) -> tuple[list[float], int, int]:
    import torch
    import torch.distributed as tdist
    from torch.distributed.fsdp import fully_shard

    torch.set_num_threads(1)
    tdist.init_process_group("gloo", init_method=f"file://{path}", rank=rank, world_size=world)
    torch.manual_seed(0)
    layers: list[Any] = []
    for i in range(cfg["layers"]):
        layers.append(torch.nn.Linear(cfg["hidden"], cfg["hidden"]))
        if i < cfg["layers"] - 1:
            layers.append(torch.nn.ReLU())
    model = torch.nn.Sequential(*layers)
    for layer in layers:
        if isinstance(layer, torch.nn.Linear):
            fully_shard(layer)
    fully_shard(model)
    opt = torch.optim.SGD(model.parameters(), lr=1e-3)
    rows = cfg["batch"] // world
    x, y = torch.randn(rows, cfg["hidden"]), torch.randn(rows, cfg["hidden"])

    def step() -> None:
        opt.zero_grad()
        torch.nn.functional.mse_loss(model(x), y).backward()
        opt.step()

    times = _timed_steps(step, tdist.barrier, cfg)
    tdist.destroy_process_group()
    return times, -1, -1


def _rank_main(lib: str, rank: int, world: int, path: str, cfg: dict[str, Any], q: Any) -> None:
    try:
        fn = _mpdist_rank if lib == "mpdist" else _torch_rank
        q.put((rank, fn(rank, world, path, cfg), None))
    except BaseException:
        q.put((rank, None, traceback.format_exc()))


def _run(lib: str, world: int, cfg: dict[str, Any]) -> tuple[float, int, int]:
    """Median step time (slowest rank per step), and the most parameter bytes any rank holds
    between steps and gathers at its peak."""
    ctx = mp.get_context("spawn")
    q = ctx.Queue()
    with tempfile.TemporaryDirectory() as tmp:
        path = os.path.join(tmp, "store")
        procs = [
            ctx.Process(target=_rank_main, args=(lib, r, world, path, cfg, q)) for r in range(world)
        ]
        # one BLAS thread per rank, set before the child starts: unpickling this function
        # imports numpy (and with it the BLAS) before any of its code runs
        with blas_threads(1):
            for p in procs:
                p.start()
        results = [q.get(timeout=600) for _ in procs]
        for p in procs:
            p.join(timeout=60)
    errors = [err for _, _, err in results if err]
    if errors:
        raise RuntimeError(f"{lib} {cfg['kind']} on {world} ranks failed:\n{errors[0]}")
    per_rank = [res for _, res, _ in sorted(results, key=lambda r: r[0])]
    steps = [max(ts) for ts in zip(*(res[0] for res in per_rank), strict=True)]
    return (
        statistics.median(steps),
        max(res[1] for res in per_rank),
        max(res[2] for res in per_rank),
    )


_LABEL = {"fully_shard": "fully_shard", "DDP": "DDP"}  # else: "FSDP <strategy>"


def _row(name: str, step: float, held: int, peak: int, ratio: str) -> str:
    kib = (f"{held / 2**10:.1f}", f"{peak / 2**10:.1f}", f"{(held + peak) / 2**10:.1f}")
    if held < 0:
        kib = ("-", "-", "-")
    return f"{name:<36}{step * 1e3:>10.1f}{kib[0]:>14}{kib[1]:>14}{kib[2]:>14}{ratio:>14}"


def _record(
    name: str, lib: str, kind: str, world: int, step: float, held: int, peak: int
) -> dict[str, Any]:
    """One printed row as a JSON record; torch's byte columns (not measured) are None."""
    measured = held >= 0
    return {
        "description": name,
        "library": lib,
        "kind": kind,
        "world_size": world,
        "step_ms": step * 1e3,
        "held_bytes": held if measured else None,
        "gathered_bytes": peak if measured else None,
        "peak_bytes": held + peak if measured else None,
    }


def main(argv: Sequence[str] | None = None) -> int:
    """Run the benchmark and print its table; returns the exit status."""
    parser = argparse.ArgumentParser(prog="python -m mpdist bench fsdp", description=__doc__)
    parser.add_argument("--hidden", type=int, default=1024)
    parser.add_argument("--layers", type=int, default=8)
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--steps", type=int, default=5)
    parser.add_argument("--warmup", type=int, default=1)
    parser.add_argument("--world-size", type=int, nargs="+", default=[2, 4])
    parser.add_argument(
        "--kinds", nargs="+", choices=KINDS, default=list(KINDS), help="mpdist's rows"
    )
    parser.add_argument("--no-torch", action="store_true", help="skip torch's rows")
    output.add_options(parser)
    args = parser.parse_args(argv)
    if any(args.batch % w for w in args.world_size):
        parser.error("--batch must be a multiple of every --world-size")
    if (problem := output.check_options(args)) is not None:
        parser.error(problem)
    cfg = vars(args)
    try:
        import torch  # noqa: F401

        have_torch = not args.no_torch and "fully_shard" in args.kinds
    except ImportError:
        have_torch = False
    unit = args.hidden * (args.hidden + 1) * 4
    print(
        f"{args.layers} x Linear({args.hidden}) float32, batch {args.batch}, {args.steps} steps "
        f"(median of the slowest rank); one unit {unit / 2**20:.2f} MiB\nKiB per rank: held = "
        "parameters kept between steps, gathered = peak unsharded, peak = their sum"
    )
    head = ("step ms", "held KiB", "gathered KiB", "peak KiB", "mpdist/torch")
    print(f"{'row':<36}" + "".join(f"{h:>14}" if i else f"{h:>10}" for i, h in enumerate(head)))
    records: list[dict[str, Any]] = []
    for world in args.world_size:
        t_torch = None
        if have_torch:
            t_torch = _run("torch", world, {**cfg, "kind": "fully_shard"})[0]
        for kind in args.kinds:
            step, held, peak = _run("mpdist", world, {**cfg, "kind": kind})
            ratio = f"{step / t_torch:.2f}" if t_torch and kind == "fully_shard" else "-"
            label = _LABEL.get(kind, f"FSDP {kind}")
            name = f"mpdist {label} {world} ranks"
            print(_row(name, step, held, peak, ratio))
            records.append(_record(name, "mpdist", kind, world, step, held, peak))
            if t_torch and kind == "fully_shard":
                records[-1]["vs_torch"] = step / t_torch
        if t_torch:
            name = f"torch fully_shard {world} ranks"
            print(_row(name, t_torch, -1, -1, ""))
            records.append(_record(name, "torch", "fully_shard", world, t_torch, -1, -1))
    output.write_json(args.json, "fsdp", records, args)
    return 0
