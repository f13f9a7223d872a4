"""The state of the module API: worlds (the default group and its groups), the registries."""

from __future__ import annotations

import threading
from datetime import timedelta
from typing import Any

from mpdist.process_group import (
    DEFAULT_TIMEOUT,
    ProcessGroup,
)
from mpdist.store import Store

_UNINIT = (
    "Default process group has not been initialized, please make sure to call init_process_group."
)


class _GroupInfo:
    """What the module API knows about a group: its global ranks and name."""

    __slots__ = ("backend", "label", "name", "rank_map", "ranks", "store", "timeout")

    def __init__(
        self,
        ranks: list[int],
        name: str,
        label: str,
        backend: str,
        timeout: timedelta,
        store: Store | None = None,
    ) -> None:
        self.store = store
        self.ranks = ranks
        self.rank_map = {g: i for i, g in enumerate(ranks)}
        self.name = name
        self.label = label
        self.backend = backend
        self.timeout = timeout


class _World:
    """The default group and every group created after it, for one process (or rank thread)."""

    def __init__(self) -> None:
        self.default_pg: ProcessGroup | None = None
        self.rank = -1
        self.size = -1
        self.backend = ""
        self.timeout = DEFAULT_TIMEOUT
        self.store: Store | None = None
        self.owns_store = False
        self.prefix = ""
        self.group_count = 0
        self.pg_options: Any = None
        self.groups: dict[ProcessGroup, _GroupInfo] = {}
        self.thread_local = False


process_world: _World | None = None


class _ThreadWorld(threading.local):
    """The world of the calling rank thread (the threaded backend), with the defaults a
    thread starts with: attributes found on the class, where a missing one would cost a
    raised and caught AttributeError (about 1 us) on every collective."""

    world: _World | None = None
    reserved: bool = False


_tls = _ThreadWorld()
_init_lock = threading.Lock()
# An init in progress holds its slot (the process-wide one, or ``_tls.reserved`` for a rank
# thread of the threaded backend) from its check on, so a second caller fails at once
# instead of both building a group; the lock is never held across the build itself.
process_reserved = False


def _current_world() -> _World | None:
    w = _tls.world
    return w if w is not None else process_world


def _world_or_raise() -> _World:
    w = _tls.world
    if w is None:
        w = process_world
        if w is None:
            raise ValueError(_UNINIT)
    return w


def _info(world: _World | None, pg: ProcessGroup) -> _GroupInfo | None:
    return None if world is None else world.groups.get(pg)


class _WorldMeta(type):
    """Makes ``group.WORLD`` / ``GroupMember.WORLD`` the current default group."""

    @property
    def WORLD(cls) -> ProcessGroup | None:  # noqa: N802 (torch's name)
        w = _current_world()
        return None if w is None else w.default_pg


class GroupMember(metaclass=_WorldMeta):
    """``GroupMember.WORLD`` is the default group; ``NON_GROUP_MEMBER`` what non-members get."""

    NON_GROUP_MEMBER = -100


class group(metaclass=_WorldMeta):  # noqa: N801 (torch's name)
    """``group.WORLD``: the default process group."""


def is_available() -> bool:
    """mpdist's distributed package is always available."""
    return True


def is_initialized() -> bool:
    """True once ``init_process_group`` ran (in this process, or this rank thread)."""
    w = _current_world()
    return w is not None and w.default_pg is not None
