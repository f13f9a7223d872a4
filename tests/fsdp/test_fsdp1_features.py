"""FSDP1: shard sizes, hybrid sharding, state dicts, no_sync, the memory claim, errors."""

from __future__ import annotations

import numpy as np
import pytest
from fsdp_helpers import N, assert_matches, data, mlp, optimizer, reference, train_fsdp

import mpdist
import mpdist.distributed as dist
from mpdist import nn
from mpdist.device_mesh import init_device_mesh
from mpdist.fsdp import FullyShardedDataParallel as FSDP
from mpdist.fsdp import ShardingStrategy, StateDictType, peak_unsharded_bytes
from mpdist.fsdp.wrap import ModuleWrapPolicy
from mpdist.nn import functional as F
from mpdist.testing import spawn_threads


@pytest.mark.mpdist(world_size=2)
def test_processes_full_shard_adam_equals_single_process(rank, world_size) -> None:
    assert_matches(
        train_fsdp(rank, world_size, "adam", "linear", use_orig_params=True), reference("adam")
    )


@pytest.mark.mpdist(world_size=4)
def test_processes_four_ranks_hybrid_on_2x2_mesh(rank, world_size) -> None:
    mesh = init_device_mesh("cpu", (2, 2), mesh_dim_names=("replicate", "shard"))
    got = train_fsdp(
        rank, world_size, "sgd", "linear", ShardingStrategy.HYBRID_SHARD, device_mesh=mesh
    )
    assert_matches(got, reference("sgd"))


def _shard_sizes(rank: int, ws: int) -> list[tuple[int, int]]:
    model = FSDP(mlp(), auto_wrap_policy=ModuleWrapPolicy({nn.Linear}))
    return [
        (u._handle.numel, u._handle.flat_param.data.size)
        for u in model.modules()
        if isinstance(u, FSDP) and u._handle.entries
    ]


@pytest.mark.parametrize("ws", [2, 4])
def test_flat_shard_holds_ceil_numel_over_world(ws: int) -> None:
    for sizes in spawn_threads(_shard_sizes, ws):
        assert sorted(n for n, _ in sizes) == [75, 168, 600]
        for numel, local in sizes:
            assert local == -(-numel // ws)  # 75 on 2 ranks: 38 (one padding zero)


def _state_dicts(rank: int, ws: int) -> tuple[dict, dict]:
    model = FSDP(mlp(), auto_wrap_policy=ModuleWrapPolicy({nn.Linear}), use_orig_params=True)
    full = model.state_dict()
    with FSDP.state_dict_type(model, StateDictType.SHARDED_STATE_DICT):
        sharded = model.state_dict()
        assert tuple(sharded["2.weight"].to_local().shape) == (-(-24 // ws), 24)
    # load a changed full state dict, read it back sharded, load that into a fresh model
    changed = {k: v + 1.0 for k, v in full.items()}
    model.load_state_dict(changed)
    with FSDP.state_dict_type(model, StateDictType.SHARDED_STATE_DICT):
        sharded = model.state_dict()
    fresh = FSDP(
        mlp(seed=9), auto_wrap_policy=ModuleWrapPolicy({nn.Linear}), sync_module_states=True
    )
    with FSDP.state_dict_type(fresh, StateDictType.SHARDED_STATE_DICT):
        fresh.load_state_dict(sharded)
    return full, fresh.state_dict()


def test_state_dicts_round_trip_and_load_into_unwrapped_model() -> None:
    want = mlp().state_dict()
    for full, again in spawn_threads(_state_dicts, 2):
        assert_matches(full, want, 0)
        assert_matches(again, {k: v + 1.0 for k, v in want.items()}, 0)
        plain = mlp(seed=5)
        plain.load_state_dict(again)
        assert_matches(plain.state_dict(), again, 0)


def _no_sync(rank: int, ws: int) -> dict:
    model = FSDP(mlp(), auto_wrap_policy=ModuleWrapPolicy({nn.Linear}))
    opt = optimizer("sgd", model.parameters())
    per = N // ws
    x, y = data(0)
    half = [
        slice(rank * per, rank * per + per // 2),
        slice(rank * per + per // 2, (rank + 1) * per),
    ]
    opt.zero_grad()
    with model.no_sync():
        (F.mse_loss(model(x[half[0]]), y[half[0]]) / 2).backward()
    (F.mse_loss(model(x[half[1]]), y[half[1]]) / 2).backward()
    opt.step()
    return model.state_dict()


def test_no_sync_accumulates_then_reduces_the_sum() -> None:
    want = reference("sgd", steps=1)
    for got in spawn_threads(_no_sync, 2):
        assert_matches(got, want)


class Deep(nn.Module):
    """Four equal Linear units."""

    def __init__(self) -> None:
        super().__init__()
        mpdist.manual_seed(0)
        self.layers = nn.Sequential(*[nn.Linear(32, 32, dtype=np.float64) for _ in range(4)])

    def forward(self, x):
        return self.layers(x)


def _peak(rank: int, ws: int) -> tuple[int, int, int]:
    model = FSDP(Deep(), auto_wrap_policy=ModuleWrapPolicy({nn.Linear}))
    peak_unsharded_bytes(reset=True)
    x = np.ones((4, 32))
    model(x).sum().backward()
    unit = (32 * 32 + 32) * 8
    return peak_unsharded_bytes(), 4 * unit, unit


@pytest.mark.parametrize("ws", [2, 4])
def test_peak_unsharded_bytes_is_a_shard_plus_two_units(ws: int) -> None:
    for peak, total, unit in spawn_threads(_peak, ws):
        padded_unit = -(-unit // (8 * ws)) * ws * 8
        assert 0 < peak <= total // ws + 2 * padded_unit
        assert peak < total  # never the whole model at once


def _differing(rank: int, ws: int) -> None:
    mpdist.manual_seed(rank)  # every rank draws its own weights
    FSDP(nn.Linear(2, 3))


def test_parameters_differing_across_ranks_are_named() -> None:
    with pytest.raises(Exception, match="weight, bias differ across ranks"):
        spawn_threads(_differing, 2)


def _mesh_errors(rank: int, ws: int) -> None:
    mesh = init_device_mesh("cpu", (2,))
    with pytest.raises(ValueError, match="Cannot pass both process_group and device_mesh"):
        FSDP(nn.Linear(2, 3), process_group=dist.group.WORLD, device_mesh=mesh)
    with pytest.raises(ValueError, match="needs a 2-D device_mesh"):
        FSDP(nn.Linear(2, 3), device_mesh=mesh, sharding_strategy=ShardingStrategy.HYBRID_SHARD)


def test_mesh_not_matching_the_strategy_is_an_error() -> None:
    spawn_threads(_mesh_errors, 2)


def _groups_not_matching(rank: int, ws: int) -> None:
    halves = [dist.new_group([0, 1]), dist.new_group([2, 3])]
    mine, other = halves[rank // 2], halves[1 - rank // 2]
    with pytest.raises(ValueError, match=rf"this rank \({rank}\) is not a member of process_group"):
        FSDP(nn.Linear(2, 3), process_group=other)
    # hybrid: the intra- and inter-node groups must cross at this rank only
    pair = sorted(dist.get_process_group_ranks(mine))
    with pytest.raises(ValueError, match=rf"must share only this rank .* share ranks \{pair}"):
        FSDP(
            nn.Linear(2, 3),
            process_group=(mine, mine),
            sharding_strategy=ShardingStrategy.HYBRID_SHARD,
        )


def test_group_this_rank_is_not_in_is_an_error() -> None:
    spawn_threads(_groups_not_matching, 4)
