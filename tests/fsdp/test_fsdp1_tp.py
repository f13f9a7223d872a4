"""FSDP1 over tensor parallelism on a 2 x 2 (dp, tp) mesh: training equals one process on the
full batch, and the state dicts of tensor-parallel parameters."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest
from fsdp_helpers import assert_matches, mlp, optimizer, reference, train_on_rows

from mpdist.device_mesh import init_device_mesh
from mpdist.fsdp import FullyShardedDataParallel as FSDP
from mpdist.fsdp import StateDictType
from mpdist.fsdp.wrap import ModuleWrapPolicy
from mpdist.nn import Linear
from mpdist.tensor import DTensor, Replicate, Shard
from mpdist.tensor.parallel import ColwiseParallel, RowwiseParallel, parallelize_module
from mpdist.tensor.placement_types import _StridedShard
from mpdist.testing import spawn_threads

PLAN = {"0": ColwiseParallel(), "2": RowwiseParallel()}  # layer "4" stays a plain Linear


def whole(v: Any) -> np.ndarray:
    return v.full_tensor().data if isinstance(v, DTensor) else np.asarray(v)


def fsdp_tp(kind: str = "adam", wrap: bool = False) -> tuple[FSDP, Any, int]:
    """The seed's composition: FSDP(parallelize_module(m, mesh["tp"], plan), mesh["dp"])."""
    mesh = init_device_mesh("cpu", (2, 2), mesh_dim_names=("dp", "tp"))
    tp_model = parallelize_module(mlp(), mesh["tp"], PLAN)
    model = FSDP(
        tp_model,
        use_orig_params=True,
        device_mesh=mesh["dp"],
        auto_wrap_policy=ModuleWrapPolicy({Linear}) if wrap else None,
    )
    return model, optimizer(kind, model.parameters()), mesh["dp"].get_local_rank()


def train(rank: int, ws: int, kind: str, wrap: bool) -> dict[str, np.ndarray]:
    model, opt, dp = fsdp_tp(kind, wrap)
    train_on_rows(model, opt, dp, 2)  # the two tp ranks of a dp rank see the same rows
    return {k: whole(v) for k, v in model.state_dict().items()}


@pytest.mark.mpdist(world_size=4)
def test_processes_fsdp_over_tp_trains_like_one_process(rank, world_size) -> None:
    assert_matches(train(rank, world_size, "adam", False), reference("adam"))


@pytest.mark.parametrize("kind", ["sgd", "adam"])
@pytest.mark.parametrize("wrap", [False, True])
def test_threads_fsdp_over_tp_trains_like_one_process(kind: str, wrap: bool) -> None:
    want = reference(kind)
    for got in spawn_threads(train, 4, kind, wrap):
        assert_matches(got, want)


def _sharded_state_dict(rank: int, ws: int) -> tuple[int, dict, dict, dict]:
    model, _, dp = fsdp_tp("sgd", wrap=True)
    with FSDP.state_dict_type(model, StateDictType.SHARDED_STATE_DICT):
        sd = model.state_dict()
    placed = {k: (tuple(v.placements), tuple(v.to_local().shape)) for k, v in sd.items()}
    values = {k: whole(v) for k, v in sd.items()}
    # load changed values back (TP parameters as their TP DTensors), read them in full
    changed = {
        k: DTensor.from_local(
            v.to_local() + 1.0, v.device_mesh, v.placements, shape=v.shape, stride=v.stride()
        )
        for k, v in sd.items()
    }
    with FSDP.state_dict_type(model, StateDictType.SHARDED_STATE_DICT):
        model.load_state_dict(changed)
    return dp, placed, values, {k: whole(v) for k, v in model.state_dict().items()}


def test_sharded_state_dict_of_tp_parameters_round_trips() -> None:
    want = mlp().state_dict()
    for dp, placed, values, again in spawn_threads(_sharded_state_dict, 4):
        # TP parameters: their TP piece cut over dp on the (dp, tp) mesh (as fully_shard
        # places them); the rest: Shard(0) over dp
        assert placed["0.weight"] == ((_StridedShard(0, 2), Shard(0)), (6, 6))
        assert placed["2.weight"] == ((Shard(0), Shard(1)), (12, 12))
        assert placed["2.bias"] == ((Shard(0), Replicate()), (12,))
        assert placed["4.weight"] == ((Shard(0),), ((2, 1)[dp], 24))  # 3 rows over 2
        assert_matches(values, want, 0)
        assert_matches(again, {k: v + 1.0 for k, v in want.items()}, 0)
