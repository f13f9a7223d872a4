"""``python -m mpdist bench fsdp``: step time and peak gathered-parameter bytes per rank of an
MLP under mpdist's ``fully_shard``, side by side with torch's ``fully_shard`` on gloo.

The model: ``--layers`` (8) Linear layers of width ``--hidden`` (1024) with ReLUs between,
float32; each Linear is a ``fully_shard`` unit, then the root. A step is zero_grad +
forward + MSE + backward + SGD on the rank's ``--batch / world`` rows. Ranks are spawned
processes (one BLAS thread each) meeting through a file store; every step starts at a
barrier and counts as the slowest rank's wall time. Rows: each ``--world-size`` with mpdist,
then torch (where installed); the ratio column is mpdist / torch.
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

__all__ = ["main"]

_THREAD_VARS = ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS")


def _mpdist_rank(rank: int, world: int, path: str, cfg: dict[str, Any]) -> tuple[list[float], int]:
    import mpdist
    from mpdist import distributed as dist
    from mpdist import nn
    from mpdist.fsdp import fully_shard
    from mpdist.fsdp._fsdp_param import peak_unsharded_bytes
    from mpdist.nn import functional as F
    from mpdist.optim import SGD

    dist.init_process_group("gloo", init_method=f"file://{path}", rank=rank, world_size=world)
    mpdist.manual_seed(0)
    layers: list[Any] = []
    for i in range(cfg["layers"]):
        layers.append(nn.Linear(cfg["hidden"], cfg["hidden"]))
        if i < cfg["layers"] - 1:
            layers.append(nn.ReLU())
    model = nn.Sequential(*layers)
    for layer in layers:
        if isinstance(layer, nn.Linear):
            fully_shard(layer)
    fully_shard(model)
    opt = SGD(model.parameters(), lr=1e-3)
    rng = np.random.default_rng(rank)
    rows = cfg["batch"] // world
    x = rng.standard_normal((rows, cfg["hidden"])).astype(np.float32)
    y = rng.standard_normal((rows, cfg["hidden"])).astype(np.float32)
    times: list[float] = []
    for _ in range(cfg["warmup"] + cfg["steps"]):
        dist.barrier()
        t = time.perf_counter()
        opt.zero_grad()
        F.mse_loss(model(x), y).backward()
        opt.step()
        times.append(time.perf_counter() - t)
    peak = peak_unsharded_bytes()
    dist.destroy_process_group()
    return times[cfg["warmup"] :], peak


def _torch_rank(rank: int, world: int, path: str, cfg: dict[str, Any]) -> tuple[list[float], int]:
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
    times: list[float] = []
    for _ in range(cfg["warmup"] + cfg["steps"]):
        tdist.barrier()
        t = time.perf_counter()
        opt.zero_grad()
        torch.nn.functional.mse_loss(model(x), y).backward()
        opt.step()
        times.append(time.perf_counter() - t)
    tdist.destroy_process_group()
    return times[cfg["warmup"] :], -1


def _rank_main(lib: str, rank: int, world: int, path: str, cfg: dict[str, Any], q: Any) -> None:
    for var in _THREAD_VARS:
        os.environ[var] = "1"
    try:
        fn = _mpdist_rank if lib == "mpdist" else _torch_rank
        q.put((rank, fn(rank, world, path, cfg), None))
    except BaseException:
        q.put((rank, None, traceback.format_exc()))


def _run(lib: str, world: int, cfg: dict[str, Any]) -> tuple[float, int]:
    """Median step time (slowest rank per step) and the largest peak of any rank."""
    ctx = mp.get_context("spawn")
    q = ctx.Queue()
    with tempfile.TemporaryDirectory() as tmp:
        path = os.path.join(tmp, "store")
        procs = [
            ctx.Process(target=_rank_main, args=(lib, r, world, path, cfg, q)) for r in range(world)
        ]
        for p in procs:
            p.start()
        results = [q.get(timeout=600) for _ in procs]
        for p in procs:
            p.join(timeout=60)
    errors = [err for _, _, err in results if err]
    if errors:
        raise RuntimeError(f"{lib} on {world} ranks failed:\n{errors[0]}")
    per_rank = [res for _, res, _ in sorted(results, key=lambda r: r[0])]
    steps = [max(ts) for ts in zip(*(res[0] for res in per_rank), strict=True)]
    return statistics.median(steps), max(res[1] for res in per_rank)


def main(argv: Sequence[str] | None = None) -> int:
    """Run the benchmark and print its table; returns the exit status."""
    parser = argparse.ArgumentParser(prog="python -m mpdist bench fsdp", description=__doc__)
    parser.add_argument("--hidden", type=int, default=1024)
    parser.add_argument("--layers", type=int, default=8)
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--steps", type=int, default=5)
    parser.add_argument("--warmup", type=int, default=1)
    parser.add_argument("--world-size", type=int, nargs="+", default=[2, 4])
    parser.add_argument("--no-torch", action="store_true", help="skip torch's rows")
    args = parser.parse_args(argv)
    if any(args.batch % w for w in args.world_size):
        parser.error("--batch must be a multiple of every --world-size")
    cfg = vars(args)
    try:
        import torch  # noqa: F401

        have_torch = not args.no_torch
    except ImportError:
        have_torch = False
    unit = args.hidden * (args.hidden + 1) * 4
    print(
        f"fully_shard: {args.layers} x Linear({args.hidden}) float32, batch {args.batch}, "
        f"{args.steps} steps (median of the slowest rank); one unit {unit / 2**20:.2f} MiB"
    )
    print(f"{'row':<28}{'step ms':>10}{'peak gathered KiB':>20}{'mpdist/torch':>14}")
    for world in args.world_size:
        t_mp, peak = _run("mpdist", world, cfg)
        t_torch = _run("torch", world, cfg)[0] if have_torch else None
        ratio = f"{t_mp / t_torch:.2f}" if t_torch else "-"
        print(
            f"{f'mpdist fully_shard {world} ranks':<28}{t_mp * 1e3:>10.1f}{peak / 2**10:>20.1f}{ratio:>14}"
        )
        if t_torch:
            print(
                f"{f'torch fully_shard {world} ranks':<28}{t_torch * 1e3:>10.1f}{'-':>20}{'':>14}"
            )
    return 0
