"""Creating and destroying process groups: init_process_group, new_group, destroy_process_group."""

from __future__ import annotations

import contextlib
import functools
import itertools
from collections.abc import Sequence
from datetime import timedelta
from typing import Any

from mpdist import aborts
from mpdist import backends as _backends  # noqa: F401  (registers the built-in backends)
from mpdist.backends.fake import FakeStore
from mpdist.backends.group_store import GroupStore
from mpdist.distributed import _world as state
from mpdist.distributed._checks import _check_timeout, _is_int
from mpdist.distributed._world import (
    GroupMember,
    _GroupInfo,
    _init_lock,
    _tls,
    _World,
    _world_or_raise,
)
from mpdist.process_group import (
    Backend,
    ProcessGroup,
    _DistributedBackendOptions,
)
from mpdist.store import Store
from mpdist.store.rendezvous import rendezvous

# the init count of the fake backend, whose store is never touched (_build_default_world)
_fake_inits = itertools.count(1)


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
    # (in the store, or for their connections) is stopped by an abort (mpdist.aborts).
    aborts.register(store, store.abort, label)
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
        aborts.unregister(store)
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
    # the group first: an abort in between reaches one of the two (and sticks anyway)
    aborts.register(pg, pg.abort_with_reason, label)
    aborts.unregister(store)
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
            state.process_world = world


def _reserve_default(thread_local: bool) -> None:
    """Claim the default-group slot of this process (threaded: of this thread), or raise."""
    with _init_lock:
        # a rank thread of the threaded backend only needs its own slot free (the
        # process-wide one may be in use); any other init needs both
        taken = _tls.world is not None or _tls.reserved
        if not thread_local:
            taken = taken or state.process_world is not None or state.process_reserved
        if taken:
            raise ValueError("trying to initialize the default process group twice!")
        if thread_local:
            _tls.reserved = True
        else:
            state.process_reserved = True


def _release_default_locked(thread_local: bool) -> None:
    if thread_local:
        _tls.reserved = False
    else:
        state.process_reserved = False


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
        # every rank goes through the same init/destroy sequence, so the counts agree. The
        # fake backend never touches its store (torch's FakeStore implements nothing), and
        # its keys are read by nobody: a process-wide count does.
        if name == Backend.FAKE:
            generation = next(_fake_inits)
        else:
            generation = store.add(f"mpdist/init/{rank}", 1)
        world.prefix = f"mpdist/{generation}"
        pg_name = group_name or "0"
        pg = _make_group(
            world,
            str(name),
            GroupStore(f"{world.prefix}/0", store, timeout),
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
    aborts.unregister(pg)
    if info is not None:
        pg.shutdown()


def destroy_process_group(group: ProcessGroup | None = None) -> None:
    """Destroy ``group``; with no argument every group: threads and sockets closed.

    Afterwards ``init_process_group`` may be called again. With nothing initialized, the
    default group is None: an ``AssertionError``, as in torch (whose tests' ``tearDown``
    catches it).
    """
    if group is None and state._current_world() is None:
        raise AssertionError(
            "Process group cannot be None: the default process group has not been "
            "initialized (or was destroyed already), so there is nothing to destroy"
        )
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
            if _tls.world is world:
                _tls.world = None
            elif state.process_world is world:
                state.process_world = None
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
        GroupStore(f"{world.prefix}/{group_name}", world.store, timeout),
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
