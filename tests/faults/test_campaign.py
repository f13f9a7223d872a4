"""The fault campaign (issue 17 item 5): one rank breaks inside a seeded mix of collectives.

For each world size and fault, real rank processes run ``campaign.plan``'s mix; the culprit
raises, exits, crashes, is killed or stopped, or loses its sockets just before a seeded
collective. The run must end, well within its bound, in one failure that names the culprit
(every survivor's error names it, or the harness's headline does), never a hang and never a
wrong value; and nothing may be left: no rank process, shared-memory ring, temp file, or
thread or descriptor of the parent.

Short mode (the default, in CI): one seed per (world size, fault). ``MPDIST_FAULTS=thorough``
runs ``MPDIST_FAULTS_SEEDS`` seeds (default 20) each. ``MPDIST_FAULTS_SEED=S`` starts the
seeds at S (a failing case prints the command that reruns it).
"""

from __future__ import annotations

import os
import re
import tempfile
import threading
import time

import psutil
import pytest
from campaign import FAULTS, Case, plan, run_plan

from mpdist.testing import MultiProcessFailure, MultiProcessTimeout, spawn_ranks

THOROUGH = os.environ.get("MPDIST_FAULTS", "short") == "thorough"
FIRST_SEED = int(os.environ.get("MPDIST_FAULTS_SEED", "0"))
N_SEEDS = int(os.environ.get("MPDIST_FAULTS_SEEDS", "20")) if THOROUGH else 1
WORLD_SIZES = (2, 3, 5)
# A stopped rank is noticed only by a timeout; every other fault by a lost connection.
STOP_GROUP_TIMEOUT = 4.0
GROUP_TIMEOUT = 60.0
RUN_BOUND = 60.0  # the harness's own deadline: reaching it is a hang


def _names(text: str, rank: int) -> bool:
    """Whether ``text`` names ``rank`` ("rank 2", or "ranks 1, 2")."""
    return re.search(rf"\branks? (?:\d+, )*{rank}\b", text) is not None


def _sections(text: str) -> dict[int, str]:
    """Each rank's section of a failure report, by rank."""
    parts = re.split(r"^=== rank (\d+): ", text, flags=re.M)
    return {int(parts[i]): parts[i + 1] for i in range(1, len(parts), 2)}


def _shm_rings(pids: list[int]) -> list[str]:
    try:
        names = os.listdir("/dev/shm")
    except OSError:
        return []
    # ring files are named mpdist-<owner pid>-<group>-<src>-<dst> (mpdist.transport.shm)
    return [n for n in names if n.startswith(tuple(f"mpdist-{p}-" for p in pids))]


def _alive(pids: list[int]) -> list[int]:
    out = []
    for pid in pids:
        try:
            if psutil.Process(pid).status() != psutil.STATUS_ZOMBIE:
                out.append(pid)
        except psutil.NoSuchProcess:
            pass
    return out


def warm_up(rank: int, world_size: int) -> int:
    return rank


@pytest.fixture(scope="module", autouse=True)
def _started_helpers() -> None:
    """The forkserver and its helpers start with the first run: before any count is taken."""
    spawn_ranks(warm_up, 2)


def _cases() -> list:
    return [
        pytest.param(ws, fault, seed, id=f"ws{ws}-{fault}-seed{seed}")
        for ws in WORLD_SIZES
        for fault in FAULTS
        for seed in range(FIRST_SEED, FIRST_SEED + N_SEEDS)
    ]


def outcome(case: Case, text: str, timed_out: bool, elapsed: float) -> str:
    """What a run ended as, in the campaign table's words."""
    if timed_out or elapsed > RUN_BOUND:
        return "hang"
    if "wrong value from" in text:
        return "wrong value"
    sections = _sections(text)
    survivors = [r for r in range(case.world_size) if r != case.culprit]
    if all(r in sections and _names(sections[r], case.culprit) for r in survivors):
        return "clear error"
    lines = text.splitlines()
    if any(f"failed in rank {case.culprit} " in line for line in lines[:2]):
        return "harness report"
    return "culprit not named"


@pytest.mark.parametrize(("world_size", "fault", "seed"), _cases())
def test_fault(world_size: int, fault: str, seed: int, tmp_path, monkeypatch) -> None:
    case = plan(seed, world_size, fault)
    rerun = (
        f"rerun: MPDIST_FAULTS_SEED={seed} python -m pytest tests/faults/test_campaign.py "
        f"-k 'ws{world_size}-{fault}-seed{seed}' (culprit rank {case.culprit}, "
        f"fault before collective #{case.at} {case.ops[case.at]})"
    )
    private = tmp_path / "tmp"
    private.mkdir()
    pid_dir = tmp_path / "pids"
    pid_dir.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(private))
    monkeypatch.setenv("TMPDIR", str(private))
    me = psutil.Process()
    fds, threads = me.num_fds(), threading.active_count()
    children = {p.pid for p in me.children(recursive=True)}
    group_timeout = STOP_GROUP_TIMEOUT if fault == "sigstop" else GROUP_TIMEOUT
    start = time.monotonic()
    with pytest.raises(MultiProcessFailure) as info:
        spawn_ranks(
            run_plan, world_size, case, str(pid_dir), timeout=RUN_BOUND, group_timeout=group_timeout
        )
    elapsed = time.monotonic() - start
    text = str(info.value)
    got = outcome(case, text, isinstance(info.value, MultiProcessTimeout), elapsed)
    pids = [int((pid_dir / n).read_text()) for n in os.listdir(pid_dir)]
    # pids: the ranks that reached the plan (a rank may be stopped while still joining the
    # group); any other new descendant (ranks are the forkserver's children) is caught too
    new = [p.pid for p in me.children(recursive=True) if p.pid not in children]
    leaks = {
        "processes": _alive(sorted(set(pids) | set(new))),
        "shm rings": _shm_rings(pids),
        "temp files": os.listdir(private),
        "parent fds": me.num_fds() - fds,
        "parent threads": threading.active_count() - threads,
    }
    leaks = {k: v for k, v in leaks.items() if v}
    table = os.environ.get("MPDIST_FAULTS_TABLE")
    if table:
        with open(table, "a") as f:
            f.write(f"{world_size}\t{fault}\t{seed}\t{got}\t{leaks or ''}\t{elapsed:.1f}\n")
    assert got in ("clear error", "harness report"), f"{got}; {rerun}\n{text}"
    caused = re.search(r"\((\[[\d, ]*\]) only because rank (\d+) failed\)", text)
    if caused:  # the rank blamed is not among those that failed because of it
        assert caused[2] not in caused[1].strip("[]").split(", "), f"{rerun}\n{text}"
    assert not leaks, f"left behind: {leaks}; {rerun}"
