"""Stop a process tree for good: SIGTERM, a grace period, SIGKILL, and wait until it is gone.

A tree is some root processes, every descendant of theirs, and whole process
groups: a rank leads its own group, so a grandchild orphaned when its parent
died is still found (and signalled) through the group id. psutil finds the
descendants before anything is signalled, and again whenever the tree seems
gone, so a process forked meanwhile is not missed. A process found once stays
in the tree after its parent dies (psutil tells a reused pid from it). A group
is signalled with ``killpg``; a member that left its root's group (``setsid``,
``setpgid``) is signalled on its own. Zombies count as gone: their parent (or
init) reaps them; this module reaps nothing, so ``Popen`` and
``multiprocessing`` keep their children's exit codes. Nothing here raises for a
process that is already gone.

Used by the launcher (``mpdist run``) and the test harness (``mpdist.testing``);
imports nothing from mpdist.
"""

from __future__ import annotations

import contextlib
import os
import signal
import time
from collections.abc import Callable, Iterable

import psutil

__all__ = ["KILL_WAIT", "ProcessTree", "kill_tree", "sweep_groups"]

# How long SIGKILLed processes get to disappear (one in uninterruptible sleep takes a while).
KILL_WAIT = 2.0
# Waiting for the tree to go: the first look after this many seconds, then twice as long
# each time, up to _POLL_MAX (descendants send no SIGCHLD, so the tree is polled).
_POLL_FIRST = 0.001
_POLL_MAX = 0.02


def _never() -> bool:
    return False


def _no_roots() -> Iterable[int]:
    return ()


def _live(proc: psutil.Process) -> bool:
    """Whether ``proc`` (not a reused pid) still runs; a zombie is dead."""
    try:
        return proc.is_running() and proc.status() != psutil.STATUS_ZOMBIE
    except psutil.Error:
        return False


def _started(proc: psutil.Process) -> float:
    try:
        return proc.create_time()
    except psutil.Error:
        return float("inf")


def _group_exists(pgid: int) -> bool:
    """Whether process group ``pgid`` has a member (perhaps only zombies)."""
    try:
        os.killpg(pgid, 0)
    except ProcessLookupError:
        return False
    except OSError:
        return True  # EPERM: someone is there
    return True


class ProcessTree:
    """The processes to stop together: ``roots``, their descendants, the process groups ``groups``.

    ``roots`` are pids, looked up once now, or a callable returning the pids to
    start from at every look (the launcher's live children). Groups 0 and 1 and
    the caller's own group are never signalled.
    """

    def __init__(
        self, roots: Iterable[int] | Callable[[], Iterable[int]] = (), groups: Iterable[int] = ()
    ) -> None:
        own = os.getpgrp()
        self.groups = sorted({g for g in groups if g > 1 and g != own})
        self.known: set[psutil.Process] = set()
        self._roots: Callable[[], Iterable[int]] = _no_roots
        if callable(roots):
            self._roots = roots
        else:
            self._add(roots)

    def _add(self, pids: Iterable[int]) -> None:
        me = os.getpid()
        for pid in pids:
            if pid != me:
                with contextlib.suppress(psutil.Error):
                    self.known.add(psutil.Process(pid))

    def _look(self) -> list[psutil.Process]:
        """Find the tree's processes now; return the live ones."""
        self._add(self._roots())
        live_groups = {g for g in self.groups if _group_exists(g)}
        if live_groups:
            # Orphans of a dead root are no one's descendants any more, but still in its group.
            members = []
            for pid in psutil.pids():
                with contextlib.suppress(OSError):
                    if os.getpgid(pid) in live_groups:
                        members.append(pid)
            self._add(members)
        covered: set[psutil.Process] = set()
        # Oldest first: a parent's look covers its descendants, which need none of their own.
        for proc in sorted(self.known, key=_started):
            if proc in covered or not _live(proc):
                continue
            with contextlib.suppress(psutil.Error):
                children = proc.children(recursive=True)
                covered.update(children)
                self.known.update(children)
        return self._live_known()

    def _live_known(self) -> list[psutil.Process]:
        return [p for p in self.known if _live(p)]

    def members(self) -> list[psutil.Process]:
        """The processes of the tree that are alive now."""
        return self._look()

    def signal(self, sig: int) -> None:
        """Send ``sig`` to every group, and to every live process outside those groups."""
        procs = self._look()
        for pgid in self.groups:
            with contextlib.suppress(OSError):
                os.killpg(pgid, sig)
        groups = set(self.groups)
        for proc in procs:
            with contextlib.suppress(psutil.Error, OSError):
                if os.getpgid(proc.pid) not in groups:
                    proc.send_signal(sig)

    def wait_gone(
        self,
        seconds: float,
        *,
        pause: Callable[[float], object] = time.sleep,
        cut_short: Callable[[], bool] = _never,
    ) -> bool:
        """Wait until no process of the tree is alive; False after ``seconds`` or once
        ``cut_short()`` is true. ``pause(s)`` passes the time between looks (at most ``s``)."""
        deadline = time.monotonic() + seconds
        delay = _POLL_FIRST
        while True:
            # Cheap looks at the processes known; a full one before saying they are gone.
            if not self._live_known() and not self._look():
                return True
            left = deadline - time.monotonic()
            if left <= 0 or cut_short():
                return False
            pause(min(left, delay))
            delay = min(delay * 2, _POLL_MAX)

    def stop(
        self,
        grace: float,
        kill_wait: float = KILL_WAIT,
        *,
        pause: Callable[[float], object] = time.sleep,
        cut_short: Callable[[], bool] = _never,
    ) -> list[psutil.Process]:
        """SIGTERM, up to ``grace`` seconds to exit (less once ``cut_short()``), SIGKILL,
        up to ``kill_wait`` seconds to disappear. Returns the processes still alive then."""
        self.signal(signal.SIGTERM)
        if self.wait_gone(grace, pause=pause, cut_short=cut_short):
            return []
        self.signal(signal.SIGKILL)
        if self.wait_gone(kill_wait, pause=pause):
            return []
        return self.members()


def kill_tree(
    pids: Iterable[int], pgids: Iterable[int] = (), grace: float = 1.0, kill_wait: float = KILL_WAIT
) -> None:
    """Stop the processes ``pids``, their descendants and the process groups ``pgids``.

    SIGTERM first, then SIGKILL for whatever is still alive after ``grace`` seconds;
    returns once everything is dead (or ``kill_wait`` more seconds passed).
    """
    ProcessTree(pids, pgids).stop(grace, kill_wait)


def sweep_groups(pgids: Iterable[int], wait: float = KILL_WAIT) -> None:
    """SIGKILL whatever is left in the process groups ``pgids`` (orphaned grandchildren).

    Returns once every process of those groups is dead (or ``wait`` seconds passed):
    a signal is delivered asynchronously, and the caller promises that nothing outlives it.
    """
    tree = ProcessTree(groups=pgids)
    tree.signal(signal.SIGKILL)
    tree.wait_gone(wait)
