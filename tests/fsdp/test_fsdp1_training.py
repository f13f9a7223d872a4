"""FSDP1 training equals single-process full-batch training (rank threads)."""

from __future__ import annotations

import pytest
from fsdp_helpers import assert_matches, reference, train_fsdp

from mpdist.fsdp import ShardingStrategy
from mpdist.testing import spawn_threads


@pytest.mark.parametrize("ws", [2, 4])
@pytest.mark.parametrize("kind", ["sgd", "adam"])
@pytest.mark.parametrize("policy", ["none", "linear", "size"])
def test_full_shard_matches_single_process(ws: int, kind: str, policy: str) -> None:
    want = reference(kind)
    for got in spawn_threads(train_fsdp, ws, kind, policy):
        assert_matches(got, want)


@pytest.mark.parametrize(
    "strategy",
    [ShardingStrategy.FULL_SHARD, ShardingStrategy.SHARD_GRAD_OP, ShardingStrategy.NO_SHARD],
)
@pytest.mark.parametrize("orig", [False, True])
def test_each_strategy_and_orig_params(strategy: ShardingStrategy, orig: bool) -> None:
    want = reference("adam")
    for got in spawn_threads(train_fsdp, 2, "adam", "linear", strategy, orig):
        assert_matches(got, want)
