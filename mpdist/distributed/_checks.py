"""Argument checks shared by the collectives: groups, ranks, array lists, reduce ops."""

from __future__ import annotations

import warnings
from datetime import timedelta
from typing import Any

import numpy as np

from mpdist.algorithms.reduction import ReduceOp, check_op_dtype
from mpdist.backends.builtin import checked_list
from mpdist.distributed import _world as state
from mpdist.distributed._world import (
    _UNINIT,
    GroupMember,
    _current_world,
    _info,
    _tls,
    _World,
)
from mpdist.process_group import (
    DEFAULT_TIMEOUT,
    ProcessGroup,
    Work,
)
from mpdist.timeouts import FOREVER_S, seconds


def _is_int(x: Any) -> bool:
    """A Python or numpy integer, not a bool (ranks, tags and splits may come from numpy)."""
    return isinstance(x, (int, np.integer)) and not isinstance(x, bool)


def _check_timeout(timeout: Any) -> timedelta:
    """A group's timeout by mpdist.timeouts' rule: None is the group default, 0 is forever
    (a timedelta past every deadline), negative is a ValueError."""
    if timeout is None:
        return DEFAULT_TIMEOUT
    if not isinstance(timeout, timedelta):
        raise TypeError(
            "Expected timeout argument to be of type datetime.timedelta, "
            f"got {type(timeout).__name__}"
        )
    if seconds(timeout) is None:
        return timedelta(seconds=FOREVER_S)
    return timeout


def _resolve(group: Any, op: str) -> tuple[_World | None, ProcessGroup | None]:
    """(world, group) for a collective; group None means "not a member: skip"."""
    if group is None:
        w = _tls.world or state.process_world  # _world_or_raise, inlined
        if w is None:
            raise ValueError(_UNINIT)
        return w, w.default_pg
    if isinstance(group, int):
        if group == GroupMember.NON_GROUP_MEMBER:
            cur = _current_world()
            me = cur.rank if cur is not None else -1
            warnings.warn(
                f"Running {op} on global rank {me} which does not belong to the given group.",
                stacklevel=3,
            )
            return cur, None
        raise TypeError(f"{op}: group must be a ProcessGroup, got {group!r}")
    if not isinstance(group, ProcessGroup):
        raise TypeError(f"{op}: group must be a ProcessGroup, got {type(group).__name__}")
    return _current_world(), group


def _group_rank(world: _World | None, pg: ProcessGroup, rank: Any, what: str, op: str) -> int:
    """Global ``rank`` -> rank in ``pg``; ValueError if it is not a member."""
    if type(rank) is not int:
        if not _is_int(rank):
            raise TypeError(f"{op}: {what} must be an int (a global rank), got {rank!r}")
        rank = int(rank)
    if world is None or (info := world.groups.get(pg)) is None:
        # a group the module API did not create: its ranks are the global ones
        if not 0 <= rank < _size(world, pg):
            raise ValueError(
                f"{op}: invalid {what} rank {rank}; the group has {_size(world, pg)} ranks"
            )
        return rank
    r = info.rank_map.get(rank)
    if r is None:
        if pg is world.default_pg:
            raise ValueError(
                f"{op}: invalid {what} rank {rank}; the world has ranks 0..{len(info.ranks) - 1}"
            )
        raise ValueError(f"{op}: Global rank {rank} is not part of group {pg}")
    return r


def _me(world: _World | None, pg: ProcessGroup) -> int:
    """This process's rank in ``pg`` as the module API knows it (a subclass may lie in getRank)."""
    if world is None or (info := world.groups.get(pg)) is None:
        return pg.rank()
    return info.rank_map[world.rank]


def _size(world: _World | None, pg: ProcessGroup) -> int:
    info = _info(world, pg)
    return pg.size() if info is None else len(info.ranks)


def _global_rank(world: _World | None, pg: ProcessGroup, group_rank: int) -> int:
    info = _info(world, pg)
    return group_rank if info is None else info.ranks[group_rank]


def _array_list(
    xs: Any, op: str, what: str, n: int, out: bool, like: tuple[np.ndarray, str] | None = None
) -> list[np.ndarray]:
    """The ndarrays of a list argument of one entry per rank, each checked by ``_array``;
    with ``like=(ref, ref_what)`` each must also have ``ref``'s shape and dtype."""
    if not isinstance(xs, (list, tuple)):
        raise TypeError(f"{op}: {what} must be a list of arrays, got {type(xs).__name__}")
    if len(xs) != n:
        raise ValueError(f"{op}: {what} has {len(xs)} entries, but the group has {n} ranks")
    if like is not None:
        # the common case (ndarrays alike and contiguous) with the fewest operations: a
        # small all_gather's whole call costs a few microseconds
        ref = like[0]
        dtype, shape = ref.dtype, ref.shape
        for x in xs:
            if (
                type(x) is not np.ndarray
                or x.shape != shape
                or (x.dtype is not dtype and x.dtype != dtype)
                or not (x.flags.carray if out else x.flags.c_contiguous)
            ):
                break
        else:
            return list(xs)
    arrays = checked_list(xs, op, what, out)
    if like is not None:
        ref = like[0]
        for i, a in enumerate(arrays):
            if a.dtype != ref.dtype or a.shape != ref.shape:  # named only when wrong
                _same(a, ref, op, f"{what}[{i}]", like[1])
    return arrays


def _root_only(xs: Any, is_root: bool, what: str, root: str) -> None:
    """A list argument that the root (the ``root`` rank: "source" / "destination") must
    pass and every other rank must not."""
    if is_root:
        if not xs:
            raise ValueError(f"Argument ``{what}`` must be specified on {root} rank.")
    elif xs:
        raise ValueError(f"Argument ``{what}`` must NOT be specified on non-{root} ranks.")


def _same(a: np.ndarray, ref: np.ndarray, op: str, what: str, ref_what: str) -> None:
    if a.dtype != ref.dtype:
        raise TypeError(f"{op}: {what} has dtype {a.dtype} but {ref_what} has dtype {ref.dtype}")
    if a.shape != ref.shape:
        raise ValueError(f"{op}: {what} has shape {a.shape} but {ref_what} has shape {ref.shape}")


# dtype -> the ReduceOps valid on it; filled as dtypes are first checked (the fast path)
_valid_ops: dict[np.dtype, tuple[ReduceOp, ...]] = {}


def _check_op(op: Any, dtype: np.dtype, name: str) -> None:
    ops = _valid_ops.get(dtype)
    if ops is not None and op in ops:  # tuple membership tests identity first: cheap
        return
    if not isinstance(op, ReduceOp):
        raise TypeError(f"{name}: op must be a ReduceOp, got {op!r}")
    check_op_dtype(op, dtype)
    if ops is None:
        valid = []
        for o in ReduceOp:
            try:
                check_op_dtype(o, dtype)
            except ValueError:
                continue
            valid.append(o)
        _valid_ops[dtype] = tuple(valid)


def _finish(work: Any, world: _World | None, pg: ProcessGroup, async_op: bool) -> Work | None:
    """What a collective returns: the group's Work if ``async_op``, else None once done.

    A group that ran a blocking call in the calling thread returned None or a completed
    Work; otherwise a blocking call waits with ``work.wait(timeout)``, the timeout
    positional (what a Python ``Work`` subclass overrides).
    """
    if async_op:
        return work
    if work is not None:
        info = _info(world, pg)
        work.wait(info.timeout if info is not None else DEFAULT_TIMEOUT)
    return None
