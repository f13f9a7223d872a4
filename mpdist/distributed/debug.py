"""What a test harness asks of the library: abort everything (sticky), the last operations entered, killed ranks' leftovers.

The documented internal interface of the harness (``mpdist.testing``) to the library;
the registry and the sticky abort themselves are :mod:`mpdist.aborts`.
"""

from __future__ import annotations

from mpdist import aborts
from mpdist.backends.group_store import GroupStore
from mpdist.process_group import ProcessGroup
from mpdist.transport import shm

__all__ = ["abort_all_groups", "clear_abort", "collective_trace", "remove_stale_files"]


def abort_all_groups(reason: str) -> None:
    """Abort everything of this process that waits on other ranks, until :func:`clear_abort`.

    Live groups' pending and later operations raise promptly with ``reason``; a group
    still being built, or built later, and a rank still meeting its TCPStore master
    (env:// / tcp://), fail at their first wait. Safe from any thread.
    """
    aborts.abort(reason)


def clear_abort() -> None:
    """End the abort in force (a reused rank process, before its next test)."""
    aborts.clear()


def remove_stale_files() -> None:
    """Remove the files of this host that ranks killed before they closed their groups left
    (shared-memory rings a rank makes for its peers while its mesh connects); a harness
    calls it once its ranks are gone. Files of live processes are kept."""
    directory = shm.shm_dir()
    if directory is not None:
        shm.sweep_stale_rings(directory)


def collective_trace() -> str:
    """The last operation each live group entered, collective or point-to-point, e.g.
    "all_reduce seq=12 on group 'default'" or "recv(src=1, tag=0) on group 'default'"."""
    lines, building = [], []
    for target in aborts.targets():
        if isinstance(target.obj, ProcessGroup):
            last = target.obj.last_operation()
            if last is not None:
                lines.append(f"{last} on group {target.label!r}")
        elif isinstance(target.obj, GroupStore):
            building.append(target.label)
    # a rank stuck connecting a new group has entered no collective on it yet
    lines.extend(f"building group {label!r} (waiting for its peers)" for label in building)
    return "; ".join(lines) if lines else "no collective entered"
