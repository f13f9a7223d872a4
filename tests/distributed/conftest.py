"""Process-group tests: a check, after every test, that no rank process or mpdist thread is left."""

from __future__ import annotations

import sys
import threading
from collections.abc import Iterator
from pathlib import Path

import psutil
import pytest

# the reduction reference of the algorithm tests (reduce_reference) serves here too
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "algorithms"))


def _helpers(me: psutil.Process) -> set[int]:
    """The session-long multiprocessing helpers (forkserver, resource tracker) among our children."""
    pids = set()
    for p in me.children(recursive=False):
        try:
            cmd = " ".join(p.cmdline())
        except psutil.Error:
            continue
        if "forkserver" in cmd or "resource_tracker" in cmd:
            pids.add(p.pid)
    return pids


@pytest.fixture(autouse=True)
def nothing_left_behind() -> Iterator[None]:
    """Rank processes (children of the forkserver included) and mpdist threads end with the test."""
    me = psutil.Process()
    before = {p.pid for p in me.children(recursive=True)}
    threads_before = set(threading.enumerate())
    yield
    helpers = _helpers(me)
    leftovers = []
    for p in me.children(recursive=True):
        if p.pid in before or p.pid in helpers:
            continue
        try:
            if p.status() != psutil.STATUS_ZOMBIE:
                leftovers.append((p.pid, p.name()))
        except psutil.NoSuchProcess:  # exited between the listing and the look
            continue
    assert not leftovers, f"processes left behind: {leftovers}"
    leaked = [
        t
        for t in threading.enumerate()
        if t not in threads_before and t.is_alive() and t.name.startswith("mpdist")
    ]
    assert not leaked, f"leaked threads: {leaked}"
