"""The fault campaign (issue 17 item 5): one rank breaks inside a seeded mix of collectives.

For each world size and fault, real rank processes run ``campaign.plan``'s mix; the culprit
raises, exits, crashes, is killed or stopped, or loses its sockets just before a seeded
collective. The run must end, well within its bound, in one failure that names the culprit
(every survivor's error names it, or the harness's headline does), never a hang and never a
wrong value (a culprit that lost only its sockets may also finish every collective, each
result checked: its small messages go through shared memory); and nothing may be left: no rank process, shared-memory ring, temp file, or
thread or descriptor of the parent.

Short mode (the default, in CI): one seed per (world size, fault). ``MPDIST_FAULTS=thorough``
runs ``MPDIST_FAULTS_SEEDS`` seeds (default 20) each. ``MPDIST_FAULTS_SEED=S`` starts the
seeds at S (a failing case prints the command that reruns it).
"""

from __future__ import annotations

import pytest
from campaign import FAULTS, plan, run_plan
from checks import (
    FIRST_SEED,
    GROUP_TIMEOUT,
    N_SEEDS,
    RUN_BOUND,
    SILENT_GROUP_TIMEOUT,
    check_run,
)

from mpdist.testing import spawn_ranks

WORLD_SIZES = (2, 3, 5)


def _cases() -> list:
    return [
        pytest.param(ws, fault, seed, id=f"ws{ws}-{fault}-seed{seed}")
        for ws in WORLD_SIZES
        for fault in FAULTS
        for seed in range(FIRST_SEED, FIRST_SEED + N_SEEDS)
    ]


@pytest.mark.parametrize(("world_size", "fault", "seed"), _cases())
def test_fault(world_size: int, fault: str, seed: int, tmp_path, monkeypatch) -> None:
    case = plan(seed, world_size, fault)
    rerun = (
        f"rerun: MPDIST_FAULTS_SEED={seed} python -m pytest tests/faults/test_campaign.py "
        f"-k 'ws{world_size}-{fault}-seed{seed}' (culprit rank {case.culprit}, "
        f"fault before collective #{case.at} {case.ops[case.at]})"
    )
    # A stopped rank is noticed only by a timeout; every other fault by a lost connection.
    group_timeout = SILENT_GROUP_TIMEOUT if fault == "sigstop" else GROUP_TIMEOUT

    def run(pid_dir: str | None) -> list:
        return spawn_ranks(
            run_plan, world_size, case, pid_dir, timeout=RUN_BOUND, group_timeout=group_timeout
        )

    def every_collective_done(values: list) -> bool:
        # close_sockets: ranks of one host exchange small collective messages through
        # shared memory, which the fault leaves working; a run whose every collective
        # completed (each result checked) is correct, and the loss shows when a message
        # needs TCP
        return fault == "close_sockets" and values == [len(case.ops)] * world_size

    label = f"collectives\t{world_size}\t{fault}\t{seed}"
    check_run(label, case, rerun, run, tmp_path, monkeypatch, no_fault=every_collective_done)
