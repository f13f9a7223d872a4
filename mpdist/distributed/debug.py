"""What the test harness asks of the library: abort every group, the last collective entered."""

from __future__ import annotations

import contextlib

from mpdist.distributed._world import _creating, _live, _live_lock
from mpdist.store.rendezvous import abort_pending as _abort_pending_rendezvous


def _abort_all_groups(reason: str) -> None:
    """Abort every live group of this process (any thread): pending collectives raise promptly."""
    with _live_lock:
        groups = [pg for pg, _ in _live.values()]
        building = list(_creating)
    for pg in groups:
        # one broken group must not stop the others from aborting
        with contextlib.suppress(Exception):
            pg._abort(reason)
    for store in building:
        # a group still being built: its store waits and its transport's setup raise
        with contextlib.suppress(Exception):
            store.abort(reason)
    # a rank still meeting its TCPStore master (env:// / tcp://) has no group yet
    with contextlib.suppress(Exception):
        _abort_pending_rendezvous(reason)


def _collective_trace() -> str:
    """The last operation each live group entered, collective or point-to-point, e.g.
    "all_reduce seq=12 on group 'default'" or "recv(src=1, tag=0) on group 'default'"."""
    with _live_lock:
        groups = list(_live.values())
        building = list(_creating.values())
    lines = []
    for pg, label in groups:
        last = pg._trace()
        if last is not None:
            lines.append(f"{last} on group {label!r}")
    # a rank stuck connecting a new group has entered no collective on it yet
    lines.extend(f"building group {label!r} (waiting for its peers)" for label in building)
    return "; ".join(lines) if lines else "no collective entered"
