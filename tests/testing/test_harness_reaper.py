"""The reaper: when sweep_groups returns, the orphans of a rank's process group are dead."""

from __future__ import annotations

import subprocess

from _harness_helpers import alive

from mpdist import _proctree


def test_sweep_returns_only_once_the_orphans_are_dead() -> None:
    # A SIGKILL is delivered asynchronously: before the fix about half of these orphans
    # were still running when sweep_groups returned (seen as a flake of the abort test,
    # whose grandchild "outlived the test").
    for _ in range(10):
        leader = subprocess.Popen(
            ["sh", "-c", "sleep 60 & echo $!"],
            stdout=subprocess.PIPE,
            start_new_session=True,  # its own process group, as a rank has
            text=True,
        )
        assert leader.stdout is not None
        orphan = int(leader.stdout.readline())
        leader.wait()
        leader.stdout.close()
        _proctree.sweep_groups([leader.pid])
        assert not alive([orphan])
