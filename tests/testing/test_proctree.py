"""The process-tree killer shared by the launcher and the harness (mpdist._proctree)."""

from __future__ import annotations

import signal
import subprocess
import sys
import time

from _harness_helpers import alive

from mpdist import _proctree

# A child that ignores SIGTERM, starts a grandchild in its own session (out of the
# child's process group) and one in the child's group, prints both pids, then sleeps.
_FAMILY = """
import os, signal, subprocess, sys, time
signal.signal(signal.SIGTERM, signal.SIG_IGN)
sleep = [sys.executable, "-c", "import time; time.sleep(600)"]
away = subprocess.Popen(sleep, start_new_session=True)
near = subprocess.Popen(sleep)
print(away.pid, near.pid, flush=True)
time.sleep(600)
"""


def _family() -> tuple[subprocess.Popen, list[int]]:
    root = subprocess.Popen(
        [sys.executable, "-c", _FAMILY],
        stdout=subprocess.PIPE,
        start_new_session=True,  # its own process group, as a rank has
        text=True,
    )
    assert root.stdout is not None
    pids = [int(p) for p in root.stdout.readline().split()]
    root.stdout.close()
    return root, pids


def test_stop_kills_what_ignores_sigterm_and_what_left_the_group() -> None:
    root, (away, near) = _family()
    try:
        started = time.monotonic()
        left = _proctree.ProcessTree([root.pid], [root.pid]).stop(grace=0.3)
        assert left == []
        assert time.monotonic() - started >= 0.3  # the root ignored SIGTERM: the grace ran out
        assert not alive([root.pid, away, near])
        # Nothing was reaped behind the owner's back: Popen still gets the exit status.
        assert root.wait(5) == -signal.SIGKILL
    finally:
        _proctree.kill_tree([root.pid, away, near], grace=0)
        root.wait(5)


def test_an_orphan_is_still_found_through_its_group() -> None:
    root, (away, near) = _family()
    try:
        root.kill()
        root.wait(5)
        # The root is gone and reaped: its orphans are reachable only through the group
        # (near) or not at all (away, which left it; it is stopped by hand below).
        tree = _proctree.ProcessTree([], [root.pid])
        assert [p.pid for p in tree.members()] == [near]
        assert tree.stop(grace=1.0) == []
        assert not alive([near])
    finally:
        _proctree.kill_tree([away, near], grace=0)


def test_cut_short_ends_the_grace_period() -> None:
    root, (away, near) = _family()
    try:
        started = time.monotonic()
        left = _proctree.ProcessTree([root.pid], [root.pid]).stop(grace=600, cut_short=lambda: True)
        assert left == []
        assert time.monotonic() - started < 60
        assert not alive([root.pid, away, near])
    finally:
        _proctree.kill_tree([root.pid, away, near], grace=0)
        root.wait(5)


def test_an_empty_tree_is_stopped_at_once() -> None:
    done = subprocess.Popen(["true"], start_new_session=True)
    done.wait()
    started = time.monotonic()
    _proctree.kill_tree([], [done.pid], grace=5.0)
    _proctree.sweep_groups([done.pid])
    assert time.monotonic() - started < 1.0
