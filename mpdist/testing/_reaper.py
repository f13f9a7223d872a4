"""Kill a set of rank processes and everything they started: terminate, grace, kill.

Ranks run in their own process group (see ``_worker``), so a grandchild that
was orphaned when its parent died is still found through the group id; psutil
finds the live descendants of every rank before anything is signalled.
"""

from __future__ import annotations

import contextlib
import os
import signal
import time
from collections.abc import Iterable

import psutil


def _tree(pids: Iterable[int]) -> list[psutil.Process]:
    procs: dict[int, psutil.Process] = {}
    for pid in pids:
        try:
            proc = psutil.Process(pid)
            # Children first collected, so a rank dying now does not hide its descendants.
            for child in proc.children(recursive=True):
                procs[child.pid] = child
            procs[proc.pid] = proc
        except psutil.Error:
            continue
    return list(procs.values())


def kill_tree(pids: Iterable[int], pgids: Iterable[int] = (), grace: float = 1.0) -> None:
    """Stop the processes ``pids``, their descendants and the process groups ``pgids``.

    SIGTERM first, then SIGKILL for whatever is still alive after ``grace`` seconds.
    Never raises for processes that are already gone.
    """
    pgids = [g for g in pgids if g > 1 and g != os.getpgrp()]
    procs = _tree(pids)
    for proc in procs:
        with contextlib.suppress(psutil.Error):
            proc.terminate()
    for pgid in pgids:
        with contextlib.suppress(OSError):
            os.killpg(pgid, signal.SIGTERM)
    _, alive = psutil.wait_procs(procs, timeout=grace) if procs else ((), [])
    for proc in alive:
        with contextlib.suppress(psutil.Error):
            proc.kill()
    if alive:
        psutil.wait_procs(alive, timeout=grace)
    sweep_groups(pgids)


def sweep_groups(pgids: Iterable[int], wait: float = 2.0) -> None:
    """SIGKILL whatever is left in the process groups ``pgids`` (orphaned grandchildren).

    Returns once every process of those groups is dead (or ``wait`` seconds passed):
    a signal is delivered asynchronously, and the caller promises that nothing outlives it.
    """
    own = os.getpgrp()
    signalled = set()
    for pgid in pgids:
        if pgid <= 1 or pgid == own:
            continue
        try:
            os.killpg(pgid, signal.SIGKILL)
        except OSError:
            continue  # ESRCH: the group is empty, the common case
        signalled.add(pgid)
    if signalled:
        _wait_groups_dead(signalled, wait)


def _wait_groups_dead(pgids: set[int], wait: float) -> None:
    members = []
    for proc in psutil.process_iter():
        with contextlib.suppress(psutil.Error, OSError):
            if os.getpgid(proc.pid) in pgids:
                members.append(proc)
    deadline = time.monotonic() + wait
    while members and time.monotonic() < deadline:
        still = []
        for proc in members:
            with contextlib.suppress(psutil.Error):
                # A zombie is dead; its (possibly new) parent reaps it.
                if proc.status() != psutil.STATUS_ZOMBIE:
                    still.append(proc)
        members = still
        if members:
            time.sleep(0.005)  # SIGKILL was sent; the kernel finishes it in a moment


def signal_name(exitcode: int | None) -> str:
    """Describe a multiprocessing exit code: ``"exit code 3"`` or ``"signal SIGKILL"``."""
    if exitcode is None:
        return "still running"
    if exitcode < 0:
        try:
            return f"signal {signal.Signals(-exitcode).name}"
        except ValueError:
            return f"signal {-exitcode}"
    return f"exit code {exitcode}"
