"""The fault campaign's rank side: a seeded mix of collectives, and one rank that breaks in it.

``plan(seed, world_size)`` draws the mix (which collective, default group or subgroup, sync
or async, payload size); ``run_plan`` runs it in a rank and checks every value it receives,
so a wrong value fails the run as loudly as a hang would. The faulty rank injects its fault
just before collective number ``at``. Everything is a function of the seed: a failing case
reruns from its seed alone.
"""

from __future__ import annotations

import ctypes
import os
import random
import signal
import socket
import sys
from dataclasses import dataclass

import numpy as np
import psutil

from mpdist import distributed as dist

FAULTS = ("raise", "sys_exit_0", "os_exit_3", "segfault", "sigkill", "sigstop", "close_sockets")
KINDS = (
    "all_reduce",
    "broadcast",
    "all_gather",
    "all_to_all",
    "send_recv",
    "barrier",
    "all_gather_object",
    "broadcast_object_list",
)
SIZES = (1, 7, 3000)  # 3000 float64 = 24 KB: past the shared-memory threshold (16 KiB)


@dataclass(frozen=True)
class Op:
    """One collective of the mix."""

    kind: str
    sub: bool  # on the subgroup rather than the default group
    async_op: bool
    size: int


@dataclass(frozen=True)
class Case:
    """One run of the campaign: everything that decides what happens, from one seed."""

    seed: int
    world_size: int
    fault: str
    culprit: int
    at: int
    ops: tuple[Op, ...]


def subgroup_ranks(world_size: int) -> list[int]:
    """The subgroup's members: all but rank 0 (both ranks at world size 2)."""
    return list(range(1, world_size)) if world_size > 2 else [0, 1]


def plan(seed: int, world_size: int, fault: str, n_ops: int = 12) -> Case:
    """The case a seed stands for (the fault is chosen by the caller, the rest by the seed)."""
    rng = random.Random(f"{seed}/{world_size}/{fault}")
    ops = tuple(
        Op(rng.choice(KINDS), rng.random() < 0.3, rng.random() < 0.4, rng.choice(SIZES))
        for _ in range(n_ops)
    )
    culprit = rng.randrange(world_size)
    return Case(seed, world_size, fault, culprit, rng.randrange(n_ops), ops)


def inject(fault: str) -> int:
    """Break this rank as ``fault`` says; returns (if it returns at all) how many TCP
    connections ``close_sockets`` shut (0: nothing was connected; listeners are shut down
    too but not counted, since a run may not need them any more: then no fault happened)."""
    if fault == "raise":
        raise RuntimeError("injected fault: this rank raises")
    if fault == "sys_exit_0":
        sys.exit(0)
    if fault == "os_exit_3":
        os._exit(3)
    if fault == "segfault":
        ctypes.string_at(0)
    if fault == "sigkill":
        os.kill(os.getpid(), signal.SIGKILL)
    if fault == "sigstop":
        os.kill(os.getpid(), signal.SIGSTOP)
    if fault == "close_sockets":
        # Every TCP connection of this process goes down (as if its network went away);
        # the process itself carries on, and finds out at its next collective.
        shut = 0
        for conn in psutil.Process().net_connections(kind="tcp"):
            s = socket.socket(fileno=conn.fd)
            try:
                s.shutdown(socket.SHUT_RDWR)
                shut += conn.status != psutil.CONN_LISTEN
            except OSError:
                pass
            finally:
                s.detach()
        return shut
    return 0


def _value(i: int, rank: int, size: int) -> np.ndarray:
    return np.arange(size, dtype=np.float64) * (rank + 1) + 1000.0 * i


def _check(what: str, got: object, want: object) -> None:
    if not np.array_equal(np.asarray(got), np.asarray(want)):
        raise AssertionError(f"wrong value from {what}: got {got!r}, want {want!r}")


def run_op(i: int, op: Op, rank: int, members: list[int], group: object) -> None:
    g = group if op.sub else None
    me = members.index(rank)
    n = len(members)
    name = f"collective #{i} ({op.kind} on {'subgroup' if op.sub else 'world'})"
    works = []
    if op.kind == "all_reduce":
        x = _value(i, rank, op.size)
        works.append(dist.all_reduce(x, group=g, async_op=op.async_op))
        want = sum(_value(i, r, op.size) for r in members)
        _wait(works)
        _check(name, x, want)
    elif op.kind == "broadcast":
        src = members[i % n]
        x = _value(i, rank, op.size) if rank == src else np.zeros(op.size)
        works.append(dist.broadcast(x, src=src, group=g, async_op=op.async_op))
        _wait(works)
        _check(name, x, _value(i, src, op.size))
    elif op.kind == "all_gather":
        out = [np.zeros(op.size) for _ in members]
        works.append(dist.all_gather(out, _value(i, rank, op.size), group=g, async_op=op.async_op))
        _wait(works)
        for r, got in zip(members, out, strict=True):
            _check(name, got, _value(i, r, op.size))
    elif op.kind == "all_to_all":
        ins = [_value(i, rank, op.size) + 10 * j for j in range(n)]
        out = [np.zeros(op.size) for _ in members]
        works.append(dist.all_to_all(out, ins, group=g, async_op=op.async_op))
        _wait(works)
        for r, got in zip(members, out, strict=True):
            _check(name, got, _value(i, r, op.size) + 10 * me)
    elif op.kind == "send_recv":
        # a ring inside the group: send to the next member, receive from the previous one
        nxt, prv = members[(me + 1) % n], members[(me - 1) % n]
        got = np.zeros(op.size)
        works.append(dist.isend(_value(i, rank, op.size), nxt, group=g, tag=i))
        works.append(dist.irecv(got, prv, group=g, tag=i))
        _wait(works)
        _check(name, got, _value(i, prv, op.size))
    elif op.kind == "barrier":
        works.append(dist.barrier(group=g, async_op=op.async_op))
        _wait(works)
    elif op.kind == "all_gather_object":
        objs: list[object] = [None] * n
        dist.all_gather_object(objs, {"i": i, "rank": rank}, group=g)
        _check(name, [o["rank"] for o in objs], members)  # type: ignore[index]
    elif op.kind == "broadcast_object_list":
        src = members[(i + 1) % n]
        lst: list[object] = [("from", src, i)] if rank == src else [None]
        dist.broadcast_object_list(lst, src=src, group=g)
        if lst[0] != ("from", src, i):
            raise AssertionError(f"wrong value from {name}: {lst[0]!r}")
    else:  # pragma: no cover - the plan only draws KINDS
        raise AssertionError(op.kind)


def _wait(works: list) -> None:
    for w in works:
        if w is not None:
            w.wait()


def run_plan(
    rank: int, world_size: int, case: Case, pid_dir: str | None, group: object = None
) -> int:
    """A rank's side of ``case``; returns how many collectives it completed.

    ``group`` is the subgroup (of :func:`subgroup_ranks`), made here if not given.
    """
    if pid_dir is not None:
        with open(os.path.join(pid_dir, str(rank)), "w") as f:
            f.write(str(os.getpid()))
    members = subgroup_ranks(world_size)
    if group is None:
        group = dist.new_group(members)  # every rank takes part in creating it
    done = 0
    for i, op in enumerate(case.ops):
        if rank == case.culprit and i == case.at:
            inject(case.fault)
        ranks = members if op.sub else list(range(world_size))
        if rank in ranks:
            run_op(i, op, rank, ranks, group)
            done += 1
    dist.barrier()  # every rank needs the culprit at the end
    return done
