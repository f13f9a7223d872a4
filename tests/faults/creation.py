"""The fault campaign's rank side while groups are made: a rank breaks in init or new_group.

``plan_creation(seed, world_size, fault)`` draws where: the phase (``init_process_group`` or
``new_group``), the rendezvous store (a FileStore, or a TCPStore whose server rank 0 hosts)
and the culprit's store operation the fault comes before (``-1``: before the phase starts; the
operation count: right after it ends). A group's creation is a sequence of store operations
(the init counter, the group token, each rank's address, then one lookup per lower rank, each
followed by the connection to that rank), so counting them reaches every step of the
rendezvous and of the mesh connect. After the phase the ranks run a few checked collectives
(``campaign.run_op``) on the world and the subgroup, so a fault right after creation is
noticed too. Everything is a function of the seed.
"""

from __future__ import annotations

import os
import random
from dataclasses import dataclass
from datetime import timedelta

from campaign import Op, inject, run_op, subgroup_ranks

from mpdist import distributed as dist
from mpdist.store import FileStore, PrefixStore, Store, TCPStore

PHASES = ("init", "new_group")
STORES = ("file", "tcp")
# After the groups are made: a world all_reduce, a subgroup all_gather (then a world barrier).
_AFTER = (Op("all_reduce", False, False, 7), Op("all_gather", True, False, 7))


@dataclass(frozen=True)
class CreationCase:
    """One run: the phase the culprit breaks in, and before which of its store operations."""

    seed: int
    world_size: int
    fault: str | None  # None: no fault (the operations are only counted)
    culprit: int
    phase: str
    store: str
    at: int  # -1: before the phase; ``ops``: right after it
    ops: int  # the culprit's counted store operations in the phase

    def where(self) -> str:
        if self.at < 0:
            return f"before {self.phase}"
        if self.at == self.ops:
            return f"right after {self.phase}"
        return f"before store operation #{self.at} (of {self.ops}) of {self.phase}"


def phase_ops(phase: str, rank: int, world_size: int, backend: str = "tcp") -> int:
    """How many counted store operations ``rank`` makes in ``phase`` (see the module doc).

    tcp, init: the init counter, the group token, its address, one lookup per lower rank;
    new_group: the same without the counter, members only. threaded: the counter (init
    only) and the hub id.
    """
    members = subgroup_ranks(world_size)
    if phase == "new_group" and rank not in members:
        return 0
    if backend == "threaded":
        return 2 if phase == "init" else 1
    return 3 + rank if phase == "init" else 2 + members.index(rank)


def plan_creation(seed: int, world_size: int, fault: str, backend: str = "tcp") -> CreationCase:
    """The case a seed stands for (the fault is chosen by the caller, the rest by the seed)."""
    rng = random.Random(f"creation/{seed}/{world_size}/{fault}/{backend}")
    culprit = rng.randrange(world_size)
    phase = rng.choice(PHASES)
    store = rng.choice(STORES) if backend == "tcp" else "hash"
    ops = phase_ops(phase, culprit, world_size, backend)
    return CreationCase(
        seed, world_size, fault, culprit, phase, store, rng.randrange(-1, ops + 1), ops
    )


class Trigger:
    """Fires one rank's fault at its planned point: before phase ``phase`` starts
    (``at == -1``), before its ``at``-th counted store operation, or as it ends."""

    def __init__(self, fault: str | None, phase: str, at: int) -> None:
        self.fault, self.phase, self.at = fault, phase, at
        self.current = ""
        self.count = 0
        self.fired = False
        self.shut: int | None = None  # close_sockets: how many connections it shut

    def enter(self, phase: str) -> None:
        if phase == self.phase and self.at < 0:
            self.fire()
        self.current, self.count = phase, 0

    def leave(self, phase: str) -> None:
        self.current = ""
        if phase == self.phase:  # ``at`` past the phase's operations: right after it
            self.fire()

    def tick(self) -> None:
        if self.current == self.phase and self.count == self.at:
            self.fire()
        self.count += 1

    def fire(self) -> None:
        if self.fault is not None and not self.fired:
            self.fired = True
            self.shut = inject(self.fault)


class FaultyStore(PrefixStore):
    """The rendezvous store as one rank sees it: each operation that reads or writes a key
    ticks the trigger first. Waits and checks, which repeat in time slices, are not
    counted: the count must not depend on timing."""

    def __init__(self, store: Store, trigger: Trigger) -> None:
        super().__init__("job", store)
        self.trigger = trigger

    def _set(self, key: str, value: bytes) -> None:
        self.trigger.tick()
        super()._set(key, value)

    def _get(self, key: str, timeout: float | None) -> bytes:
        self.trigger.tick()
        return super()._get(key, timeout)

    def _add(self, key: str, amount: int) -> int:
        self.trigger.tick()
        return super()._add(key, amount)

    def _compare_set(self, key: str, expected: bytes, desired: bytes) -> bytes:
        self.trigger.tick()
        return super()._compare_set(key, expected, desired)

    def _multi_get(self, keys: list[str], timeout: float | None) -> list[bytes]:
        self.trigger.tick()
        return super()._multi_get(keys, timeout)

    def _multi_set(self, keys: list[str], values: list[bytes]) -> None:
        self.trigger.tick()
        super()._multi_set(keys, values)


class CountingTrigger(Trigger):
    """A trigger with no fault that notes how many operations each phase counted."""

    def __init__(self) -> None:
        super().__init__(None, "", 0)
        self.counted: dict[str, int] = {}

    def leave(self, phase: str) -> None:
        self.counted[phase] = self.count
        super().leave(phase)


def _base_store(case: CreationCase, rank: int, where: str, timeout: timedelta) -> Store:
    if case.store == "file":
        return FileStore(where, case.world_size)
    # tcp: ``where`` is the port rank 0's server listens on (the test picked a free one)
    return TCPStore(
        "127.0.0.1",
        int(where),
        case.world_size,
        is_master=rank == 0,
        timeout=timeout,
        wait_for_workers=False,
    )


def run_creation(
    rank: int,
    world_size: int,
    case: CreationCase,
    pid_dir: str | None,
    where: str,
    timeout_s: float,
    shared: Store | None = None,
) -> tuple[int, object]:
    """A rank's side of ``case``: make the default group and the subgroup, then a few
    checked collectives; returns how many it completed, and (culprit of close_sockets) how
    many connections it shut: none (before any was made) means the fault did not happen.
    A case with no fault returns how many store operations each phase counted instead.

    ``where`` is the FileStore's path or rank 0's TCPStore port; ``shared`` (the threaded
    backend's HashStore, one for every rank thread) replaces both. A fault before init
    comes before the rank's store is even made: a TCPStore server or client never appears.
    """
    if pid_dir is not None:
        with open(os.path.join(pid_dir, str(rank)), "w") as f:
            f.write(str(os.getpid()))
    trigger: Trigger
    if case.fault is None:
        trigger = CountingTrigger()
    else:
        trigger = Trigger(case.fault if rank == case.culprit else None, case.phase, case.at)
    timeout = timedelta(seconds=timeout_s)
    trigger.enter("init")
    base = shared if shared is not None else _base_store(case, rank, where, timeout)
    try:
        backend = "threaded" if shared is not None else "tcp"
        store = FaultyStore(base, trigger)
        dist.init_process_group(
            backend, store=store, rank=rank, world_size=world_size, timeout=timeout
        )
        trigger.leave("init")
        trigger.enter("new_group")
        members = subgroup_ranks(world_size)
        group = dist.new_group(members)
        trigger.leave("new_group")
        done = 0
        for i, op in enumerate(_AFTER):
            ranks = members if op.sub else list(range(world_size))
            if rank in ranks:
                run_op(i, op, rank, ranks, group)
                done += 1
        dist.barrier()  # every rank needs the culprit at the end
        if isinstance(trigger, CountingTrigger):
            return done, trigger.counted
        return done, trigger.shut
    finally:
        if dist.is_initialized():
            dist.destroy_process_group()
        if shared is None:
            base.close()
