"""``python -m mpdist bench``: time per collective, algbw and busbw like nccl-tests, optionally vs gloo or MPI.

Every rank is a real process, started as the test harness starts ranks (forked from one
forkserver on Linux; see :func:`rank_context`) or by ``mpiexec``; the ranks meet through
a FileStore in a temporary directory. For each (op, size) row every rank runs a few
warm-up calls, meets the others at a barrier and then times each call separately; the
row reports the slowest rank's median. ``--vs gloo`` runs torch's gloo backend over
the same rows in the same invocation (separate processes) and prints mpdist/gloo.
``--vs mpi`` runs mpdist's ``mpi`` backend and the same calls on raw mpi4py, each as an
``mpiexec`` job the bench starts (``_mpi_job``), and prints mpi/mpi4py, mpdist's own
microseconds per call on top of MPI's, and mpdist/mpi4py. One runner drives every
library's ranks; the rows alternate between the libraries.

Sizes follow nccl-tests: the size of the largest buffer of the op (the gathered output
of all_gather, the input of reduce_scatter); ``busbw`` scales ``algbw = size / time`` by
2(n-1)/n for all_reduce, (n-1)/n for all_gather, reduce_scatter and all_to_all, and 1
for broadcast and reduce.
"""

from __future__ import annotations

import argparse
import contextlib
import importlib.util
import os
import statistics
import sys
import tempfile
import time
import traceback
from collections.abc import Callable, Sequence
from typing import Any, NamedTuple

import numpy as np

from mpdist.benchmarks import output

__all__ = ["main", "parse_size", "rank_context"]

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
    """One library's view of the collectives: buffers and a call per op, through torch's
    API (mpdist's backends, the ``mpi`` one included, and torch's gloo)."""

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

    def describe(self) -> str:
        """What the table's title says of this library's setup ("" for nothing)."""
        if self.lib != "mpi":
            return ""
        from mpdist.backends.mpi import check_shapes_default

        return "header check " + ("on" if check_shapes_default(None) else "off")

    def array(self, count: int, fill: float) -> Any:
        # reductions run in place over and over: zeros keep the values finite
        a = np.full(count, fill, dtype=self.np_dtype)
        return self.torch.from_numpy(a) if self.lib == "gloo" else a

    def rows(self, n: int, part: int, fill: float) -> list[Any]:
        """A list argument: ``n`` rows of one array, the layout every library (MPI's
        one-buffer calls too) moves with no staging copy."""
        return list(self.array(n * part, fill).reshape(n, part))

    def counts(self, nbytes: int) -> tuple[int, int]:
        """(elements of the op's largest buffer, elements of one rank's part of it)."""
        count = max(1, nbytes // self.np_dtype.itemsize)
        return count, max(1, count // self.n)

    def prepare(self, op: str, nbytes: int) -> Callable[[], None]:
        n, d = self.n, self.d
        count, part = self.counts(nbytes)
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
            outs = self.rows(n, part, 0.0)
            inp = self.array(part, 1.0)
            return lambda: d.all_gather(outs, inp)
        if op == "reduce_scatter":
            out = self.array(part, 0.0)
            ins = self.rows(n, part, 1.0)
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


class _RawMpi(_Impl):
    """mpi4py's buffer API on ``COMM_WORLD`` with no mpdist in between: the calls a user
    of MPI would write for each row, what the ``mpi`` backend is measured against."""

    def __init__(self, lib: str, rank: int, n: int, path: str, dtype: str) -> None:
        from mpi4py import MPI

        self.lib, self.rank, self.n = lib, rank, n
        self.np_dtype = np.dtype(dtype)
        self.mpi, self.comm = MPI, MPI.COMM_WORLD

    def describe(self) -> str:
        return " ".join(self.mpi.Get_library_version().splitlines()[0].split())

    def prepare(self, op: str, nbytes: int) -> Callable[[], None]:
        n, comm, MPI = self.n, self.comm, self.mpi
        count, part = self.counts(nbytes)
        if op == "all_reduce":
            buf = self.array(count, 0.0)
            return lambda: comm.Allreduce(MPI.IN_PLACE, buf, MPI.SUM)
        if op == "broadcast":
            buf = self.array(count, 1.0)
            return lambda: comm.Bcast(buf, 0)
        if op == "reduce":
            buf = self.array(count, 0.0)
            if self.rank == 0:
                return lambda: comm.Reduce(MPI.IN_PLACE, buf, MPI.SUM, 0)
            return lambda: comm.Reduce(buf, None, MPI.SUM, 0)
        if op == "all_gather":
            out = self.array(part * n, 0.0)
            inp = self.array(part, 1.0)
            return lambda: comm.Allgather(inp, out)
        if op == "reduce_scatter":
            out = self.array(part, 0.0)
            inp = self.array(part * n, 1.0)
            return lambda: comm.Reduce_scatter_block(inp, out, MPI.SUM)
        if op == "all_to_all":
            out = self.array(part * n, 0.0)
            inp = self.array(part * n, 1.0)
            return lambda: comm.Alltoall(inp, out)
        if op == "barrier":
            return lambda: comm.Barrier()
        raise ValueError(f"unknown op {op!r}")

    def barrier(self) -> None:
        self.comm.Barrier()

    def close(self) -> None:
        pass  # mpi4py finalizes MPI when the rank exits


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
        impl = (_RawMpi if lib == "mpi4py" else _Impl)(lib, rank, n, path, dtype)
        conn.send(("ready", impl.describe()))
        while (row := conn.recv()) is not None:
            conn.send(("ok", _time_row(impl, row[0], row[1], iters)))
        impl.close()
        conn.send(("done", None))
    except BaseException:
        conn.send(("error", traceback.format_exc()))
    finally:
        conn.close()


def rank_context() -> Any:
    """How the bench starts its ranks: as the test harness starts a test's ranks, forked from
    one forkserver on Linux (``MPDIST_START_METHOD`` picks another way), so the rows time
    the collectives as tests run them.

    How ranks start matters where they outnumber the cores. Ranks forked from one process
    share its address-space layout; ranks exec'd one by one each get their own random one.
    4 ranks on 2 cores, a 4-byte all_reduce costs ~12 us of CPU per rank forked and ~22 us
    spawned, with the same number of context switches; spawned under ``setarch -R``
    (address randomization off, so every rank has the same layout) it costs what forked
    does. So ranks taking turns on a core run faster when their code lies at the same
    addresses: most likely the CPU's address-indexed state (branch predictors), which this
    virtual machine gives no counters to confirm.
    """
    from mpdist.testing import _config, _coordinator

    return _coordinator.get_context(_config.start_method(None), [__name__])


class _Local:
    """Rank processes started here (:func:`rank_context`), one duplex pipe each."""

    def __init__(self, lib: str, n: int, store_path: str, iters: int | None, dtype: str) -> None:
        ctx = rank_context()
        self.procs: list[Any] = []
        self.conns: list[Any] = []
        for rank in range(n):
            parent, child = ctx.Pipe(duplex=True)
            p = ctx.Process(
                target=_rank_main,
                args=(lib, rank, n, store_path, iters, dtype, child),
                name=f"bench-{lib}-rank{rank}",
            )
            p.start()
            child.close()
            self.procs.append(p)
            self.conns.append(parent)

    def connect(self) -> list[Any]:
        return self.conns

    def output(self) -> str:
        return ""  # the ranks print to the bench's own stderr

    def stop(self, grace: float = 30.0) -> None:
        for p in self.procs:
            p.join(timeout=grace)
            if p.is_alive():
                p.kill()
                p.join()
        for c in self.conns:
            c.close()


class _Ranks:
    """``n`` rank processes of one library, driven row by row over duplex connections:
    started here, or for an MPI library one ``mpiexec`` job whose ranks connect back
    (``_mpi_job``). Either way each rank runs ``_rank_main``."""

    def __init__(self, lib: str, n: int, tmp: str, iters: int | None, dtype: str) -> None:
        from ._mpi_job import MPI_LIBS, MpiJob

        self.lib = lib
        self.info = ""  # rank 0's description of its library's setup
        self.conns: list[Any] = []
        path = os.path.join(tmp, f"store-{lib}")
        self.job: _Local | MpiJob
        if lib in MPI_LIBS:
            self.job = MpiJob(lib, n, path, iters, dtype, os.path.join(tmp, f"{lib}.log"))
        else:
            self.job = _Local(lib, n, path, iters, dtype)

    def _collect(self, timeout: float | None = None) -> list[Any]:
        out = []
        for rank, c in enumerate(self.conns):
            try:
                if timeout is not None and not c.poll(timeout):
                    raise RuntimeError(f"{self.lib} rank {rank} gave no answer in {timeout} s")
                kind, value = c.recv()
            except EOFError:
                raise RuntimeError(
                    f"{self.lib} rank {rank} died without a result\n{self.job.output()}"
                ) from None
            if kind == "error":
                raise RuntimeError(f"{self.lib} rank {rank} failed:\n{value}")
            out.append(value)
        return out

    def ready(self) -> None:
        self.conns = self.job.connect()
        self.info = self._collect()[0] or ""

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
            # a rank stuck in a collective (a peer failed) must not stall the bench for ever
            self._collect(timeout=60.0)
        finally:
            # ranks never connected wait for nothing: stop them at once
            self.job.stop(grace=30.0 if self.conns else 0.0)
            for c in self.conns:
                c.close()


class _Results(NamedTuple):
    times: dict[str, list[float | None]]  # library -> one time per row (None: n/a)
    info: dict[str, str]  # library -> its rank 0's description of its setup


def _run(
    libs: list[str], n: int, rows: list[tuple[str, int]], iters: int | None, dtype: str
) -> _Results:
    """Every row for every library; rows alternate between libraries so that load from
    elsewhere on the machine hits every side alike."""
    results = _Results({lib: [] for lib in libs}, {})
    with tempfile.TemporaryDirectory(prefix="mpdist-bench-") as tmp:
        groups: list[_Ranks] = []
        try:
            for lib in libs:
                groups.append(_Ranks(lib, n, tmp, iters, dtype))
            for g in groups:
                g.ready()
                results.info[g.lib] = g.info
            for op, nbytes in rows:
                for g in groups:
                    results.times[g.lib].append(g.row(op, nbytes))
        finally:
            for g in groups:
                # a failure is already reported; every process is joined or killed regardless
                with contextlib.suppress(RuntimeError, OSError):
                    g.close()
    return results


# ---------------------------------------------------------------------- CLI


# what each --vs adds to the run: torch's gloo; mpdist's mpi backend and raw mpi4py
_VS = {"gloo": ("gloo",), "mpi": ("mpi", "mpi4py")}


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="mpdist bench",
        description="Collective benchmark (like nccl-tests): time per op, algbw, busbw.",
    )
    p.add_argument("--world-size", "-n", type=int, default=2, help="number of rank processes")
    p.add_argument("--ops", default=DEFAULT_OPS, help=f"comma list from {','.join(OPS)}")
    p.add_argument("--sizes", default=DEFAULT_SIZES, help="comma list of sizes: 4,64K,1M,16M,128M")
    p.add_argument("--backend", default="tcp", help="mpdist backend (tcp; mpi runs under mpiexec)")
    p.add_argument(
        "--vs",
        choices=sorted(_VS),
        action="append",
        default=[],
        help="also run torch's gloo, or mpdist's mpi backend and raw mpi4py under mpiexec, "
        "and print the ratios (repeatable)",
    )
    p.add_argument(
        "--iters", type=int, default=None, help="timed iterations per row (default: by size)"
    )
    p.add_argument("--dtype", default="float32", help="element type (default float32)")
    output.add_options(p, plot=True)
    return p


# The name each library's results carry in --json records and in the plot's legend.
_LIB_NAMES = {"tcp": "mpdist tcp", "gloo": "torch gloo", "mpi": "mpdist mpi", "mpi4py": "mpi4py"}


def _records(
    libs: list[str],
    times: dict[str, list[float | None]],
    rows: list[tuple[str, int]],
    n: int,
    dtype: str,
) -> list[dict[str, object]]:
    """One --json record per table row: the op and size, and each library's numbers."""
    records: list[dict[str, object]] = []
    for i, (op, size) in enumerate(rows):
        results: dict[str, dict[str, float | None]] = {}
        for lib in libs:
            t = times[lib][i]
            results[_LIB_NAMES.get(lib, lib)] = {
                "time_us": None if t is None else t * 1e6,
                "algbw_GBps": None if t is None else (size / t / 1e9 if size else 0.0),
                "busbw_GBps": None if t is None else _busbw(op, size, n, t),
            }
        records.append(
            {"op": op, "bytes": size, "dtype": dtype, "world_size": n, "results": results}
        )
    return records


def _busbw(op: str, size: int, n: int, t: float) -> float:
    return (size / t / 1e9) * _BUS[op](n) if size and n > 1 else 0.0


class _Column(NamedTuple):
    """A comparison column: its heading and its text for row ``i``."""

    head: str
    cell: Callable[[int], str]


def _columns(
    vs: list[str],
    ours: str,
    times: dict[str, list[float | None]],
    rows: list[tuple[str, int]],
    n: int,
) -> list[_Column]:
    """The columns ``--vs`` adds: each other library's time and busbw, and the ratios."""

    def us(lib: str) -> Callable[[int], str]:
        return lambda i: "n/a" if (t := times[lib][i]) is None else f"{t * 1e6:.1f}"

    def busbw(lib: str) -> Callable[[int], str]:
        return lambda i: "" if (t := times[lib][i]) is None else f"{_busbw(*rows[i], n, t):.3f}"

    def both(a: str, b: str, fmt: Callable[[float, float], str]) -> Callable[[int], str]:
        def cell(i: int) -> str:
            ta, tb = times[a][i], times[b][i]
            return "" if ta is None or tb is None else fmt(ta, tb)

        return cell

    def ratio(a: str, b: str) -> _Column:
        return _Column(f"{a}/{b}", both(a, b, lambda x, y: f"{x / y:.2f}"))

    cols: list[_Column] = []
    if "gloo" in vs:
        cols += [_Column("gloo(us)", us("gloo")), _Column("gloo busbw", busbw("gloo"))]
        cols.append(ratio(ours, "gloo"))
    if "mpi" in vs:
        cols += [_Column("mpi(us)", us("mpi")), _Column("mpi4py(us)", us("mpi4py"))]
        cols += [_Column("mpi4py busbw", busbw("mpi4py")), ratio("mpi", "mpi4py")]
        # mpdist's own cost per call on top of MPI's (the header check included when on)
        cols.append(
            _Column("mpi-mpi4py(us)", both("mpi", "mpi4py", lambda x, y: f"{(x - y) * 1e6:+.1f}"))
        )
        cols.append(ratio(ours, "mpi4py"))
    return list({c.head: c for c in cols}.values())  # once each, as under --backend mpi


def main(argv: Sequence[str] | None = None) -> int:
    """Run the benchmark and print the table; returns the exit code."""
    from ._mpi_job import MPI_LIBS, find_mpiexec

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
    vs = list(dict.fromkeys(args.vs))
    libs = list(dict.fromkeys([args.backend, *(lib for v in vs for lib in _VS[v])]))
    if "gloo" in vs and importlib.util.find_spec("torch") is None:
        print("mpdist bench: --vs gloo needs torch installed", file=sys.stderr)
        return 2
    if any(lib in MPI_LIBS for lib in libs) and (
        importlib.util.find_spec("mpi4py") is None or find_mpiexec() is None
    ):
        print(
            "mpdist bench: MPI needs mpi4py and mpiexec: pip install 'mpdist[mpi]'",
            file=sys.stderr,
        )
        return 2
    rows = [(op, s) for op in ops for s in ([0] if op == "barrier" else sizes)]
    problem = output.check_options(args)
    if problem is not None:
        print(f"mpdist bench: {problem}", file=sys.stderr)
        return 2

    try:
        times, info = _run(libs, n, rows, args.iters, dtype)
    except RuntimeError as e:
        print(f"mpdist bench: {e}", file=sys.stderr)
        return 1
    ours = times[args.backend]

    def label(lib: str) -> str:
        return f"{lib} [{info[lib]}]" if info.get(lib) else lib

    against = {
        "gloo": "torch gloo",
        "mpi": f"mpdist {label('mpi')} and raw {label('mpi4py')} under mpiexec",
    }
    title = (
        f"mpdist {label(args.backend)} collectives: world size {n}, {dtype}, "
        f"median time per op of the slowest rank"
        + (f" (vs {'; '.join(against[v] for v in vs)})" if vs else "")
    )
    print(f"# {title}")
    cols = _columns(vs, args.backend, times, rows, n)
    widths = [max(10, len(c.head)) for c in cols]
    head = f"{'op':>15} {'size':>6} {'time(us)':>10} {'algbw(GB/s)':>12} {'busbw(GB/s)':>12}"
    print(head + "".join(f" {c.head:>{w}}" for c, w in zip(cols, widths, strict=True)))
    for i, (op, size) in enumerate(rows):
        t = ours[i]
        if t is None:
            line = f"{op:>15} {_fmt_size(size):>6} {'n/a':>10} {'':>12} {'':>12}"
        else:
            algbw = size / t / 1e9 if size else 0.0
            busbw = _busbw(op, size, n, t)
            line = f"{op:>15} {_fmt_size(size):>6} {t * 1e6:>10.1f} {algbw:>12.3f} {busbw:>12.3f}"
        print(line + "".join(f" {c.cell(i):>{w}}" for c, w in zip(cols, widths, strict=True)))
    records = _records(libs, times, rows, n, dtype)
    output.write_json(args.json, "collectives", records, args)
    output.plot_collectives(args.plot, records, title, _fmt_size)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
