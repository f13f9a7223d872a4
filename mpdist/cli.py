"""Command-line entry point shared by ``mpdist`` and ``python -m mpdist``.

Subcommands are thin: each one lives in its own module and is imported only
when asked for, so ``mpdist info`` does not pay for the launcher or the
benchmarks.

    mpdist info                      versions and the backends that are registered
    mpdist bench <what> [options]    benchmarks (see ``mpdist bench --help``)
    mpdist run --nproc N script.py   start N local ranks
"""

from __future__ import annotations

import argparse
import importlib
import sys
from collections.abc import Sequence

# benchmark name -> module under mpdist.benchmarks exposing main(argv) -> int
BENCHMARKS = {
    "store": "mpdist.benchmarks.store",
    "collectives": "mpdist.benchmarks.collectives",
    "harness": "mpdist.benchmarks.harness",
    "ddp": "mpdist.benchmarks.ddp",
    "layers": "mpdist.benchmarks.layers",
    "tp": "mpdist.benchmarks.tp",
    "fsdp": "mpdist.benchmarks.fsdp",
}


def _info(argv: Sequence[str]) -> int:
    import platform

    import numpy

    import mpdist

    print(f"mpdist {mpdist.__version__}")
    print(f"python {platform.python_version()} on {platform.platform()}")
    print(f"numpy {numpy.__version__}")
    try:
        import torch  # noqa: F401

        print(f"torch {torch.__version__}")
    except ImportError:
        print("torch not installed")
    return 0


def _bench(argv: Sequence[str]) -> int:
    # The collectives benchmark is the default, like nccl-tests: `mpdist bench --world-size 2 ...`.
    if argv and argv[0] in BENCHMARKS:
        name, rest = argv[0], list(argv[1:])
    elif argv and argv[0] in ("-h", "--help"):
        print("usage: mpdist bench {" + ",".join(BENCHMARKS) + "} [options]")
        print("       mpdist bench [collectives options]   (collectives is the default)")
        return 0
    else:
        name, rest = "collectives", list(argv)
    module = importlib.import_module(BENCHMARKS[name])
    return int(module.main(rest) or 0)


def _run(argv: Sequence[str]) -> int:
    from mpdist.launcher import main as launcher_main

    return int(launcher_main(list(argv)) or 0)


COMMANDS = {"info": _info, "bench": _bench, "run": _run}


def main(argv: Sequence[str] | None = None) -> int:
    """Dispatch ``mpdist <command> ...``; returns the process exit code."""
    args = list(sys.argv[1:] if argv is None else argv)
    parser = argparse.ArgumentParser(prog="mpdist", description=__doc__.splitlines()[0])
    parser.add_argument("command", choices=sorted(COMMANDS))
    if not args or args[0] in ("-h", "--help"):
        parser.print_help()
        return 0 if args else 2
    if args[0] not in COMMANDS:
        parser.parse_args(args[:1])  # prints the usage error and exits 2
    return COMMANDS[args[0]](args[1:])
