"""Helpers shared by the harness tests: which processes still run, what files are left."""

from __future__ import annotations

import os

import psutil


def alive(pids: list[int]) -> list[int]:
    """The pids in ``pids`` that still run (zombies count as gone)."""
    out = []
    for pid in pids:
        try:
            if psutil.Process(pid).status() != psutil.STATUS_ZOMBIE:
                out.append(pid)
        except psutil.NoSuchProcess:
            pass
    return out


def read_pids(directory: os.PathLike[str] | str) -> list[int]:
    """Every pid written (one per file, or one per line) under ``directory``."""
    pids = []
    for name in sorted(os.listdir(directory)):
        with open(os.path.join(directory, name)) as f:
            pids += [int(line) for line in f.read().split()]
    return pids


def leftover_files(directory: os.PathLike[str] | str) -> list[str]:
    """Entries of ``directory`` other than multiprocessing's own session directory (pymp-*)."""
    return [n for n in os.listdir(directory) if not n.startswith("pymp-")]
