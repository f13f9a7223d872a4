"""Benchmark results people can keep: ``--json PATH`` (one record per row, with the machine) and ``--plot PATH.png``.

Every ``mpdist bench`` adds the options with :func:`add_options` and, after printing its
table, calls :func:`write_json` with one dict per table row. The JSON file is one object::

    {"benchmark": "collectives", "machine": {...}, "params": {...}, "records": [{...}, ...]}

``machine`` says where the numbers come from (host, CPU model, usable cpus, load, versions,
the command line, the time), so two files can be compared later. ``--plot`` (the
collectives bench) draws bus bandwidth and latency against message size, one panel pair per
operation, one line per library; it needs matplotlib (``pip install 'mpdist[plot]'``), which
is imported only then.
"""

from __future__ import annotations

import argparse
import datetime
import importlib.metadata
import importlib.util
import json
import os
import platform
import socket
import sys
import textwrap
from collections.abc import Callable, Mapping, Sequence
from typing import Any

__all__ = ["add_options", "check_options", "machine_info", "plot_collectives", "write_json"]

# Options of the output itself: not parameters of the measurement.
_OWN_OPTIONS = ("json", "plot")


def add_options(parser: argparse.ArgumentParser, *, plot: bool = False) -> None:
    """Add ``--json PATH`` (and, with ``plot``, ``--plot PATH.png``) to a bench's parser."""
    parser.add_argument(
        "--json",
        metavar="PATH",
        default=None,
        help="also write the rows to PATH as JSON, one record per row, with machine info",
    )
    if plot:
        parser.add_argument(
            "--plot",
            metavar="PATH.png",
            default=None,
            help="draw bus bandwidth and latency against message size to PATH.png "
            "(needs matplotlib: pip install 'mpdist[plot]')",
        )


def check_options(args: argparse.Namespace) -> str | None:
    """Why the output options cannot work (checked before the benchmark runs), or None."""
    if getattr(args, "plot", None) and importlib.util.find_spec("matplotlib") is None:
        return "--plot needs matplotlib: pip install 'mpdist[plot]'"
    for name in _OWN_OPTIONS:
        path = getattr(args, name, None)
        if path is not None:
            folder = os.path.dirname(os.path.abspath(path))
            if not os.path.isdir(folder):
                return f"--{name} {path}: directory {folder} does not exist"
    return None


def _version(dist: str) -> str | None:
    try:
        return importlib.metadata.version(dist)
    except importlib.metadata.PackageNotFoundError:
        return None


def _cpu_model() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def machine_info() -> dict[str, Any]:
    """Where and when the numbers were taken: host, CPU, cpus usable here, load, versions."""
    from mpdist._cpus import usable_cpus

    return {
        "hostname": socket.gethostname(),
        "platform": platform.platform(),
        "cpu_model": _cpu_model(),
        "cpu_count": os.cpu_count(),
        "usable_cpus": usable_cpus(),
        "load_average": list(os.getloadavg()) if hasattr(os, "getloadavg") else None,
        "python": platform.python_version(),
        "versions": {
            name: _version(name) for name in ("mpdist", "numpy", "torch", "mpi4py", "mpich")
        },
        "thread_env": {
            k: os.environ.get(k)
            for k in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS")
        },
        "argv": list(sys.argv),
        "time": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
    }


def write_json(
    path: str | None,
    benchmark: str,
    records: Sequence[Mapping[str, Any]],
    args: argparse.Namespace,
) -> None:
    """Write ``records`` (one per table row) with the machine and the bench's parameters to
    ``path``; nothing when ``path`` is None. The file is replaced whole (written, then renamed)."""
    if path is None:
        return
    params = {k: v for k, v in vars(args).items() if k not in _OWN_OPTIONS}
    doc = {
        "benchmark": benchmark,
        "machine": machine_info(),
        "params": params,
        "records": [dict(r) for r in records],
    }
    tmp = f"{path}.tmp{os.getpid()}"
    with open(tmp, "w") as f:
        json.dump(doc, f, indent=1, default=str)
        f.write("\n")
    os.replace(tmp, path)


def plot_collectives(
    path: str | None,
    records: Sequence[Mapping[str, Any]],
    title: str,
    size_label: Callable[[int], str] = str,
) -> None:
    """Bus bandwidth and latency against message size, per op (rows), one line per library.

    ``records`` are the collectives bench's: ``op``, ``bytes`` and ``results`` mapping each
    library to its ``time_us`` and ``busbw_GBps`` (None where it did not run). Barrier rows
    (no size) are left out; ``size_label`` spells the sizes on the axis. Nothing when ``path`` is None.
    """
    if path is None:
        return
    import matplotlib

    matplotlib.use("Agg")  # a file, never a window
    import matplotlib.pyplot as plt

    ops = list(dict.fromkeys(r["op"] for r in records if r["bytes"] > 0))
    if not ops:
        raise ValueError("nothing to plot: no operation with a message size (only barrier?)")
    fig, axes = plt.subplots(len(ops), 2, figsize=(11, 3.4 * len(ops)), squeeze=False)
    for row, op in enumerate(ops):
        mine = [r for r in records if r["op"] == op]
        libs = list(dict.fromkeys(lib for r in mine for lib in r["results"]))
        bw_ax, lat_ax = axes[row]
        for lib in libs:
            points = [
                (r["bytes"], r["results"][lib]["busbw_GBps"], r["results"][lib]["time_us"])
                for r in mine
                if r["results"].get(lib, {}).get("time_us") is not None
            ]
            if not points:
                continue
            size, bw, us = zip(*points, strict=True)
            bw_ax.plot(size, bw, marker="o", label=lib)
            lat_ax.plot(size, us, marker="o", label=lib)
        sizes = sorted({r["bytes"] for r in mine})
        for ax, ylabel in ((bw_ax, "bus bandwidth (GB/s)"), (lat_ax, "time per op (us)")):
            ax.set_xscale("log", base=2)
            ax.set_xticks(sizes, [size_label(b) for b in sizes])
            ax.minorticks_off()
            ax.set_xlabel("message size (bytes)")
            ax.set_ylabel(ylabel)
            ax.set_title(op)
            ax.grid(True, which="both", alpha=0.3)
            ax.legend()
        lat_ax.set_yscale("log")
    fig.suptitle("\n".join(textwrap.wrap(title, 110)), fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
