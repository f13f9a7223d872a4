"""multiprocessing's private forkserver names the harness needs, each behind a small function with a fallback.

The harness restarts an idle forkserver so that it preloads a heavy package, and
starts one early while pytest collects (see ``_preload``). multiprocessing has no
public way to ask whether its forkserver runs or to stop it. Each name (CPython
3.10-3.13), why, and what happens without it:

- ``multiprocessing.forkserver._forkserver``: the process's one ``ForkServer``, which
  every forkserver context starts ranks through.
- ``ForkServer._forkserver_pid``: the running server's pid (None before the first
  start). Without it the harness cannot tell whether a server runs: it neither
  restarts one nor starts one early. The preload list is still set (public
  ``set_forkserver_preload``) and applies whenever multiprocessing starts a server.
- ``ForkServer._stop()`` (what CPython's own tests stop it with): closes the alive
  pipe, reaps the server, removes its socket. Without it a running server is never
  restarted: ranks import the heavy packages it lacks themselves, at every start.
- ``ForkServer._forkserver_address``: cleared with the pid when ``_stop()`` failed
  half-way, so that the next start launches a new server.
- ``multiprocessing.forkserver.ensure_running()`` (public name, undocumented): starts
  the server now rather than at the first rank.

The forkserver module exists only where the start method does: it is imported on
first use.
"""

from __future__ import annotations

import contextlib
import os
import signal
from typing import Any

__all__ = ["server_pid", "server_visible", "start_server", "stop_server"]


def _server() -> Any:
    import multiprocessing.forkserver

    return getattr(multiprocessing.forkserver, "_forkserver", None)


def server_visible() -> bool:
    """Whether this multiprocessing lets the harness see its forkserver's pid."""
    return hasattr(_server(), "_forkserver_pid")


def server_pid() -> int | None:
    """The pid multiprocessing has for its forkserver (None: none started, or not visible)."""
    pid = getattr(_server(), "_forkserver_pid", None)
    return pid if isinstance(pid, int) else None


def start_server() -> None:
    """Start the forkserver now (with the preload list set last), unless it runs."""
    import multiprocessing.forkserver

    multiprocessing.forkserver.ensure_running()


def stop_server(pid: int) -> bool:
    """Stop and reap the forkserver ``pid`` (the next start launches a new one); False if it can't."""
    server = _server()
    if not hasattr(server, "_stop"):
        return False
    # SIGTERM first: stopping by closing the "alive" pipe alone would wait for every
    # holder of its other end, and a stray descendant of an old rank could be one.
    with contextlib.suppress(OSError):
        os.kill(pid, signal.SIGTERM)
    try:
        server._stop()  # closes our end of the alive pipe, reaps it, removes its socket
    except (ChildProcessError, OSError):
        server._forkserver_pid = None
        server._forkserver_address = None
    return True
