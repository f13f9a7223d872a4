"""``python -m mpdist bench``: time per collective, algbw and busbw like nccl-tests, optionally vs gloo.

Every rank is a real process started from an explicit ``spawn`` context; the ranks meet
through a FileStore in a temporary directory. For each (op, size) row every rank runs a
few warm-up calls, meets the others at a barrier and then times each call separately;
the row reports the slowest rank's median. ``--vs gloo`` runs torch's gloo backend over
the same rows in the same invocation (separate processes) and prints mpdist/gloo.

Sizes follow nccl-tests: the size of the largest buffer of the op (the gathered output
of all_gather, the input of reduce_scatter); ``busbw`` scales ``algbw = size / time`` by
2(n-1)/n for all_reduce, (n-1)/n for all_gather, reduce_scatter and all_to_all, and 1
for broadcast and reduce.
"""

from __future__ import annotations

import argparse
import contextlib
import multiprocessing as mp
import os
import statistics
import sys
import tempfile
import time
import traceback
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np

__all__ = ["main", "parse_size"]

OPS = ("all_reduce", "broadcast", "reduce", "all_gather", "reduce_scatter", "all_to_all", "barrier")
DEFAULT_OPS = "all_reduce,broadcast,all_gather"
DEFAULT_SIZES = "4,64K,1M,16M"

_BUS = {
    "all_reduce": lambda n: 2 * (n - 1) / n,
    "broadcast": lambda n: 1.0,
    "reduce": lambda n: 1.0,
    "all_gather": lambda n: (n - 1) / n,
    "reduce_scatter": lambda n: (n - 1) / n,
    "all_to_all": lambda n: (n - 1) / n,
    "barrier": lambda n: 0.0,
}


def parse_size(text: str) -> int:
    """``"4"``, ``"64K"``, ``"1M"``, ``"2G"`` -> bytes (binary multiples)."""
    t = text.strip().upper().removesuffix("B")
    mult = 1
    if t and t[-1] in "KMG":
        mult = 1 << {"K": 10, "M": 20, "G": 30}[t[-1]]
        t = t[:-1]
    try:
        value = int(float(t) * mult)
    except ValueError:
        raise argparse.ArgumentTypeError(f"bad size {text!r} (e.g. 4, 64K, 1M)") from None
    if value <= 0:
        raise argparse.ArgumentTypeError(f"size must be positive, got {text!r}")
    return value


def _fmt_size(n: int) -> str:
    for unit, shift in (("G", 30), ("M", 20), ("K", 10)):
        if n >= 1 << shift and n % (1 << shift) == 0:
            return f"{n >> shift}{unit}"
    return str(n)


def _iters(nbytes: int, requested: int | None) -> tuple[int, int]:
    """(warm-up, timed) iterations: many for small messages, few for big ones."""
    if requested:
        return max(1, requested // 10), requested
    timed = int(min(500, max(5, 1e8 / max(nbytes, 1))))
    return max(2, timed // 10), timed


# ---------------------------------------------------------------------- rank side


class _Impl:
    """One library's view of the collectives: buffers and a call per op."""

    def __init__(self, lib: str, rank: int, n: int, path: str, dtype: str) -> None:
        self.lib, self.rank, self.n = lib, rank, n
        self.np_dtype = np.dtype(dtype)
        if lib == "gloo":
            import torch
            import torch.distributed as tdist

            self.torch, self.d = torch, tdist
            tdist.init_process_group("gloo", init_method=f"file://{path}", rank=rank, world_size=n)
        else:
            from datetime import timedelta

            import mpdist as dist
            from mpdist.store import FileStore

            self.d = dist
            self.store = FileStore(path, n)
            dist.init_process_group(
                lib, store=self.store, rank=rank, world_size=n, timeout=timedelta(seconds=120)
            )

    def array(self, count: int, fill: float) -> Any:
        # reductions run in place over and over: zeros keep the values finite
        a = np.full(count, fill, dtype=self.np_dtype)
        return self.torch.from_numpy(a) if self.lib == "gloo" else a

    def prepare(self, op: str, nbytes: int) -> Callable[[], None]:
        n, d = self.n, self.d
        count = max(1, nbytes // self.np_dtype.itemsize)
        part = max(1, count // n)
        if op == "all_reduce":
            buf = self.array(count, 0.0)
            return lambda: d.all_reduce(buf)
        if op == "broadcast":
            buf = self.array(count, 1.0)
            return lambda: d.broadcast(buf, src=0)
        if op == "reduce":
            buf = self.array(count, 0.0)
            return lambda: d.reduce(buf, dst=0)
        if op == "all_gather":
            outs = [self.array(part, 0.0) for _ in range(n)]
            inp = self.array(part, 1.0)
            return lambda: d.all_gather(outs, inp)
        if op == "reduce_scatter":
            out = self.array(part, 0.0)
            ins = [self.array(part, 1.0) for _ in range(n)]
            return lambda: d.reduce_scatter(out, ins)
        if op == "all_to_all":
            out = self.array(part * n, 0.0)
            inp = self.array(part * n, 1.0)
            return lambda: d.all_to_all_single(out, inp)
        if op == "barrier":
            return lambda: d.barrier()
        raise ValueError(f"unknown op {op!r}")

    def barrier(self) -> None:
        self.d.barrier()

    def close(self) -> None:
        self.d.destroy_process_group()
        if self.lib != "gloo":
            self.store.close()


def _time_row(impl: _Impl, op: str, nbytes: int, iters: int | None) -> float | None:
    try:
        fn = impl.prepare(op, nbytes)
        warm, timed = _iters(nbytes, iters)
        for _ in range(warm):
            fn()
    except Exception:  # e.g. an op gloo does not implement: the row says n/a
        impl.barrier()
        return None
    impl.barrier()
    times = []
    clock = time.perf_counter
    for _ in range(timed):
        t0 = clock()
        fn()
        times.append(clock() - t0)
    impl.barrier()
    return statistics.median(times)


def _rank_main(
    lib: str, rank: int, n: int, path: str, iters: int | None, dtype: str, conn: Any
) -> None:
    """A rank process: join the group, then time the rows the parent sends until ``None``."""
    np.seterr(all="ignore")
    try:
        impl = _Impl(lib, rank, n, path, dtype)
        conn.send(("ready", None))
        while (row := conn.recv()) is not None:
            conn.send(("ok", _time_row(impl, row[0], row[1], iters)))
        impl.close()
        conn.send(("done", None))
    except BaseException:
        conn.send(("error", traceback.format_exc()))
    finally:
        conn.close()


class _Ranks:
    """``n`` rank processes of one library, driven row by row over duplex pipes."""

    def __init__(self, lib: str, n: int, tmp: str, iters: int | None, dtype: str) -> None:
        self.lib = lib
        ctx = mp.get_context("spawn")
        path = os.path.join(tmp, f"store-{lib}")
        self.procs: list[Any] = []
        self.conns: list[Any] = []
        for rank in range(n):
            parent, child = ctx.Pipe(duplex=True)
            p = ctx.Process(
                target=_rank_main,
                args=(lib, rank, n, path, iters, dtype, child),
                name=f"bench-{lib}-rank{rank}",
            )
            p.start()
            child.close()
            self.procs.append(p)
            self.conns.append(parent)

    def _collect(self) -> list[Any]:
        out = []
        for rank, c in enumerate(self.conns):
            try:
                kind, value = c.recv()
            except EOFError:
                raise RuntimeError(f"{self.lib} rank {rank} died without a result") from None
            if kind == "error":
                raise RuntimeError(f"{self.lib} rank {rank} failed:\n{value}")
            out.append(value)
        return out

    def ready(self) -> None:
        self._collect()

    def row(self, op: str, nbytes: int) -> float | None:
        """The slowest rank's median time of one row (None if the library lacks the op)."""
        for c in self.conns:
            c.send((op, nbytes))
        vals = self._collect()
        return None if any(v is None for v in vals) else max(vals)

    def close(self) -> None:
        try:
            for c in self.conns:
                c.send(None)
            self._collect()
        finally:
            for p in self.procs:
                p.join(timeout=30)
                if p.is_alive():
                    p.kill()
                    p.join()
            for c in self.conns:
                c.close()


def _run(
    libs: list[str], n: int, rows: list[tuple[str, int]], iters: int | None, dtype: str
) -> dict[str, list[float | None]]:
    """Every row for every library; rows alternate between libraries so that load from
    elsewhere on the machine hits both sides alike."""
    results: dict[str, list[float | None]] = {lib: [] for lib in libs}
    with tempfile.TemporaryDirectory(prefix="mpdist-bench-") as tmp:
        groups: list[_Ranks] = []
        try:
            for lib in libs:
                groups.append(_Ranks(lib, n, tmp, iters, dtype))
            for g in groups:
                g.ready()
            for op, nbytes in rows:
                for g in groups:
                    results[g.lib].append(g.row(op, nbytes))
        finally:
            for g in groups:
                # a failure is already reported; every process is joined or killed regardless
                with contextlib.suppress(RuntimeError, OSError):
                    g.close()
    return results


# ---------------------------------------------------------------------- CLI


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="mpdist bench",
        description="Collective benchmark (like nccl-tests): time per op, algbw, busbw.",
    )
    p.add_argument("--world-size", "-n", type=int, default=2, help="number of rank processes")
    p.add_argument("--ops", default=DEFAULT_OPS, help=f"comma list from {','.join(OPS)}")
    p.add_argument("--sizes", default=DEFAULT_SIZES, help="comma list of sizes: 4,64K,1M,16M,128M")
    p.add_argument("--backend", default="tcp", help="mpdist backend (tcp)")
    p.add_argument(
        "--vs", choices=["gloo"], default=None, help="also run torch's gloo and print the ratio"
    )
    p.add_argument(
        "--iters", type=int, default=None, help="timed iterations per row (default: by size)"
    )
    p.add_argument("--dtype", default="float32", help="element type (default float32)")
    return p


def main(argv: Sequence[str] | None = None) -> int:
    """Run the benchmark and print the table; returns the exit code."""
    args = _parser().parse_args(list(sys.argv[1:] if argv is None else argv))
    n = args.world_size
    if n < 1:
        print("mpdist bench: --world-size must be >= 1", file=sys.stderr)
        return 2
    ops = [o.strip() for o in args.ops.split(",") if o.strip()]
    bad = [o for o in ops if o not in OPS]
    if bad:
        print(f"mpdist bench: unknown op(s) {bad}; choose from {', '.join(OPS)}", file=sys.stderr)
        return 2
    try:
        sizes = [parse_size(s) for s in args.sizes.split(",") if s.strip()]
        dtype = np.dtype(args.dtype).name
    except (argparse.ArgumentTypeError, TypeError) as e:
        print(f"mpdist bench: {e}", file=sys.stderr)
        return 2
    if args.vs == "gloo":
        try:
            import torch  # noqa: F401
        except ImportError:
            print("mpdist bench: --vs gloo needs torch installed", file=sys.stderr)
            return 2
    rows = [(op, s) for op in ops for s in ([0] if op == "barrier" else sizes)]

    libs = [args.backend] + (["gloo"] if args.vs else [])
    try:
        results = _run(libs, n, rows, args.iters, dtype)
    except RuntimeError as e:
        print(f"mpdist bench: {e}", file=sys.stderr)
        return 1
    ours = results[args.backend]
    theirs = results.get("gloo")

    print(
        f"# mpdist {args.backend} collectives: world size {n}, {dtype}, "
        f"median time per op of the slowest rank" + (" (vs torch gloo)" if theirs else "")
    )
    head = f"{'op':>15} {'size':>6} {'time(us)':>10} {'algbw(GB/s)':>12} {'busbw(GB/s)':>12}"
    if theirs:
        head += f" {'gloo(us)':>10} {'gloo busbw':>11} {'ratio':>6}"
    print(head)
    for i, (op, size) in enumerate(rows):
        t = ours[i]
        if t is None:
            line = f"{op:>15} {_fmt_size(size):>6} {'n/a':>10} {'':>12} {'':>12}"
        else:
            algbw = size / t / 1e9 if size else 0.0
            busbw = algbw * _BUS[op](n) if n > 1 else 0.0
            line = f"{op:>15} {_fmt_size(size):>6} {t * 1e6:>10.1f} {algbw:>12.3f} {busbw:>12.3f}"
        if theirs:
            g = theirs[i]
            if g is None or t is None:
                line += f" {'n/a' if g is None else f'{g * 1e6:.1f}':>10} {'':>11} {'':>6}"
            else:
                gbus = (size / g / 1e9) * _BUS[op](n) if size and n > 1 else 0.0
                line += f" {g * 1e6:>10.1f} {gbus:>11.3f} {t / g:>6.2f}"
        print(line)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
