"""``python -m mpdist bench store``: latency of the stores, next to torch's when installed.

Two numbers per store, both medians over many repetitions:

* set+get: one process does ``set(k, v)`` then ``get(k)``;
* round trip: process A sets ``ping/i``; process B, blocked in ``get(ping/i)``,
  answers with ``set(pong/i)``; A's ``get(pong/i)`` returns. The time from A's set
  to A's get returning is one round trip (two cross-process wake-ups).

With torch installed, ``torch.distributed``'s FileStore and TCPStore are measured
the same way and shown on the same row with the ratio torch/mpdist.
"""

from __future__ import annotations

import argparse
import multiprocessing as mp
import os
import statistics
import tempfile
import time
from collections.abc import Callable, Sequence
from datetime import timedelta
from typing import Any

from mpdist import store as st
from mpdist.benchmarks import output

_TIMEOUT = timedelta(seconds=60)


def _open(impl: str, kind: str, spec: dict[str, Any], master: bool) -> Any:
    """Open a store: ``impl`` is "mpdist" or "torch", ``kind`` "hash", "file" or "tcp"."""
    if impl == "torch":
        import torch.distributed as td

        if kind == "hash":
            return td.HashStore()
        if kind == "file":
            return td.FileStore(spec["path"], -1)
        return td.TCPStore(
            "127.0.0.1",
            spec["port"],
            None,
            master,
            timeout=_TIMEOUT,
            wait_for_workers=False,
        )
    if kind == "hash":
        return st.HashStore()
    if kind == "file":
        return st.FileStore(spec["path"], -1, timeout=_TIMEOUT)
    return st.TCPStore("127.0.0.1", spec["port"], None, master, _TIMEOUT, wait_for_workers=False)


def _echo(impl: str, kind: str, spec: dict[str, Any], n: int) -> None:
    """Process B of the round trip: answer every ping with a pong."""
    s = _open(impl, kind, spec, master=False)
    s.set("echo/ready", b"1")
    for i in range(n):
        s.set(f"pong/{i}", s.get(f"ping/{i}"))
    s.get("echo/done")


def _median_seconds(n: int, once: Callable[[int], None]) -> float:
    """Median wall time of ``once(i)`` for i in 0..n-1 (the call itself costs ~20 ns)."""
    times = []
    for i in range(n):
        t0 = time.perf_counter()
        once(i)
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def _set_get(s: Any, n: int) -> float:
    def once(i: int) -> None:
        s.set(f"sg/{i}", b"value")
        s.get(f"sg/{i}")

    return _median_seconds(n, once)


def _round_trip(impl: str, kind: str, s: Any, spec: dict[str, Any], n: int) -> float:
    ctx = mp.get_context("spawn")
    p = ctx.Process(target=_echo, args=(impl, kind, spec, n), daemon=True)
    p.start()
    try:
        # Wait for the echo process, noticing if it died on the way.
        while not s.check(["echo/ready"]):
            if not p.is_alive():
                raise RuntimeError(f"echo process for {impl} {kind} exited with {p.exitcode}")
            time.sleep(0.01)

        def once(i: int) -> None:
            s.set(f"ping/{i}", b"x")
            s.get(f"pong/{i}")

        median = _median_seconds(n, once)
        s.set("echo/done", b"1")
    finally:
        p.join(30)
        if p.is_alive():
            p.kill()
            p.join()
    return median


def _measure(impl: str, kind: str, n_sg: int, n_rt: int, tmp: str) -> tuple[float, float | None]:
    spec: dict[str, Any] = {"path": os.path.join(tmp, f"{impl}-{kind}"), "port": 0}
    s = _open(impl, kind, spec, master=True)
    try:
        if kind == "tcp":
            spec["port"] = s.port
        sg = _set_get(s, n_sg)
        rt = None if kind == "hash" else _round_trip(impl, kind, s, spec, n_rt)
    finally:
        if impl == "mpdist":
            s.close()
        else:
            del s
    return sg, rt


def _fmt(x: float | None) -> str:
    return "-" if x is None else f"{x * 1e3:8.3f} ms"


def _ratio(theirs: float | None, ours: float | None) -> str:
    if theirs is None or ours is None or ours == 0:
        return "-"
    return f"{theirs / ours:6.1f}x"


def main(argv: Sequence[str] | None = None) -> int:
    """Run the store benchmark and print one row per store; returns the exit code."""
    parser = argparse.ArgumentParser(prog="mpdist bench store", description=__doc__.splitlines()[0])
    parser.add_argument("--iters", type=int, default=1000, help="set+get repetitions")
    parser.add_argument("--round-trips", type=int, default=300, help="cross-process round trips")
    parser.add_argument("--no-torch", action="store_true", help="skip torch even if installed")
    output.add_options(parser)
    args = parser.parse_args(list(argv or []))
    if (problem := output.check_options(args)) is not None:
        parser.error(problem)
    try:
        if args.no_torch:
            raise ImportError
        import torch.distributed  # noqa: F401

        have_torch = True
    except ImportError:
        have_torch = False

    rows = []
    with tempfile.TemporaryDirectory(prefix="mpdist-bench-store-") as tmp:
        for kind, name in (("hash", "HashStore"), ("file", "FileStore"), ("tcp", "TCPStore")):
            ours = _measure("mpdist", kind, args.iters, args.round_trips, tmp)
            theirs: tuple[float | None, float | None] = (None, None)
            if have_torch:
                # torch's FileStore polls every 10 ms: fewer round trips keep the run short.
                n_rt = min(args.round_trips, 100) if kind == "file" else args.round_trips
                theirs = _measure("torch", kind, args.iters, n_rt, tmp)
            rows.append((name, ours, theirs))

    head = f"{'store':<10} {'set+get':>11} {'round trip':>11}"
    if have_torch:
        head += (
            f" | {'torch set+get':>13} {'torch rt':>11} | {'set+get':>7} {'rt':>7}  (torch/mpdist)"
        )
    print(head)
    print("-" * len(head))
    for name, (sg, rt), (tsg, trt) in rows:
        line = f"{name:<10} {_fmt(sg):>11} {_fmt(rt):>11}"
        if have_torch:
            line += (
                f" | {_fmt(tsg):>13} {_fmt(trt):>11} | {_ratio(tsg, sg):>7} {_ratio(trt, rt):>7}"
            )
        print(line)
    print("medians; round trip = A set -> B get -> B set -> A get, two processes")
    output.write_json(
        args.json,
        "store",
        [
            {
                "store": name,
                "set_get_s": sg,
                "round_trip_s": rt,
                "torch_set_get_s": tsg,
                "torch_round_trip_s": trt,
            }
            for name, (sg, rt), (tsg, trt) in rows
        ],
        args,
    )
    if hasattr(os, "getloadavg"):
        load = ", ".join(f"{x:.1f}" for x in os.getloadavg())
        print(f"{os.cpu_count()} CPUs, load average {load} (latency grows with load)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
