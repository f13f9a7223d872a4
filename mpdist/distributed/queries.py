"""Questions about groups: ranks, sizes, backends, rank translation, groups by name."""

from __future__ import annotations

import threading
from typing import Any

from mpdist.distributed._checks import _me, _size
from mpdist.distributed._world import (
    _current_world,
    _GroupInfo,
    _info,
    _World,
    _world_or_raise,
)
from mpdist.process_group import (
    ProcessGroup,
)
from mpdist.store import Store


def get_rank(group: ProcessGroup | None = None) -> int:
    """This process's rank in ``group`` (default: the world); -1 if not a member."""
    if group is None:
        return _world_or_raise().rank
    if isinstance(group, int):
        return -1
    return _me(_current_world(), group)


def get_world_size(group: ProcessGroup | None = None) -> int:
    """Number of ranks in ``group`` (default: the world); -1 if not a member."""
    if group is None:
        return _world_or_raise().size
    if isinstance(group, int):
        return -1
    return _size(_current_world(), group)


def _get_default_group() -> ProcessGroup:
    """The default process group (torch's ``c10d._get_default_group``)."""
    pg = _world_or_raise().default_pg
    assert pg is not None
    return pg


def _get_default_store() -> Store:
    """The default group's store (torch's ``c10d._get_default_store``): a view of the
    rendezvous store private to this init, shared by every rank."""
    world = _world_or_raise()
    info = _info(world, _get_default_group())
    assert info is not None and info.store is not None
    return info.store


# torch's process-wide name -> group registry (``_register_process_group`` ...); groups made
# by the module API are found by name in the caller's world without being listed here
_named_lock = threading.Lock()
_named: dict[str, ProcessGroup] = {}


def _register_process_group(group_name: str, group: ProcessGroup) -> None:
    """Make ``group`` findable as ``group_name`` (``RuntimeError`` if the name is taken)."""
    if not isinstance(group_name, str):
        raise TypeError(f"group_name must be a str, got {type(group_name).__name__}")
    if not isinstance(group, ProcessGroup):
        raise TypeError(f"group must be a ProcessGroup, got {type(group).__name__}")
    with _named_lock:
        if group_name in _named:
            raise RuntimeError(f"A process group is already registered under the name {group_name}")
        _named[group_name] = group


def _unregister_process_group(group_name: str) -> None:
    """Forget the group registered as ``group_name`` (nothing happens if there is none)."""
    with _named_lock:
        _named.pop(group_name, None)


def _resolve_process_group(group_name: str) -> ProcessGroup:
    """The group registered as ``group_name``, else the caller's group of that name."""
    with _named_lock:
        pg = _named.get(group_name)
    if pg is not None:
        return pg
    world = _current_world()
    if world is not None:
        for g, info in world.groups.items():
            if info.name == group_name:
                return g
    raise RuntimeError(
        f"Could not resolve the process group registered under the name {group_name}"
    )


def _find_pg_by_ranks_and_tag(tag: str, ranks: list[int]) -> ProcessGroup | None:
    """The caller's group whose members are exactly ``ranks`` (global, any order), or None.

    torch's private name; ``tag`` is accepted and ignored (mpdist groups have no tags). The
    default group wins over a subgroup with the same members.
    """
    world = _current_world()
    if world is None:
        return None
    wanted = sorted(ranks)
    if world.default_pg is not None and wanted == list(range(world.size)):
        return world.default_pg
    for g, info in world.groups.items():
        if sorted(info.ranks) == wanted:
            return g
    return None


def get_backend(group: ProcessGroup | None = None) -> str:
    """The backend name of ``group`` (default: the world)."""
    world = _world_or_raise()
    if group is None:
        return world.backend
    if isinstance(group, int):
        raise ValueError("Invalid process group specified")
    info = _info(world, group)
    return info.backend if info is not None else group.name()


def _registered(group: Any) -> tuple[_World, _GroupInfo]:
    world = _world_or_raise()
    info = None if isinstance(group, int) or group is None else world.groups.get(group)
    if info is None:
        raise ValueError(f"Group {group} is not registered, please create group with new_group")
    return world, info


def get_group_rank(group: ProcessGroup, global_rank: int) -> int:
    """The rank within ``group`` of the process whose global rank is ``global_rank``."""
    _, info = _registered(group)
    try:
        return info.rank_map[global_rank]
    except KeyError:
        raise ValueError(f"Global rank {global_rank} is not part of group {group}") from None


def get_global_rank(group: ProcessGroup, group_rank: int) -> int:
    """The global rank of the process that is rank ``group_rank`` of ``group``."""
    _, info = _registered(group)
    if not isinstance(group_rank, int) or not 0 <= group_rank < len(info.ranks):
        raise ValueError(f"Group rank {group_rank} is not part of group {group}")
    return info.ranks[group_rank]


def get_process_group_ranks(group: ProcessGroup | None) -> list[int]:
    """The global ranks of ``group``'s members, in group-rank order."""
    world = _world_or_raise()
    pg = world.default_pg if group is None else group
    _, info = _registered(pg)
    return list(info.ranks)
