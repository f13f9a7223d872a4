"""Everything of this process that waits on other ranks, in one registry, and an abort that sticks.

A supervisor that gives up on the work in progress (the test harness, when one rank
failed or the deadline passed) calls :func:`abort`: every registered target is
aborted at once (a process group, the store a group is being built on, a TCPStore
still meeting its master), and so is every target registered afterwards, until
:func:`clear`. A group that only starts being built after the abort therefore fails
at its first wait instead of hanging, with no need to abort again later.

The layers register what they build: ``mpdist.store.tcp`` its TCPStores while they
connect, ``mpdist.distributed`` each group's store while the group is built and then
the group. A target is registered with the function that aborts it and a label for
traces; a registration is undone with :func:`unregister`::

    aborts.register(store, store.abort, "group 'default'")
    ...
    aborts.unregister(store)

This module imports nothing of mpdist: every layer may use it.
"""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

__all__ = ["Target", "abort", "clear", "reason", "register", "targets", "unregister"]


@dataclass(frozen=True)
class Target:
    """One registered thing: the object, how to abort it, and how traces name it."""

    obj: Any
    abort: Callable[[str], None]
    label: str


_lock = threading.Lock()
_targets: dict[int, Target] = {}
_reason: str | None = None


def register(obj: Any, abort_fn: Callable[[str], None], label: str) -> None:
    """Register ``obj``; if an abort is in force, ``abort_fn(reason)`` is called at once."""
    with _lock:
        _targets[id(obj)] = Target(obj, abort_fn, label)
        current = _reason
    if current is not None:
        abort_fn(current)


def unregister(obj: Any) -> None:
    """Forget ``obj`` (no error if it was not registered)."""
    with _lock:
        target = _targets.get(id(obj))
        if target is not None and target.obj is obj:
            del _targets[id(obj)]


def abort(why: str) -> None:
    """Abort every registered target, and every one registered until :func:`clear`."""
    if not isinstance(why, str):
        raise TypeError(f"abort reason must be a str, got {type(why).__name__}")
    global _reason
    with _lock:
        _reason = why
        current = list(_targets.values())
    for target in current:
        # one broken target must not keep the others from aborting
        with contextlib.suppress(Exception):
            target.abort(why)


def clear() -> None:
    """End the abort in force: targets registered from now on run normally."""
    global _reason
    with _lock:
        _reason = None


def reason() -> str | None:
    """The reason of the abort in force, or None."""
    return _reason


def targets() -> list[Target]:
    """The registered targets, oldest first."""
    with _lock:
        return list(_targets.values())
