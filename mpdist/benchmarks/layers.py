"""``python -m mpdist bench layers``: forward+backward time of Conv2d and LSTM against torch.

Rows: ``Conv2d(3, 16, 3, padding=1)`` on a (32, 3, 32, 32) batch, and a 3-layer LSTM with
256 inputs and 256 hidden units on a (12, 100, 256) batch_first batch (the shape of torch's
``test_rnn`` in test_c10d_spawn_gloo.py). A step is forward, ``sum()`` of the output,
backward, in float32. When torch is installed the same layers run in torch on the CPU with
``torch.set_num_threads(--threads)`` and a ratio column says how many times torch's time
mpdist takes (``--vs none`` leaves torch out). The measurements run in one spawned process
whose BLAS is limited to ``--threads`` threads, so numpy and torch use the same number of
cores; the two libraries alternate step by step, so drifting machine load hits both alike.
Each figure is the median step time of a run; with ``--repeat`` the best run's median.
"""

from __future__ import annotations

import argparse
import multiprocessing as mp
import statistics
import sys
import time
import traceback
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np

from mpdist.benchmarks import output
from mpdist.benchmarks._env import blas_threads, torch_side

__all__ = ["main"]

CONV = dict(batch=32, in_channels=3, out_channels=16, size=32, kernel=3, padding=1)
LSTM_SHAPE = dict(batch=12, seq=100, input=256, hidden=256, layers=3)
ROWS = {
    "conv2d": (
        f"Conv2d {CONV['in_channels']}->{CONV['out_channels']} k{CONV['kernel']} "
        f"p{CONV['padding']}, batch {CONV['batch']}, {CONV['size']}x{CONV['size']}"
    ),
    "lstm": (
        f"LSTM {LSTM_SHAPE['input']}->{LSTM_SHAPE['hidden']} x{LSTM_SHAPE['layers']} layers, "
        f"batch {LSTM_SHAPE['batch']}, seq {LSTM_SHAPE['seq']}"
    ),
}


def _inputs() -> dict[str, np.ndarray]:
    rng = np.random.default_rng(0)
    c, s = CONV, LSTM_SHAPE
    return {
        "conv2d": rng.standard_normal((c["batch"], c["in_channels"], c["size"], c["size"])).astype(
            np.float32
        ),
        "lstm": rng.standard_normal((s["batch"], s["seq"], s["input"])).astype(np.float32),
    }


def _mpdist_steps() -> dict[str, Callable[[], None]]:
    """One forward+backward per call, per row, with mpdist."""
    from mpdist import nn
    from mpdist.autograd import Tensor

    c, s = CONV, LSTM_SHAPE
    conv = nn.Conv2d(c["in_channels"], c["out_channels"], c["kernel"], padding=c["padding"])
    lstm = nn.LSTM(s["input"], s["hidden"], s["layers"], batch_first=True)
    xs = _inputs()

    def conv_step() -> None:
        conv(Tensor(xs["conv2d"], requires_grad=True)).sum().backward()

    def lstm_step() -> None:
        lstm(Tensor(xs["lstm"], requires_grad=True))[0].sum().backward()

    return {"conv2d": conv_step, "lstm": lstm_step}


def _torch_steps(threads: int) -> dict[str, Callable[[], None]]:
    """The same steps with torch on the CPU."""
    import torch

    torch.set_num_threads(threads)
    c, s = CONV, LSTM_SHAPE
    conv = torch.nn.Conv2d(c["in_channels"], c["out_channels"], c["kernel"], padding=c["padding"])
    lstm = torch.nn.LSTM(s["input"], s["hidden"], s["layers"], batch_first=True)
    xs = {k: torch.from_numpy(v) for k, v in _inputs().items()}

    def conv_step() -> None:
        conv(xs["conv2d"].clone().requires_grad_()).sum().backward()

    def lstm_step() -> None:
        lstm(xs["lstm"].clone().requires_grad_())[0].sum().backward()

    return {"conv2d": conv_step, "lstm": lstm_step}


def _measure(cfg: dict[str, Any], q: Any) -> None:
    """In the child: (library -> row -> median seconds per step) onto ``q``."""
    try:
        libs = {"mpdist": _mpdist_steps()}
        if cfg["vs_torch"]:
            libs["torch"] = _torch_steps(cfg["threads"])
        times: dict[str, dict[str, list[float]]] = {lib: {r: [] for r in ROWS} for lib in libs}
        for row in ROWS:
            for i in range(cfg["warmup"] + cfg["steps"]):
                for lib, steps in libs.items():
                    t0 = time.perf_counter()
                    steps[row]()
                    if i >= cfg["warmup"]:
                        times[lib][row].append(time.perf_counter() - t0)
        q.put(
            (
                "ok",
                {lib: {r: statistics.median(v) for r, v in t.items()} for lib, t in times.items()},
            )
        )
    except BaseException:
        q.put(("error", traceback.format_exc()))


def _run(cfg: dict[str, Any]) -> dict[str, dict[str, float]]:
    """One run in a fresh spawned process: library -> row -> median seconds per step."""
    ctx = mp.get_context("spawn")
    q = ctx.Queue()
    proc = ctx.Process(target=_measure, args=(cfg, q))
    with blas_threads(cfg["threads"]):
        proc.start()
    try:
        status, payload = q.get(timeout=900)
    finally:
        proc.join(timeout=60)
        if proc.is_alive():
            proc.kill()
            proc.join()
        q.close()
        q.join_thread()
    if status != "ok":
        raise RuntimeError(f"layers bench failed:\n{payload}")
    return payload


def main(argv: Sequence[str] | None = None) -> int:
    """Run the benchmark and print a table; returns the exit status."""
    p = argparse.ArgumentParser(prog="mpdist bench layers", description=__doc__.splitlines()[0])
    p.add_argument("--steps", type=int, default=10, help="timed steps per row and library")
    p.add_argument("--warmup", type=int, default=2)
    p.add_argument("--repeat", type=int, default=1, help="independent runs (the best is shown)")
    p.add_argument("--threads", type=int, default=1, help="BLAS / torch threads")
    p.add_argument(
        "--vs",
        choices=["torch", "none"],
        default=None,
        help="torch side by side (default: when torch is installed)",
    )
    output.add_options(p)
    args = p.parse_args(list(argv) if argv is not None else None)
    if args.steps < 1 or args.warmup < 0 or args.repeat < 1 or args.threads < 1:
        p.error("--steps, --repeat and --threads must be positive, --warmup non-negative")
    if (problem := output.check_options(args)) is not None:
        p.error(problem)
    vs_torch = torch_side(args.vs, "layers")
    if vs_torch is None:
        return 2
    cfg = dict(steps=args.steps, warmup=args.warmup, threads=args.threads, vs_torch=vs_torch)
    try:
        runs = [_run(cfg) for _ in range(args.repeat)]
    except RuntimeError as exc:
        print(exc, file=sys.stderr)
        return 1

    def best(lib: str, row: str) -> float:
        return min(r[lib][row] for r in runs) * 1e3

    print(
        f"forward + backward, float32, ms per step (median of {args.steps} steps"
        + (f", best of {args.repeat} runs" if args.repeat > 1 else "")
        + f"); {args.threads} BLAS/torch thread(s)"
    )
    head = f"{'layer':<52} {'mpdist':>8}"
    if vs_torch:
        head += f" {'torch':>8} {'ratio':>7}"
    print(head)
    for row, name in ROWS.items():
        line = f"{name:<52} {best('mpdist', row):8.2f}"
        if vs_torch:
            line += f" {best('torch', row):8.2f} {best('mpdist', row) / best('torch', row):6.2f}x"
        print(line)
    if vs_torch:
        print("(ratio: mpdist time / torch time; below 3x is the target)")
    output.write_json(
        args.json,
        "layers",
        [
            {
                "layer": row,
                "description": name,
                "mpdist_ms": best("mpdist", row),
                "torch_ms": best("torch", row) if vs_torch else None,
            }
            for row, name in ROWS.items()
        ],
        args,
    )
    return 0
