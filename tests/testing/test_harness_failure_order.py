"""Which rank failed first, and what the report says about ranks that had to be stopped.

The rank whose exception came first is named first, even though closing its group
makes its peers fail too; ranks killed after a failure or a timeout show their
stacks, including a rank stuck building a group with ``new_group``.
"""

from __future__ import annotations

import os
import time

import numpy as np
import pytest
from _harness_helpers import alive, leftover_files

from mpdist import distributed as dist
from mpdist.testing import (
    MultiProcessFailure,
    MultiProcessTimeout,
    _coordinator,
    spawn_ranks,
    spawn_threads,
)
from mpdist.testing._records import RankRecord
from mpdist.testing._worker import TaskSpec


def fail_while_peers_reduce(rank: int, world_size: int, culprit: int) -> None:
    if rank == culprit:
        raise ValueError(f"real failure in rank {rank}")
    dist.all_reduce(np.ones(1))


def _rank_sections(text: str) -> list[str]:
    return [line for line in text.splitlines() if line.startswith("=== rank ")]


@pytest.mark.parametrize(("world_size", "culprit"), [(2, 1), (3, 2)])
def test_the_rank_that_failed_first_is_named_first(world_size: int, culprit: int) -> None:
    # Before the fix the peers' lost-connection errors won about a third of the runs
    # (the failing rank closed its group before telling the parent); now the order
    # follows causality, so every run must name the culprit.
    for _ in range(5):
        with pytest.raises(MultiProcessFailure) as info:
            spawn_ranks(fail_while_peers_reduce, world_size, culprit)
        text = str(info.value)
        others = [r for r in range(world_size) if r != culprit]
        # The first line is the cause itself, then the harness's headline.
        assert text.splitlines()[0] == f"rank {culprit}: ValueError: real failure in rank {culprit}"
        assert text.splitlines()[1].endswith(
            f"failed in rank {culprit} (world size {world_size}); failing ranks: "
            f"{sorted([*others, culprit])} ({others} only because rank {culprit} failed)"
        ), text
        sections = _rank_sections(text)
        assert (
            sections[0] == f"=== rank {culprit}: failed: ValueError: real failure in rank {culprit}"
        )
        for line in sections[1:]:
            # Every other rank is a consequence: it lost its peer or was aborted.
            assert f"(rank {culprit} failed first)" in line, text


def test_causes_come_before_consequences_then_the_earliest() -> None:
    # The parent's choice, whatever order the pipes were read in: rank 0's lost connection
    # was caught before rank 2's error but is a consequence; rank 1 failed later.
    spec = TaskSpec(
        kind="call", module="m", path=None, qualname="f", method="f", world_size=3,
        file_name="", workdir="", test_id="t",
    )  # fmt: skip
    handles = [_coordinator._Handle(rank, None, None) for rank in range(3)]
    lost = "all_reduce: rank 0 lost its connection to rank 2"
    network = "mpdist.errors.DistNetworkError"
    handles[0].failing = RankRecord(0, "failed", exc_type=network, message=lost, failed_at=1.0)
    handles[1].failing = RankRecord(
        1, "failed", exc_type="ValueError", message="later", failed_at=5.0
    )
    handles[2].failing = RankRecord(
        2, "failed", exc_type="ValueError", message="first", failed_at=2.0
    )
    first = _coordinator.RankSet(spec, handles, pooled=False).first_failed(now=0.0)
    assert first is not None and first[0].rank == 2


def fail_while_peer_threads_reduce(rank: int, world_size: int) -> None:
    if rank == world_size - 1:
        raise ValueError("real failure")
    dist.all_reduce(np.ones(1))


def test_threads_name_the_first_failure_first() -> None:
    for _ in range(5):
        with pytest.raises(MultiProcessFailure) as info:
            spawn_threads(fail_while_peer_threads_reduce, 3)
        text = str(info.value)
        assert "failed in rank 2 " in text.splitlines()[1], text
        sections = _rank_sections(text)
        assert sections[0] == "=== rank 2: failed: ValueError: real failure"
        assert all("(rank 2 failed first)" in line for line in sections[1:]), text


def deaf_to_the_abort(rank: int, world_size: int, pid_file: str) -> None:
    if rank == 0:
        with open(pid_file + ".tmp", "w") as f:
            f.write(str(os.getpid()))
        os.rename(pid_file + ".tmp", pid_file)
        time.sleep(120)  # not a collective: the abort cannot stop it, only the kill
    while not os.path.exists(pid_file):  # rank 1 fails once rank 0 is about to sleep
        time.sleep(0.01)
    raise ValueError("rank 1 gives up")


def test_a_rank_killed_after_the_abort_grace_shows_its_stack(
    monkeypatch: pytest.MonkeyPatch, tmp_path
) -> None:
    monkeypatch.setattr(_coordinator, "ABORT_GRACE", 1.0)
    pid_file = str(tmp_path / "pid")
    with pytest.raises(MultiProcessFailure) as info:
        spawn_ranks(deaf_to_the_abort, 2, pid_file, backend=None)
    text = str(info.value)
    assert "failed in rank 1 " in text.splitlines()[1]
    assert "=== rank 0: killed after rank 1 failed" in text
    dump = text.split("--- rank 0 stack dump ---", 1)[1]
    assert "in deaf_to_the_abort" in dump  # the frame it was stuck in
    with open(pid_file) as f:
        assert not alive([int(f.read())])


def stuck_in_new_group(rank: int, world_size: int, fail: bool, marker: str) -> None:
    if rank == 0:
        open(marker, "w").close()
        dist.new_group([0, 1])  # waits for rank 1's address, which never comes
    while not os.path.exists(marker):  # rank 1 acts once rank 0 is entering new_group
        time.sleep(0.01)
    if fail:
        raise ValueError("rank 1 never joins the new group")
    time.sleep(120)


def test_a_rank_stuck_in_new_group_is_dumped_and_killed_after_a_failure(
    monkeypatch: pytest.MonkeyPatch, private_tmp, tmp_path
) -> None:
    monkeypatch.setattr(_coordinator, "ABORT_GRACE", 1.0)
    marker = str(tmp_path / "entering")
    with pytest.raises(MultiProcessFailure) as info:
        spawn_ranks(stuck_in_new_group, 2, True, marker, group_timeout=60)
    text = str(info.value)
    assert "failed in rank 1 " in text.splitlines()[1]
    rank0 = text.split("=== rank 0: ", 1)[1]
    # The abort may or may not reach a group still connecting its mesh; either way the
    # report says rank 0 was in new_group.
    if rank0.startswith("killed"):
        assert "--- rank 0 stack dump ---" in rank0
    else:
        assert rank0.startswith("failed after the abort (rank 1 failed first)"), text
    assert "in new_group" in rank0, text
    assert leftover_files(private_tmp) == []  # store, outputs and dumps are gone too


def test_a_rank_stuck_in_new_group_is_dumped_and_killed_at_the_timeout(
    private_tmp, tmp_path
) -> None:
    with pytest.raises(MultiProcessFailure) as info:
        spawn_ranks(
            stuck_in_new_group, 2, False, str(tmp_path / "entering"), timeout=5, group_timeout=60
        )
    text = str(info.value)
    assert isinstance(info.value, MultiProcessTimeout)
    assert "timed out after 5 s" in text.splitlines()[0]  # no rank failed: the headline first
    assert "ranks still running: [0, 1]" in text.splitlines()[0]
    rank0 = text.split("--- rank 0 stack dump ---", 1)[1].split("=== rank 1", 1)[0]
    assert "in new_group" in rank0, text
    rank1 = text.split("--- rank 1 stack dump ---", 1)[1]
    assert "in stuck_in_new_group" in rank1, text
    assert leftover_files(private_tmp) == []


def group_built_after_the_abort(rank: int, world_size: int, store_file: str, marker: str) -> None:
    if rank == 2:  # not in any group: its failure aborts ranks 0 and 1 through the harness
        while not os.path.exists(marker):
            time.sleep(0.01)
        raise ValueError("rank 2 fails")
    from mpdist.store import FileStore

    dist.init_process_group("tcp", store=FileStore(store_file, 2), rank=rank, world_size=2)
    if rank == 0:
        open(marker, "w").close()
        group = dist.new_group([0, 1])  # completes only after rank 1 was aborted
    else:
        with pytest.raises(Exception, match="aborted by the harness"):
            dist.barrier()  # only the abort ends it: rank 0 never comes
        group = dist.new_group([0, 1])
    # Both ranks' new group was registered after the abort came; waiting on it (each rank
    # receives from the other, so only an abort ends this) must raise all the same.
    dist.recv(np.zeros(1), src=1 - rank, group=group)


def test_the_abort_reaches_a_group_built_after_it(tmp_path) -> None:
    store_file, marker = str(tmp_path / "store"), str(tmp_path / "entering")
    with pytest.raises(MultiProcessFailure) as info:
        spawn_ranks(group_built_after_the_abort, 3, store_file, marker, backend=None)
    text = str(info.value)
    assert "failed in rank 2 " in text.splitlines()[1], text
    # Not killed after the grace period: the re-applied abort stopped one of them, and the
    # other was aborted as well or lost that peer, whichever came first.
    lines = {
        r: next(x for x in _rank_sections(text) if x.startswith(f"=== rank {r}:")) for r in (0, 1)
    }
    assert all(
        "failed after" in line and "(rank 2 failed first)" in line for line in lines.values()
    )
    assert any("failed after the abort" in line for line in lines.values()), text


def network_error_then_deaf(rank: int, world_size: int, marker: str) -> None:
    if rank == 1:
        open(marker, "w").close()
        time.sleep(120)  # killed after the grace period
    while not os.path.exists(marker):
        time.sleep(0.01)
    from mpdist.errors import DistNetworkError

    raise DistNetworkError("rank 0's own network failure")


def test_a_rank_killed_by_the_harness_is_never_the_first_failure(
    monkeypatch: pytest.MonkeyPatch, tmp_path
) -> None:
    # Rank 0's error looks like a consequence (a DistNetworkError) but is the only real
    # failure; rank 1 died only because the harness killed it.
    monkeypatch.setattr(_coordinator, "ABORT_GRACE", 1.0)
    with pytest.raises(MultiProcessFailure) as info:
        spawn_ranks(network_error_then_deaf, 2, str(tmp_path / "m"), backend=None)
    text = str(info.value)
    assert "failed in rank 0 " in text.splitlines()[1], text
    assert "=== rank 1: killed after rank 0 failed" in text


def stop_while_a_chain_waits(rank: int, world_size: int) -> None:
    # rank 0 stops; rank 1 waits for rank 0, rank 2 for rank 1: rank 2 times out first,
    # naming rank 1, which itself only waits for the stopped rank 0
    if rank == 0:
        os.kill(os.getpid(), 19)  # SIGSTOP: alive, silent, deaf to the harness's abort
    elif rank == 1:
        time.sleep(1.0)
        dist.recv(np.zeros(1), src=0)
    else:
        dist.recv(np.zeros(1), src=1)


def test_a_stopped_rank_is_named_although_a_peer_timed_out_first() -> None:
    with pytest.raises(MultiProcessFailure) as info:
        spawn_ranks(stop_while_a_chain_waits, 3, timeout=60, group_timeout=2.0)
    text = str(info.value)
    assert not isinstance(info.value, MultiProcessTimeout)
    assert text.splitlines()[0].startswith("rank 0: Unresponsive: rank 0 stopped responding"), text
    assert "failed in rank 0 (world size 3)" in text.splitlines()[1], text
    sections = _rank_sections(text)
    assert sections[0].startswith("=== rank 0: failed: Unresponsive"), text
    assert any(
        "rank 2: failed after" in line and "rank 0 failed first" in line for line in sections
    )
