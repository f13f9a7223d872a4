"""What the fault campaigns check of every run: the outcome (named culprit, no hang, no wrong
value) and that nothing is left behind (processes, shared-memory rings, temp files, the
parent's descriptors and threads). One run is :func:`check_run`; both campaigns call it."""

from __future__ import annotations

import os
import re
import tempfile
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import psutil
import pytest

from mpdist.testing import MultiProcessFailure, MultiProcessTimeout

RUN_BOUND = 60.0  # the harness's own deadline: reaching it is a hang
THOROUGH = os.environ.get("MPDIST_FAULTS", "short") == "thorough"
FIRST_SEED = int(os.environ.get("MPDIST_FAULTS_SEED", "0"))
N_SEEDS = int(os.environ.get("MPDIST_FAULTS_SEEDS", "20")) if THOROUGH else 1
# A fault that is noticed by a lost connection or the harness's abort must be noticed long
# before a group times out (a run that waits this long is a hang); one noticed only by a
# timeout (a stopped rank) gets a short one, still well above how long a step takes here.
GROUP_TIMEOUT = RUN_BOUND
# The one known limitation (test_creation): survivors that lose a TCPStore whose host rank
# shut its sockets but lives can name only the server's address, not its rank.
STORE_HOST_LOST = "store host lost"
SILENT_GROUP_TIMEOUT = 4.0


def names(text: str, rank: int) -> bool:
    """Whether ``text`` names ``rank`` ("rank 2", or "ranks 1, 2")."""
    return re.search(rf"\branks? (?:\d+, )*{rank}\b", text) is not None


def sections(text: str) -> dict[int, str]:
    """Each rank's section of a failure report, by rank."""
    parts = re.split(r"^=== rank (\d+): ", text, flags=re.M)
    return {int(parts[i]): parts[i + 1] for i in range(1, len(parts), 2)}


def shm_rings(pids: list[int]) -> list[str]:
    try:
        entries = os.listdir("/dev/shm")
    except OSError:
        return []
    # ring files are named mpdist-<owner pid>-<group>-<src>-<dst> (mpdist.transport.shm)
    return [n for n in entries if n.startswith(tuple(f"mpdist-{p}-" for p in pids))]


def alive(pids: list[int]) -> list[int]:
    out = []
    for pid in pids:
        try:
            if psutil.Process(pid).status() != psutil.STATUS_ZOMBIE:
                out.append(pid)
        except psutil.NoSuchProcess:
            pass
    return out


def outcome(case: Any, text: str, timed_out: bool, elapsed: float) -> str:
    """What a run ended as, in the campaign table's words (``case`` has ``world_size``
    and ``culprit``)."""
    if timed_out or elapsed > RUN_BOUND:
        return "hang"
    if "wrong value from" in text:
        return "wrong value"
    by_rank = sections(text)
    survivors = [r for r in range(case.world_size) if r != case.culprit]
    if all(r in by_rank and names(by_rank[r], case.culprit) for r in survivors):
        return "clear error"
    lines = text.splitlines()
    if any(f"failed in rank {case.culprit} " in line for line in lines[:2]):
        return "harness report"
    return "culprit not named"


def check_run(
    label: str,
    case: Any,
    rerun: str,
    run: Callable[[str | None], list[Any]],
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    processes: bool = True,
    no_fault: Callable[[list[Any]], bool] | None = None,
    explained: Callable[[str], str | None] | None = None,
) -> None:
    """Run ``run(pid_dir)`` and check its outcome and leftovers.

    The run must raise ``MultiProcessFailure``, unless it returns the ranks' values and
    ``no_fault(values)`` says the fault did no harm (close_sockets with nothing to close, or whose
    ranks still finished every collective, each result checked, through shared memory).
    A failure that does not name the culprit passes only if ``explained(text)`` names the
    known limitation it is (the outcome it returns is counted apart in the table).
    Rank processes write their pid into ``pid_dir``; with ``processes=False`` (rank threads)
    it is None. ``MPDIST_FAULTS_TABLE=path`` appends a line per run.
    """
    private = tmp_path / "tmp"
    private.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(private))
    monkeypatch.setenv("TMPDIR", str(private))
    pid_dir = tmp_path / "pids"
    pid_dir.mkdir()
    me = psutil.Process()
    fds, threads = me.num_fds(), threading.active_count()
    children = {p.pid for p in me.children(recursive=True)}
    start = time.monotonic()
    try:
        values = run(str(pid_dir) if processes else None)
    except MultiProcessFailure as e:
        elapsed = time.monotonic() - start
        text = str(e)
        got = outcome(case, text, isinstance(e, MultiProcessTimeout), elapsed)
        if got == "culprit not named" and explained is not None:
            got = explained(text) or got
    else:
        elapsed = time.monotonic() - start
        text = f"the run passed: {values!r}"
        got = "no fault" if no_fault is not None and no_fault(values) else "passed"
    pids = [int((pid_dir / n).read_text()) for n in os.listdir(pid_dir)]
    # pids: the ranks that reached the plan (a rank may be stopped while still joining the
    # group); any other new descendant (ranks are the forkserver's children) is caught too
    new = [p.pid for p in me.children(recursive=True) if p.pid not in children]
    leaks = {
        "processes": alive(sorted(set(pids) | set(new))),
        "shm rings": shm_rings(pids),
        "temp files": os.listdir(private),
        "parent fds": me.num_fds() - fds,
        "parent threads": threading.active_count() - threads,
    }
    leaks = {k: v for k, v in leaks.items() if v}
    table = os.environ.get("MPDIST_FAULTS_TABLE")
    if table:
        with open(table, "a") as f:
            f.write(f"{label}\t{got}\t{leaks or ''}\t{elapsed:.1f}\n")
    ok = ("clear error", "harness report", "no fault", STORE_HOST_LOST)
    assert got in ok, f"{got}; {rerun}\n{text}"
    caused = re.search(r"\((\[[\d, ]*\]) only because rank (\d+) failed\)", text)
    if caused:  # the rank blamed is not among those that failed because of it
        assert caused[2] not in caused[1].strip("[]").split(", "), f"{rerun}\n{text}"
    assert not leaks, f"left behind: {leaks}; {rerun}"


def warm_up(rank: int, world_size: int) -> int:
    """A run that starts the forkserver and its helpers (before any count is taken)."""
    return rank
