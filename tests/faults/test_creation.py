"""The fault campaign while groups are made, and on the threaded backend (issue 17 item 5).

Group creation (``creation.plan_creation``): real rank processes make the default group (on a
FileStore, or a TCPStore whose server rank 0 hosts) and a subgroup, and the culprit raises,
exits, crashes, is killed or stopped, or loses its sockets before init or new_group, before
one of its store operations inside them (the rendezvous and the mesh connect, lookup by
lookup), or right after. Threaded backend: a rank thread raises or calls ``sys.exit(0)`` in
the same places, or inside ``campaign.plan``'s mix of collectives (mid-collective for its
peers). Every run is checked as the collectives campaign's are (``checks.check_run``): a
failure naming the culprit within the bound, no hang, no wrong value, nothing left behind.

One known limitation is accepted, and counted apart: rank 0 hosting a TCPStore rendezvous
shuts its sockets and lives; the survivors can name only the lost server's address
(``_store_host_lost``).

Short mode (CI): world size 3, one seed per fault, and the threaded cases at world size 3;
``MPDIST_FAULTS=thorough`` runs world sizes 2, 3 and 5 with ``MPDIST_FAULTS_SEEDS`` seeds
(default 20) each. ``MPDIST_FAULTS_SEED=S`` starts the seeds at S.
"""

from __future__ import annotations

import random
import socket

import pytest
from campaign import FAULTS, plan, run_plan
from checks import (
    FIRST_SEED,
    GROUP_TIMEOUT,
    N_SEEDS,
    RUN_BOUND,
    SILENT_GROUP_TIMEOUT,
    STORE_HOST_LOST,
    THOROUGH,
    check_run,
    sections,
)
from creation import PHASES, CreationCase, phase_ops, plan_creation, run_creation

from mpdist.store import HashStore
from mpdist.testing import spawn_ranks, spawn_threads

WORLD_SIZES = (2, 3, 5) if THOROUGH else (3,)
# Faults a rank thread can have: the others would take the whole process (and the test) down.
THREAD_FAULTS = ("raise", "sys_exit_0")
# A rank stopped, or gone with sys.exit(0) (a rank may finish early: nobody aborts its
# peers), is noticed only by a timeout; every other fault by a lost connection or the
# harness's abort.
SILENT = ("sigstop", "sys_exit_0")


def _nothing_shut(values: list) -> bool:
    """Whether a close_sockets culprit had no connection to shut (a run that then passes
    had no fault)."""
    return any(v is not None and v[1] == 0 for v in values)


def _store_host_lost(case: CreationCase, port: str, text: str) -> str | None:
    """The known limitation: rank 0 hosts the TCPStore server and shuts its sockets but lives.
    Every client loses the server at once; the first to notice reports a lost store, which
    names the server's address, not rank 0 (clients cannot know which rank runs it), and if
    it reaches the harness before rank 0 notices (its next store call, which says the server
    runs in its process), the harness aborts rank 0 and blames the client. Accepted only when
    every survivor's failure is that lost server (or the abort it caused)."""
    if not (case.fault == "close_sockets" and case.store == "tcp" and case.culprit == 0):
        return None
    lost = f"lost the connection to the server at 127.0.0.1:{port}"
    by_rank = sections(text)
    survivors = range(1, case.world_size)
    if all(r in by_rank and lost in by_rank[r] for r in survivors):
        return STORE_HOST_LOST
    return None


def _port() -> int:
    """A free port for rank 0's TCPStore, below the ephemeral range: nothing else picks it
    between this check and rank 0's bind (every other socket of the tests binds port 0)."""
    rng = random.SystemRandom()
    for _ in range(100):
        port = rng.randrange(20000, 32768)
        with socket.socket() as s:
            try:
                s.bind(("127.0.0.1", port))
            except OSError:
                continue
            return port
    raise RuntimeError("no free port in 20000..32767")


def _params(world_sizes: tuple[int, ...], faults: tuple[str, ...]) -> list:
    return [
        pytest.param(ws, fault, seed, id=f"ws{ws}-{fault}-seed{seed}")
        for ws in world_sizes
        for fault in faults
        for seed in range(FIRST_SEED, FIRST_SEED + N_SEEDS)
    ]


def _rerun(test: str, world_size: int, fault: str, seed: int, what: str) -> str:
    return (
        f"rerun: MPDIST_FAULTS_SEED={seed} python -m pytest tests/faults/test_creation.py "
        f"-k '{test} and ws{world_size}-{fault}-seed{seed}' ({what})"
    )


@pytest.mark.parametrize(("world_size", "fault", "seed"), _params(WORLD_SIZES, FAULTS))
def test_fault_in_group_creation(world_size, fault, seed, tmp_path, monkeypatch) -> None:
    case = plan_creation(seed, world_size, fault)
    where = str(tmp_path / "store") if case.store == "file" else str(_port())
    what = f"culprit rank {case.culprit} {case.where()}, {case.store} store"
    rerun = _rerun("creation", world_size, fault, seed, what)
    timeout = SILENT_GROUP_TIMEOUT if fault in SILENT else GROUP_TIMEOUT

    def run(pid_dir: str | None) -> list:
        # backend=None: the ranks make their groups themselves, on the case's store
        return spawn_ranks(
            run_creation, world_size, case, pid_dir, where, timeout, backend=None, timeout=RUN_BOUND
        )

    label = f"creation\t{world_size}\t{fault}\t{seed}\t{case.phase}/{case.store}/{case.at}"

    def explained(text: str) -> str | None:
        return _store_host_lost(case, where, text)

    check_run(
        label, case, rerun, run, tmp_path, monkeypatch, no_fault=_nothing_shut, explained=explained
    )


@pytest.mark.parametrize(("world_size", "fault", "seed"), _params(WORLD_SIZES, THREAD_FAULTS))
def test_thread_fault_in_group_creation(world_size, fault, seed, tmp_path, monkeypatch) -> None:
    case = plan_creation(seed, world_size, fault, backend="threaded")
    rerun = _rerun(
        "thread_fault_in_group",
        world_size,
        fault,
        seed,
        f"culprit rank {case.culprit} {case.where()}",
    )

    timeout = SILENT_GROUP_TIMEOUT if fault in SILENT else GROUP_TIMEOUT

    def run(pid_dir: str | None) -> list:
        shared = HashStore()
        return spawn_threads(
            run_creation,
            world_size,
            case,
            pid_dir,
            "",
            timeout,
            shared,
            init=False,
            timeout=RUN_BOUND,
        )

    label = f"threaded creation\t{world_size}\t{fault}\t{seed}\t{case.phase}/{case.at}"
    check_run(label, case, rerun, run, tmp_path, monkeypatch, processes=False)


@pytest.mark.parametrize(("world_size", "fault", "seed"), _params(WORLD_SIZES, THREAD_FAULTS))
def test_thread_fault_in_collectives(world_size, fault, seed, tmp_path, monkeypatch) -> None:
    case = plan(seed, world_size, fault)
    what = f"culprit rank {case.culprit}, before collective #{case.at} {case.ops[case.at]}"
    rerun = _rerun("thread_fault_in_coll", world_size, fault, seed, what)

    timeout = SILENT_GROUP_TIMEOUT if fault in SILENT else GROUP_TIMEOUT

    def run(pid_dir: str | None) -> list:
        return spawn_threads(
            run_plan, world_size, case, pid_dir, group_timeout=timeout, timeout=RUN_BOUND
        )

    label = f"threaded collectives\t{world_size}\t{fault}\t{seed}"
    check_run(label, case, rerun, run, tmp_path, monkeypatch, processes=False)


@pytest.mark.parametrize("backend", ["tcp", "threaded"])
@pytest.mark.parametrize("world_size", WORLD_SIZES)
def test_plans_count_the_store_operations_there_are(backend, world_size, tmp_path) -> None:
    """``phase_ops`` (where the plans draw their fault points from) says how many store
    operations each rank's phases really make: a plan's "before operation #k" is a real
    point of the rendezvous or the mesh connect, not a fault moved to the phase's end."""
    case = CreationCase(0, world_size, None, 0, "", "file", 0, 0)
    if backend == "tcp":
        values = spawn_ranks(
            run_creation,
            world_size,
            case,
            None,
            str(tmp_path / "store"),
            GROUP_TIMEOUT,
            backend=None,
            timeout=RUN_BOUND,
        )
    else:
        values = spawn_threads(
            run_creation,
            world_size,
            case,
            None,
            "",
            GROUP_TIMEOUT,
            HashStore(),
            init=False,
            timeout=RUN_BOUND,
        )
    for rank, (_, counted) in enumerate(values):
        assert counted == {p: phase_ops(p, rank, world_size, backend) for p in PHASES}, rank
