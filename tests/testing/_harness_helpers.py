"""Helpers shared by the harness tests: which processes still run, what files are left."""

from __future__ import annotations

import os

import psutil
import pytest


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


def check_limit_from_env_and_ini(
    pytester: pytest.Pytester, monkeypatch: pytest.MonkeyPatch
) -> None:
    """With a ``test_big`` module of worlds of 2, 3, 3 and 4 ranks (three of 3 under
    ``-k three``): ``$MPDIST_MAX_WORLD_SIZE=3`` skips the world of 4 naming the variable, and
    the ini ``mpdist_max_ranks = 2`` with ``--max-ranks-error`` fails both worlds of 3 naming
    the ini key. Leaves that ini in place."""
    monkeypatch.setenv("MPDIST_MAX_WORLD_SIZE", "3")
    result = pytester.runpytest("-p", "no:cacheprovider", "-rs")
    result.assert_outcomes(passed=3, skipped=1)
    result.stdout.fnmatch_lines(
        ["SKIPPED*world size 4 is over the limit of 3 ranks ($MPDIST_MAX_WORLD_SIZE)"]
    )
    monkeypatch.delenv("MPDIST_MAX_WORLD_SIZE")
    pytester.makeini("[pytest]\nmpdist_max_ranks = 2\n")
    result = pytester.runpytest("-p", "no:cacheprovider", "--max-ranks-error", "-k", "three")
    result.assert_outcomes(failed=2)
    result.stdout.fnmatch_lines(
        ["*CapacityError: world size 3 is over the limit of 2 ranks (ini mpdist_max_ranks)"]
    )
