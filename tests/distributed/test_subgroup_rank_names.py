"""Errors in a subgroup name global ranks (SPEC: src, dst and peers are global ranks
everywhere): in the group [1, 2] of a world of 3, global rank 2 is group rank 1, so an error
naming group ranks would blame the wrong process."""

from __future__ import annotations

import os
import re

import numpy as np
import pytest

import mpdist as dist
from mpdist import DistBackendError, DistNetworkError
from mpdist.testing import spawn_ranks, spawn_threads


def _ranks_named(text: str) -> set[int]:
    return {int(r) for r in re.findall(r"\brank (\d+)", text)}


def mismatch_in_subgroup(rank: int, n: int) -> str | None:
    sub = dist.new_group([1, 2])
    if rank == 0:
        return None
    # global rank 1 sends 4 elements, global rank 2 sends 5: a shape mismatch
    with pytest.raises(DistBackendError) as info:
        dist.all_reduce(np.ones(3 + rank), group=sub)
    return str(info.value)


def test_mismatch_in_a_subgroup_names_global_ranks():
    res = spawn_threads(mismatch_in_subgroup, 3)
    for rank in (1, 2):
        assert "all_reduce" in res[rank], res[rank]
        assert _ranks_named(res[rank]) == {1, 2}, res[rank]


def dies_in_subgroup(rank: int, n: int) -> str | None:
    sub = dist.new_group([1, 2])
    if rank == 0:
        return None
    a = np.ones(4)
    dist.all_reduce(a, group=sub)
    if rank == 2:
        os._exit(3)
    with pytest.raises(DistNetworkError) as info:
        dist.all_reduce(a, group=sub)
    return str(info.value)


def test_dead_peer_in_a_subgroup_is_named_by_its_global_rank():
    res = spawn_ranks(dies_in_subgroup, 3, may_die=[2], group_timeout=15)
    assert res[2] is None
    # "rank 1 lost its connection to rank 2": group ranks would have said 0 and 1
    assert _ranks_named(res[1]) == {1, 2}, res[1]
    assert "lost its connection to rank 2" in res[1], res[1]
