"""The module-level API (``torch.distributed`` on numpy arrays): setup, groups, collectives.

This is the only module that knows "the default group". Every function takes global
ranks, checks its arguments locally (``TypeError`` / ``ValueError`` before anything is
sent), translates ranks to group ranks and calls the group's torch-style method with
an options object (``pg.allreduce([t], opts) -> Work``), for mpdist's own groups and
Python subclasses alike. ``opts.asyncOp`` (point-to-point: ``caller_blocks()``) tells
the group whether the caller waits at once, so mpdist's groups run blocking calls in
the calling thread.

The default group and the groups made by ``new_group`` form a "world". A process has
one world, except under the ``threaded`` backend, where each rank thread has its own
(thread-local) world.
"""

from __future__ import annotations

import contextlib
import functools
import pickle
import threading
import warnings
from collections.abc import Sequence
from datetime import timedelta
from typing import Any

import numpy as np

from mpdist import backends as _backends  # noqa: F401  (registers the built-in backends)
from mpdist.algorithms.reduction import ReduceOp, check_op_dtype
from mpdist.backends.fake import FakeStore
from mpdist.backends.group_store import GroupStore
from mpdist.backends.native import checked_array, checked_list
from mpdist.process_group import (
    DEFAULT_TIMEOUT,
    AllgatherOptions,
    AllreduceOptions,
    AllToAllOptions,
    Backend,
    BarrierOptions,
    BroadcastOptions,
    GatherOptions,
    ProcessGroup,
    ReduceOptions,
    ReduceScatterOptions,
    ScatterOptions,
    Work,
    _DistributedBackendOptions,
    set_caller_blocks,
)
from mpdist.store import Store
from mpdist.store.rendezvous import abort_pending as _abort_pending_rendezvous
from mpdist.store.rendezvous import rendezvous

__all__ = [
    "GroupMember",
    "P2POp",
    "batch_isend_irecv",
    "all_gather",
    "all_gather_into_tensor",
    "all_gather_object",
    "all_reduce",
    "all_to_all",
    "all_to_all_single",
    "barrier",
    "broadcast",
    "broadcast_object_list",
    "destroy_process_group",
    "gather",
    "gather_object",
    "get_backend",
    "get_global_rank",
    "get_group_rank",
    "get_process_group_ranks",
    "get_rank",
    "get_world_size",
    "group",
    "init_process_group",
    "irecv",
    "is_available",
    "is_initialized",
    "isend",
    "monitored_barrier",
    "new_group",
    "recv",
    "recv_object_list",
    "reduce",
    "reduce_scatter",
    "reduce_scatter_tensor",
    "scatter",
    "scatter_object_list",
    "send",
    "send_object_list",
]

_UNINIT = (
    "Default process group has not been initialized, please make sure to call init_process_group."
)

# ---------------------------------------------------------------------- worlds


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


_process_world: _World | None = None
_tls = threading.local()
_init_lock = threading.Lock()
# An init in progress holds its slot (the process-wide one, or ``_tls.reserved`` for a rank
# thread of the threaded backend) from its check on, so a second caller fails at once
# instead of both building a group; the lock is never held across the build itself.
_process_reserved = False

# every live built-in group of this process, across worlds (for the harness hooks)
_live_lock = threading.Lock()
_live: dict[int, tuple[ProcessGroup, str]] = {}
# groups being built (any backend), store -> label: the same hook aborts them, the trace names them
_creating: dict[GroupStore, str] = {}


def _current_world() -> _World | None:
    w = getattr(_tls, "world", None)
    return w if w is not None else _process_world


def _world_or_raise() -> _World:
    w = getattr(_tls, "world", None)
    if w is None:
        w = _process_world
        if w is None:
            raise ValueError(_UNINIT)
    return w


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


# ---------------------------------------------------------------------- setup


def _is_int(x: Any) -> bool:
    """A Python or numpy integer, not a bool (ranks, tags and splits may come from numpy)."""
    return isinstance(x, (int, np.integer)) and not isinstance(x, bool)


def _check_timeout(timeout: Any) -> timedelta:
    if timeout is None:
        return DEFAULT_TIMEOUT
    if not isinstance(timeout, timedelta):
        raise TypeError(
            "Expected timeout argument to be of type datetime.timedelta, "
            f"got {type(timeout).__name__}"
        )
    return timeout


def _make_group(
    world: _World,
    backend: str,
    store: GroupStore,
    group_rank: int,
    ranks: list[int],
    timeout: timedelta,
    name: str,
    label: str,
    pg_options: Any,
) -> ProcessGroup:
    creator, extended = Backend._creator(backend)
    # Registered for abort while it is built: a rank waiting for peers that never come
    # (in the store, or for their connections) is stopped by ``_abort_all_groups``.
    with _live_lock:
        _creating[store] = label
    pg: Any = None
    try:
        if extended:
            opts = _DistributedBackendOptions(store, group_rank, len(ranks), timeout, name, ranks)
            pg = creator(opts, pg_options)
        else:
            pg = creator(store, group_rank, len(ranks), timeout)
        if not isinstance(pg, ProcessGroup):
            raise TypeError(
                f"backend {backend!r} creator returned {type(pg).__name__}, not a ProcessGroup"
            )
        # a Python subclass's setGroupName / setGroupDesc may raise: still inside the try,
        # so a failed build leaves nothing registered and no group running
        pg._set_group_name(name)
        if label == "default":
            pg._set_group_desc("default_pg")
    except BaseException:
        with _live_lock:
            _creating.pop(store, None)
        if isinstance(pg, ProcessGroup):
            with contextlib.suppress(Exception):
                pg.shutdown()
        raise
    if getattr(pg, "_mpdist_thread_local", False):
        world.thread_local = True
    pg.set_global_ranks(ranks)
    if world.thread_local:
        # the group's worker thread runs future callbacks: they see the rank's world
        pg.run_on_own_threads(functools.partial(setattr, _tls, "world", world))
    with _live_lock:
        # one step, so that an abort sees either the store being built on or the group
        _creating.pop(store, None)
        _live[id(pg)] = (pg, label)
    world.groups[pg] = _GroupInfo(list(ranks), name, label, backend, timeout, store)
    return pg


def init_process_group(
    backend: str | None = None,
    init_method: str | None = None,
    timeout: timedelta | None = None,
    world_size: int = -1,
    rank: int = -1,
    store: Store | None = None,
    group_name: str = "",
    pg_options: Any = None,
    device_id: Any = None,
) -> None:
    """Create the default process group.

    Either ``store`` (with ``rank`` and ``world_size``) or ``init_method`` (``env://``,
    ``file:///path?rank=&world_size=``, ``tcp://host:port?rank=&world_size=``); with
    neither, ``env://``. ``backend`` is ``"tcp"`` (default; alias ``"gloo"``),
    ``"threaded"``, ``"fake"`` or a name registered with ``Backend.register_backend``.
    """
    global _process_world
    timeout = _check_timeout(timeout)
    name = Backend(backend if backend is not None else "tcp")
    if store is not None and init_method is not None:
        raise ValueError("Cannot specify both init_method and store.")
    for what, value in (("rank", rank), ("world_size", world_size)):
        if not isinstance(value, int) or isinstance(value, bool):
            raise TypeError(f"{what} must be an int, got {type(value).__name__}")
    if store is not None and not isinstance(store, Store):
        raise TypeError(f"store must be an mpdist Store, got {type(store).__name__}")
    thread_local = name == Backend.THREADED
    _reserve_default(thread_local)
    try:
        world = _build_default_world(
            name, init_method, timeout, world_size, rank, store, group_name, pg_options
        )
    except BaseException:
        _release_default(thread_local)
        raise
    with _init_lock:
        _release_default_locked(thread_local)
        if world.thread_local:
            _tls.world = world
        else:
            _process_world = world


def _reserve_default(thread_local: bool) -> None:
    """Claim the default-group slot of this process (threaded: of this thread), or raise."""
    global _process_reserved
    with _init_lock:
        # a rank thread of the threaded backend only needs its own slot free (the
        # process-wide one may be in use); any other init needs both
        taken = getattr(_tls, "world", None) is not None or getattr(_tls, "reserved", False)
        if not thread_local:
            taken = taken or _process_world is not None or _process_reserved
        if taken:
            raise ValueError("trying to initialize the default process group twice!")
        if thread_local:
            _tls.reserved = True
        else:
            _process_reserved = True


def _release_default_locked(thread_local: bool) -> None:
    global _process_reserved
    if thread_local:
        _tls.reserved = False
    else:
        _process_reserved = False


def _release_default(thread_local: bool) -> None:
    """Give the slot claimed by ``_reserve_default`` back (the build failed)."""
    with _init_lock:
        _release_default_locked(thread_local)


def _build_default_world(
    name: Backend,
    init_method: str | None,
    timeout: timedelta,
    world_size: int,
    rank: int,
    store: Store | None,
    group_name: str,
    pg_options: Any,
) -> _World:
    """Rendezvous and build the default group (slow: the caller holds the slot, not a lock)."""
    thread_local = name == Backend.THREADED
    owns_store = False
    if store is None and (name == Backend.FAKE or name == Backend.THREADED):
        if name == Backend.THREADED:
            raise ValueError(
                "the threaded backend needs store=: one HashStore shared by every rank thread"
            )
        store = FakeStore()
    if store is not None:
        if world_size <= 0:
            raise ValueError("world_size must be positive if using store")
        if rank < 0:
            raise ValueError("rank must be non-negative if using store")
        if rank >= world_size:
            raise ValueError(f"rank {rank} is out of range for world_size {world_size}")
    else:
        store, rank, world_size = rendezvous(init_method, rank, world_size, timeout)
        owns_store = True

    world = _World()
    world.thread_local = thread_local
    world.rank, world.size, world.backend, world.timeout = rank, world_size, str(name), timeout
    world.store, world.owns_store, world.pg_options = store, owns_store, pg_options
    try:
        # Each init on a store gets fresh keys: ranks count their own inits on it, and
        # every rank goes through the same init/destroy sequence, so the counts agree.
        generation = store.add(f"mpdist/init/{rank}", 1)
        world.prefix = f"mpdist/{generation}"
        pg_name = group_name or "0"
        pg = _make_group(
            world,
            str(name),
            GroupStore(f"{world.prefix}/0", store),
            rank,
            list(range(world_size)),
            timeout,
            pg_name,
            "default",
            pg_options,
        )
    except BaseException:
        if owns_store:
            store.close()
        raise
    world.default_pg = pg
    return world


def _shutdown(world: _World, pg: ProcessGroup) -> None:
    info = world.groups.pop(pg, None)
    pg.run_on_own_threads(None)  # it references the world: break the cycle
    with _live_lock:
        _live.pop(id(pg), None)
    if info is not None:
        pg.shutdown()


def destroy_process_group(group: ProcessGroup | None = None) -> None:
    """Destroy ``group``; with no argument every group: threads and sockets closed.

    Afterwards ``init_process_group`` may be called again.
    """
    global _process_world
    world = _world_or_raise()
    if group is None or group is world.default_pg:
        # subgroups first, the default group (whose store they share) last
        for pg in [p for p in world.groups if p is not world.default_pg]:
            _shutdown(world, pg)
        if world.default_pg is not None:
            _shutdown(world, world.default_pg)
        world.default_pg = None
        if world.owns_store and world.store is not None:
            world.store.close()
        world.store = None
        with _init_lock:
            if getattr(_tls, "world", None) is world:
                _tls.world = None
            elif _process_world is world:
                _process_world = None
        return
    if isinstance(group, int):  # NON_GROUP_MEMBER: nothing of ours to tear down
        return
    if group not in world.groups:
        raise ValueError(f"Invalid process group specified: {group!r}")
    _shutdown(world, group)


def new_group(
    ranks: Sequence[int] | None = None,
    timeout: timedelta | None = None,
    backend: str | None = None,
    pg_options: Any = None,
    use_local_synchronization: bool = False,
    group_desc: str | None = None,
) -> ProcessGroup | int:
    """A group of ``ranks`` (global, any order; all ranks when None).

    Every rank of the world calls it, in the same order. A rank outside ``ranks`` gets
    ``GroupMember.NON_GROUP_MEMBER``.
    """
    world = _world_or_raise()
    if ranks is None:
        ranks = list(range(world.size))
    if isinstance(ranks, (str, bytes)) or not isinstance(ranks, Sequence):
        raise TypeError(f"new_group: ranks must be a list of int, got {type(ranks).__name__}")
    members: list[int] = []
    for r in ranks:
        if not _is_int(r):
            raise TypeError(f"new_group: ranks must be ints, got {r!r}")
        if not 0 <= r < world.size:
            raise ValueError(
                f"new_group: rank {r} is out of range; the world has ranks 0..{world.size - 1}"
            )
        members.append(int(r))
    if len(set(members)) != len(members):
        raise ValueError(f"new_group: ranks {list(ranks)} contain duplicates")
    members.sort()
    timeout = world.timeout if timeout is None else _check_timeout(timeout)
    name = str(Backend(backend)) if backend is not None else world.backend
    world.group_count += 1
    group_name = str(world.group_count)
    if world.rank not in members:
        return GroupMember.NON_GROUP_MEMBER
    assert world.store is not None
    pg = _make_group(
        world,
        name,
        GroupStore(f"{world.prefix}/{group_name}", world.store),
        members.index(world.rank),
        members,
        timeout,
        group_name,
        group_name,
        pg_options if pg_options is not None else world.pg_options,
    )
    if group_desc is not None:
        pg._set_group_desc(group_desc)
    return pg


# ---------------------------------------------------------------------- group queries


def _info(world: _World | None, pg: ProcessGroup) -> _GroupInfo | None:
    return None if world is None else world.groups.get(pg)


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


# ---------------------------------------------------------------------- argument checks


def _resolve(group: Any, op: str) -> tuple[_World | None, ProcessGroup | None]:
    """(world, group) for a collective; group None means "not a member: skip"."""
    if group is None:
        w = _world_or_raise()
        return w, w.default_pg
    if isinstance(group, int):
        if group == GroupMember.NON_GROUP_MEMBER:
            w = _current_world()
            me = w.rank if w is not None else -1
            warnings.warn(
                f"Running {op} on global rank {me} which does not belong to the given group.",
                stacklevel=3,
            )
            return w, None
        raise TypeError(f"{op}: group must be a ProcessGroup, got {group!r}")
    if not isinstance(group, ProcessGroup):
        raise TypeError(f"{op}: group must be a ProcessGroup, got {type(group).__name__}")
    return _current_world(), group


def _group_rank(world: _World | None, pg: ProcessGroup, rank: Any, what: str, op: str) -> int:
    """Global ``rank`` -> rank in ``pg``; ValueError if it is not a member."""
    if not _is_int(rank):
        raise TypeError(f"{op}: {what} must be an int (a global rank), got {rank!r}")
    info = _info(world, pg)
    if info is None:  # a group the module API did not create: its ranks are the global ones
        if not 0 <= rank < _size(world, pg):
            raise ValueError(
                f"{op}: invalid {what} rank {rank}; the group has {_size(world, pg)} ranks"
            )
        return int(rank)
    r = info.rank_map.get(int(rank))
    if r is None:
        if pg is world.default_pg:
            raise ValueError(
                f"{op}: invalid {what} rank {rank}; the world has ranks 0..{len(info.ranks) - 1}"
            )
        raise ValueError(f"{op}: Global rank {rank} is not part of group {pg}")
    return r


def _me(world: _World | None, pg: ProcessGroup) -> int:
    """This process's rank in ``pg`` as the module API knows it (a subclass may lie in getRank)."""
    info = _info(world, pg)
    return pg.rank() if info is None else info.rank_map[world.rank]


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
    arrays = checked_list(xs, op, what, out)
    if like is not None:
        for i, a in enumerate(arrays):
            _same(a, like[0], op, f"{what}[{i}]", like[1])
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


# ---------------------------------------------------------------------- collectives


def all_reduce(
    tensor: Any,
    op: ReduceOp = ReduceOp.SUM,
    group: ProcessGroup | None = None,
    async_op: bool = False,
) -> Work | None:
    """Reduce ``tensor`` across the group in place; every rank gets the same bits."""
    # the latency path (a 4-byte all_reduce is tens of microseconds end to end): common
    # cases are decided with as few Python operations as possible
    if group is None:
        world = getattr(_tls, "world", None) or _process_world
        if world is None:
            raise ValueError(_UNINIT)
        pg = world.default_pg
    else:
        world, pg = _resolve(group, "all_reduce")
        if pg is None:
            return None
    arr = tensor
    if type(arr) is not np.ndarray or not arr.flags.carray:
        arr = checked_array(tensor, "all_reduce", "tensor", out=True)
    ops = _valid_ops.get(arr.dtype)
    if ops is None or op not in ops:
        checked_array(arr, "all_reduce", "tensor", out=True)
        _check_op(op, arr.dtype, "all_reduce")
    work = pg.allreduce([tensor], AllreduceOptions(reduceOp=op, asyncOp=async_op))
    if work is None:  # ran in this thread: done
        return None
    return _finish(work, world, pg, async_op)


def broadcast(
    tensor: Any, src: int = 0, group: ProcessGroup | None = None, async_op: bool = False
) -> Work | None:
    """Copy global rank ``src``'s ``tensor`` into every rank's ``tensor``."""
    world, pg = _resolve(group, "broadcast")
    if pg is None:
        return None
    root = _group_rank(world, pg, src, "src", "broadcast")
    checked_array(tensor, "broadcast", "tensor", out=root != _me(world, pg))
    work = pg.broadcast([tensor], BroadcastOptions(rootRank=root, asyncOp=async_op))
    return _finish(work, world, pg, async_op)


def reduce(
    tensor: Any,
    dst: int = 0,
    op: ReduceOp = ReduceOp.SUM,
    group: ProcessGroup | None = None,
    async_op: bool = False,
) -> Work | None:
    """Reduce ``tensor`` onto global rank ``dst``; other ranks' contents are unspecified."""
    world, pg = _resolve(group, "reduce")
    if pg is None:
        return None
    root = _group_rank(world, pg, dst, "dst", "reduce")
    arr = checked_array(tensor, "reduce", "tensor", out=True)
    _check_op(op, arr.dtype, "reduce")
    work = pg.reduce([tensor], ReduceOptions(reduceOp=op, rootRank=root, asyncOp=async_op))
    return _finish(work, world, pg, async_op)


def all_gather(
    tensor_list: list[Any], tensor: Any, group: ProcessGroup | None = None, async_op: bool = False
) -> Work | None:
    """``tensor_list[i]`` <- rank i's ``tensor``; one entry per rank, same shape and dtype."""
    world, pg = _resolve(group, "all_gather")
    if pg is None:
        return None
    inp = checked_array(tensor, "all_gather", "tensor")
    n = _size(world, pg)
    _array_list(tensor_list, "all_gather", "tensor_list", n, True, like=(inp, "tensor"))
    work = pg.allgather([tensor_list], [tensor], AllgatherOptions(asyncOp=async_op))
    return _finish(work, world, pg, async_op)


def _check_concat(big: np.ndarray, small: np.ndarray, n: int, op: str, bw: str, sw: str) -> None:
    if big.dtype != small.dtype:
        raise TypeError(f"{op}: {bw} has dtype {big.dtype} but {sw} has dtype {small.dtype}")
    if big.size != small.size * n:
        raise ValueError(
            f"{op}: {bw} has {big.size} elements; it must have world size ({n}) times "
            f"the {small.size} elements of {sw}"
        )


def all_gather_into_tensor(
    output_tensor: Any, input_tensor: Any, group: ProcessGroup | None = None, async_op: bool = False
) -> Work | None:
    """``output_tensor`` <- every rank's ``input_tensor``, concatenated on axis 0 (or stacked)."""
    world, pg = _resolve(group, "all_gather_into_tensor")
    if pg is None:
        return None
    op = "all_gather_into_tensor"
    out = checked_array(output_tensor, op, "output_tensor", out=True)
    inp = checked_array(input_tensor, op, "input_tensor")
    n = _size(world, pg)
    _check_concat(out, inp, n, op, "output_tensor", "input_tensor")
    # torch 2.13 calls the group's all_gather_single (base class: _allgather_base)
    work = pg.all_gather_single(output_tensor, input_tensor, AllgatherOptions(asyncOp=async_op))
    return _finish(work, world, pg, async_op)


def gather(
    tensor: Any,
    gather_list: list[Any] | None = None,
    dst: int = 0,
    group: ProcessGroup | None = None,
    async_op: bool = False,
) -> Work | None:
    """On global rank ``dst``, ``gather_list[i]`` <- rank i's ``tensor`` (list on dst only)."""
    world, pg = _resolve(group, "gather")
    if pg is None:
        return None
    root = _group_rank(world, pg, dst, "dst", "gather")
    inp = checked_array(tensor, "gather", "tensor")
    is_root = root == _me(world, pg)
    _root_only(gather_list, is_root, "gather_list", "destination")
    outs = None
    if is_root:
        n = _size(world, pg)
        outs = _array_list(gather_list, "gather", "gather_list", n, True, like=(inp, "tensor"))
    outputs = [gather_list] if outs is not None else []
    work = pg.gather(outputs, [tensor], GatherOptions(rootRank=root, asyncOp=async_op))
    return _finish(work, world, pg, async_op)


def scatter(
    tensor: Any,
    scatter_list: list[Any] | None = None,
    src: int = 0,
    group: ProcessGroup | None = None,
    async_op: bool = False,
) -> Work | None:
    """Rank i's ``tensor`` <- global rank ``src``'s ``scatter_list[i]`` (list on src only)."""
    world, pg = _resolve(group, "scatter")
    if pg is None:
        return None
    root = _group_rank(world, pg, src, "src", "scatter")
    out = checked_array(tensor, "scatter", "tensor", out=True)
    is_root = root == _me(world, pg)
    _root_only(scatter_list, is_root, "scatter_list", "source")
    ins = None
    if is_root:
        n = _size(world, pg)
        ins = _array_list(scatter_list, "scatter", "scatter_list", n, False, like=(out, "tensor"))
    inputs = [scatter_list] if ins is not None else []
    work = pg.scatter([tensor], inputs, ScatterOptions(rootRank=root, asyncOp=async_op))
    return _finish(work, world, pg, async_op)


def reduce_scatter(
    output: Any,
    input_list: list[Any],
    op: ReduceOp = ReduceOp.SUM,
    group: ProcessGroup | None = None,
    async_op: bool = False,
) -> Work | None:
    """``output`` <- the reduction over ranks of their ``input_list[my_rank]``."""
    world, pg = _resolve(group, "reduce_scatter")
    if pg is None:
        return None
    out = checked_array(output, "reduce_scatter", "output", out=True)
    n = _size(world, pg)
    _array_list(input_list, "reduce_scatter", "input_list", n, False, like=(out, "output"))
    _check_op(op, out.dtype, "reduce_scatter")
    opts = ReduceScatterOptions(reduceOp=op, asyncOp=async_op)
    work = pg.reduce_scatter([output], [input_list], opts)
    return _finish(work, world, pg, async_op)


def reduce_scatter_tensor(
    output: Any,
    input: Any,
    op: ReduceOp = ReduceOp.SUM,
    group: ProcessGroup | None = None,
    async_op: bool = False,
) -> Work | None:
    """``output`` <- the reduction over ranks of chunk ``my_rank`` of ``input`` along axis 0."""
    name = "reduce_scatter_tensor"
    world, pg = _resolve(group, name)
    if pg is None:
        return None
    out = checked_array(output, name, "output", out=True)
    inp = checked_array(input, name, "input")
    n = _size(world, pg)
    _check_concat(inp, out, n, name, "input", "output")
    _check_op(op, out.dtype, name)
    # torch 2.13 calls the group's reduce_scatter_single (base class: _reduce_scatter_base)
    opts = ReduceScatterOptions(reduceOp=op, asyncOp=async_op)
    work = pg.reduce_scatter_single(output, input, opts)
    return _finish(work, world, pg, async_op)


def all_to_all(
    output_tensor_list: list[Any],
    input_tensor_list: list[Any],
    group: ProcessGroup | None = None,
    async_op: bool = False,
) -> Work | None:
    """``output_tensor_list[i]`` <- rank i's ``input_tensor_list[my_rank]``; uneven shapes allowed."""
    world, pg = _resolve(group, "all_to_all")
    if pg is None:
        return None
    n = _size(world, pg)
    outs = _array_list(output_tensor_list, "all_to_all", "output_tensor_list", n, out=True)
    ins = _array_list(input_tensor_list, "all_to_all", "input_tensor_list", n, out=False)
    dtype = ins[0].dtype if ins else None
    for what, xs in (("input_tensor_list", ins), ("output_tensor_list", outs)):
        for i, x in enumerate(xs):
            if x.dtype != dtype:
                raise TypeError(
                    f"all_to_all: {what}[{i}] has dtype {x.dtype} but input_tensor_list[0] "
                    f"has dtype {dtype}; all entries must share one dtype"
                )
    opts = AllToAllOptions(asyncOp=async_op)
    work = pg.alltoall(output_tensor_list, input_tensor_list, opts)
    return _finish(work, world, pg, async_op)


def _splits(arr: np.ndarray, splits: Any, n: int, what: str, arg: str) -> list[int]:
    rows = arr.shape[0]
    if splits is None or (isinstance(splits, (list, tuple)) and len(splits) == 0):
        if rows % n:
            raise ValueError(
                f"all_to_all_single: {what} has {rows} rows on axis 0, which do not split "
                f"evenly among {n} ranks; pass {arg}"
            )
        return [rows // n] * n
    if isinstance(splits, np.ndarray):
        splits = splits.tolist()
    if not isinstance(splits, (list, tuple)):
        raise TypeError(
            f"all_to_all_single: {arg} must be a list of int, got {type(splits).__name__}"
        )
    if len(splits) != n:
        raise ValueError(
            f"all_to_all_single: {arg} has {len(splits)} entries, but the group has {n} ranks"
        )
    for s in splits:
        if not _is_int(s):
            raise TypeError(f"all_to_all_single: {arg} must hold ints, got {s!r}")
        if s < 0:
            raise ValueError(f"all_to_all_single: {arg} has a negative split {s}")
    if sum(splits) != rows:
        raise ValueError(
            f"all_to_all_single: {arg} {list(splits)} sums to {sum(splits)}, but {what} "
            f"has {rows} rows on axis 0"
        )
    return [int(s) for s in splits]


def all_to_all_single(
    output: Any,
    input: Any,
    output_split_sizes: list[int] | None = None,
    input_split_sizes: list[int] | None = None,
    group: ProcessGroup | None = None,
    async_op: bool = False,
) -> Work | None:
    """All-to-all of row blocks: rank j's block i of ``input`` lands in block j of rank i's ``output``.

    Splits count rows on axis 0; None splits evenly.
    """
    name = "all_to_all_single"
    world, pg = _resolve(group, name)
    if pg is None:
        return None
    out = checked_array(output, name, "output", out=True)
    inp = checked_array(input, name, "input")
    if out.dtype != inp.dtype:
        raise TypeError(f"{name}: output has dtype {out.dtype} but input has dtype {inp.dtype}")
    if out.ndim == 0 or inp.ndim == 0:
        raise ValueError(f"{name}: output and input need at least one dimension")
    if out.shape[1:] != inp.shape[1:]:
        raise ValueError(
            f"{name}: rows differ: output has shape {out.shape}, input has shape {inp.shape}"
        )
    n = _size(world, pg)
    osplit = _splits(out, output_split_sizes, n, "output", "output_split_sizes")
    isplit = _splits(inp, input_split_sizes, n, "input", "input_split_sizes")
    # the group gets the checked splits as ints; "split evenly" stays an empty list (torch's)
    work = pg.alltoall_base(
        output,
        input,
        osplit if output_split_sizes is not None and len(output_split_sizes) else [],
        isplit if input_split_sizes is not None and len(input_split_sizes) else [],
        AllToAllOptions(asyncOp=async_op),
    )
    return _finish(work, world, pg, async_op)


def _check_tag(tag: Any, op: str) -> int:
    if not _is_int(tag):
        raise TypeError(f"{op}: tag must be an int, got {tag!r}")
    return int(tag)


def _send(tensor: Any, dst: int, group: Any, tag: int, async_op: bool, op: str) -> Work | None:
    world, pg = _resolve(group, op)
    if pg is None:
        return None
    peer = _group_rank(world, pg, dst, "dst", op)
    if peer == _me(world, pg):
        raise ValueError(
            "Invalid destination rank: should not be the same as rank of the current process."
        )
    checked_array(tensor, op, "tensor")
    tag = _check_tag(tag, op)
    before = set_caller_blocks(not async_op)
    try:
        work = pg.send([tensor], peer, tag)
    finally:
        set_caller_blocks(before)
    return _finish(work, world, pg, async_op)


def send(tensor: Any, dst: int, group: ProcessGroup | None = None, tag: int = 0) -> None:
    """Send ``tensor`` to global rank ``dst``; matched by the receiver's (source, tag)."""
    _send(tensor, dst, group, tag, False, "send")


def isend(tensor: Any, dst: int, group: ProcessGroup | None = None, tag: int = 0) -> Work | None:
    """Asynchronous ``send``: returns a Work."""
    return _send(tensor, dst, group, tag, True, "isend")


def _recv(tensor: Any, src: Any, group: Any, tag: int, async_op: bool, op: str) -> Any:
    world, pg = _resolve(group, op)
    if pg is None:
        return -1
    peer = None
    if src is not None:
        peer = _group_rank(world, pg, src, "src", op)
        if peer == _me(world, pg):
            raise ValueError(
                "Invalid source rank: should not be the same as rank of the current process."
            )
    checked_array(tensor, op, "tensor", out=True)
    tag = _check_tag(tag, op)
    before = set_caller_blocks(not async_op)
    try:
        if peer is not None:
            work = pg.recv([tensor], peer, tag)
        else:
            work = pg.recv_anysource([tensor], tag)
    finally:
        set_caller_blocks(before)
    if async_op:
        return work
    _finish(work, world, pg, False)
    if peer is None:
        getter = getattr(work, "source_rank", None) or getattr(work, "_source_rank", None)
        peer = getter() if getter is not None else -1
    return _global_rank(world, pg, peer) if peer >= 0 else peer


def recv(
    tensor: Any, src: int | None = None, group: ProcessGroup | None = None, tag: int = 0
) -> int:
    """Receive into ``tensor`` from global rank ``src`` (None: any rank); returns the sender."""
    return _recv(tensor, src, group, tag, False, "recv")


def irecv(
    tensor: Any, src: int | None = None, group: ProcessGroup | None = None, tag: int = 0
) -> Work | None:
    """Asynchronous ``recv``: returns a Work (``work.source_rank()`` is the sender's group rank)."""
    return _recv(tensor, src, group, tag, True, "irecv")


class P2POp:
    """One point-to-point operation for :func:`batch_isend_irecv`: ``op`` is ``isend`` or ``irecv``."""

    def __init__(
        self, op: Any, tensor: Any, peer: int, group: ProcessGroup | None = None, tag: int = 0
    ) -> None:
        if op not in (isend, irecv):
            raise ValueError(
                "Invalid ``op``. Expected ``op`` to be of type ``mpdist.isend`` or ``mpdist.irecv``."
            )
        self.op, self.tensor, self.peer, self.group, self.tag = op, tensor, peer, group, tag

    def __repr__(self) -> str:
        return f"P2POp({self.op.__name__}, peer={self.peer}, tag={self.tag})"


def batch_isend_irecv(p2p_op_list: list[P2POp]) -> list[Work]:
    """Issue every ``P2POp`` asynchronously, in order; returns their Works."""
    if not isinstance(p2p_op_list, list) or not all(isinstance(p, P2POp) for p in p2p_op_list):
        raise ValueError("Invalid ``p2p_op_list``. Each op is expected to to be of type ``P2POp``.")
    works = []
    for p in p2p_op_list:
        w = p.op(p.tensor, p.peer, p.group, p.tag)
        if w is not None:
            works.append(w)
    return works


def barrier(
    group: ProcessGroup | None = None, async_op: bool = False, device_ids: Any = None
) -> Work | None:
    """Wait until every rank of the group has called ``barrier``."""
    world, pg = _resolve(group, "barrier")
    if pg is None:
        return None
    work = pg.barrier(BarrierOptions(asyncOp=async_op))
    return _finish(work, world, pg, async_op)


def monitored_barrier(
    group: ProcessGroup | None = None,
    timeout: timedelta | None = None,
    wait_all_ranks: bool = False,
) -> None:
    """A barrier with a deadline: rank 0 raises naming the ranks that did not arrive.

    With ``wait_all_ranks`` every missing rank is named, else the first one. The ranks
    that did arrive raise the same error.
    """
    world, pg = _resolve(group, "monitored_barrier")
    if pg is None:
        return None
    info = _info(world, pg)
    if timeout is None:
        timeout = info.timeout if info is not None else DEFAULT_TIMEOUT
    timeout = _check_timeout(timeout)
    if timeout.total_seconds() <= 0:
        raise ValueError(f"monitored_barrier: timeout must be positive, got {timeout}")
    opts = BarrierOptions(timeout=timeout, asyncOp=False)
    _finish(pg.monitored_barrier(opts, bool(wait_all_ranks)), world, pg, False)
    return None


# ---------------------------------------------------------------------- object collectives


def _pickle(obj: Any) -> np.ndarray:
    return np.frombuffer(pickle.dumps(obj, protocol=pickle.HIGHEST_PROTOCOL), dtype=np.uint8)


def _unpickle(buf: np.ndarray) -> Any:
    return pickle.loads(buf.tobytes())


def _pack(objects: list[Any]) -> tuple[np.ndarray, np.ndarray]:
    """The pickles of ``objects`` laid end to end, and their lengths: (sizes, payload)."""
    parts = [_pickle(o) for o in objects]
    sizes = np.array([p.size for p in parts], dtype=np.int64)
    return sizes, np.concatenate(parts) if parts else np.zeros(0, np.uint8)


def _unpack(object_list: list[Any], sizes: np.ndarray, payload: np.ndarray) -> None:
    """Fill ``object_list`` from pickles laid end to end in ``payload`` (inverse of ``_pack``)."""
    off = 0
    for i, s in enumerate(sizes.tolist()):
        object_list[i] = _unpickle(payload[off : off + s])
        off += s


def _padded_pickle(obj: Any, n: int, pg: ProcessGroup) -> tuple[np.ndarray, list[int]]:
    """This rank's pickled ``obj`` zero-padded to the longest pickle in the group, and every
    rank's pickle length; the lengths travel in an all_gather, so every rank must call it.

    Padding to one width lets the pickles travel in a plain all_gather / gather.
    """
    data = _pickle(obj)
    sizes = np.zeros((n, 1), dtype=np.int64)
    all_gather(list(sizes), np.array([data.size], dtype=np.int64), group=pg)
    mine = np.zeros(int(sizes.max()), dtype=np.uint8)
    mine[: data.size] = data
    return mine, sizes[:, 0].tolist()


def _object_list(xs: Any, op: str, what: str, n: int | None) -> list[Any]:
    if not isinstance(xs, list):
        raise TypeError(f"{op}: {what} must be a list, got {type(xs).__name__}")
    if n is not None and len(xs) != n:
        raise ValueError(f"{op}: {what} has {len(xs)} entries, but the group has {n} ranks")
    return xs


def all_gather_object(object_list: list[Any], obj: Any, group: ProcessGroup | None = None) -> None:
    """``object_list[i]`` <- rank i's ``obj`` (pickled); one entry per rank."""
    world, pg = _resolve(group, "all_gather_object")
    if pg is None:
        return
    n = _size(world, pg)
    _object_list(object_list, "all_gather_object", "object_list", n)
    mine, sizes = _padded_pickle(obj, n, pg)
    bufs = np.zeros((n, mine.size), dtype=np.uint8)
    all_gather(list(bufs), mine, group=pg)
    for i in range(n):
        object_list[i] = _unpickle(bufs[i, : sizes[i]])


def broadcast_object_list(
    object_list: list[Any], src: int = 0, group: ProcessGroup | None = None, device: Any = None
) -> None:
    """Every rank's ``object_list`` <- global rank ``src``'s (same length on every rank)."""
    world, pg = _resolve(group, "broadcast_object_list")
    if pg is None:
        return
    _object_list(object_list, "broadcast_object_list", "object_list", None)
    root = _group_rank(world, pg, src, "src", "broadcast_object_list")
    if _me(world, pg) == root:
        sizes, payload = _pack(object_list)
        broadcast(sizes, src, group=pg)
        broadcast(payload, src, group=pg)
        return
    sizes = np.zeros(len(object_list), dtype=np.int64)
    broadcast(sizes, src, group=pg)
    payload = np.zeros(int(sizes.sum()), np.uint8)
    broadcast(payload, src, group=pg)
    _unpack(object_list, sizes, payload)


def gather_object(
    obj: Any,
    object_gather_list: list[Any] | None = None,
    dst: int = 0,
    group: ProcessGroup | None = None,
) -> None:
    """On global rank ``dst``, ``object_gather_list[i]`` <- rank i's ``obj`` (list on dst only)."""
    world, pg = _resolve(group, "gather_object")
    if pg is None:
        return
    n = _size(world, pg)
    root = _group_rank(world, pg, dst, "dst", "gather_object")
    is_root = _me(world, pg) == root
    _root_only(object_gather_list, is_root, "object_gather_list", "destination")
    if is_root:
        _object_list(object_gather_list, "gather_object", "object_gather_list", n)
    mine, sizes = _padded_pickle(obj, n, pg)
    bufs = np.zeros((n, mine.size), dtype=np.uint8) if is_root else None
    gather(mine, list(bufs) if bufs is not None else None, dst, group=pg)
    if bufs is not None:
        assert object_gather_list is not None
        for i in range(n):
            object_gather_list[i] = _unpickle(bufs[i, : sizes[i]])


def scatter_object_list(
    scatter_object_output_list: list[Any],
    scatter_object_input_list: list[Any] | None = None,
    src: int = 0,
    group: ProcessGroup | None = None,
) -> None:
    """Rank i's ``scatter_object_output_list[0]`` <- ``scatter_object_input_list[i]`` of ``src``."""
    name = "scatter_object_list"
    world, pg = _resolve(group, name)
    if pg is None:
        return
    if not isinstance(scatter_object_output_list, list) or len(scatter_object_output_list) < 1:
        raise ValueError(
            "Expected argument scatter_object_output_list to be a list of size at least 1."
        )
    n = _size(world, pg)
    root = _group_rank(world, pg, src, "src", name)
    is_root = _me(world, pg) == root
    _root_only(scatter_object_input_list, is_root, "scatter_object_input_list", "source")
    # every pickle travels in a buffer of one width: its length (8 bytes), then the pickle
    width = np.zeros(1, dtype=np.int64)
    parts: list[np.ndarray] = []
    if is_root:
        _object_list(scatter_object_input_list, name, "scatter_object_input_list", n)
        parts = [_pickle(o) for o in scatter_object_input_list]
        width[0] = max(p.size for p in parts) + 8
    broadcast(width, src, group=pg)
    w = int(width[0])
    out = np.zeros(w, dtype=np.uint8)
    ins = None
    if is_root:
        ins = []
        for p in parts:
            buf = np.zeros(w, dtype=np.uint8)
            buf[:8] = np.array([p.size], dtype=np.int64).view(np.uint8)
            buf[8 : 8 + p.size] = p
            ins.append(buf)
    scatter(out, ins, src, group=pg)
    size = int(out[:8].view(np.int64)[0])
    scatter_object_output_list[0] = _unpickle(out[8 : 8 + size])


def send_object_list(object_list: list[Any], dst: int, group: ProcessGroup | None = None) -> None:
    """Send the pickled objects of ``object_list`` to global rank ``dst``."""
    world, pg = _resolve(group, "send_object_list")
    if pg is None:
        return
    _object_list(object_list, "send_object_list", "object_list", None)
    sizes, payload = _pack(object_list)
    send(sizes, dst, group=pg)
    send(payload, dst, group=pg)


def recv_object_list(
    object_list: list[Any], src: int | None = None, group: ProcessGroup | None = None
) -> int:
    """Fill ``object_list`` with objects sent by ``send_object_list``; returns the sender."""
    world, pg = _resolve(group, "recv_object_list")
    if pg is None:
        return -1
    _object_list(object_list, "recv_object_list", "object_list", None)
    sizes = np.zeros(len(object_list), dtype=np.int64)
    sender = recv(sizes, src, group=pg)
    payload = np.zeros(int(sizes.sum()), dtype=np.uint8)
    recv(payload, sender, group=pg)
    _unpack(object_list, sizes, payload)
    return sender


# ---------------------------------------------------------------------- harness hooks


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
