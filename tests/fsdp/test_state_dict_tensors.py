"""State dict values of both FSDPs are Tensors, as torch's: fully_shard's are detached
DTensors sharing the sharded parameters' memory (also while the root unit is gathered,
between forward and backward), and an optimizer's state of them is DTensors; FSDP1's full state dict holds Tensors, its buffers too.
assign=True is refused by both (their parameters are the shards)."""

from __future__ import annotations

import numpy as np
import pytest

import mpdist
from mpdist import nn
from mpdist.autograd import Tensor
from mpdist.fsdp import FullyShardedDataParallel as FSDP
from mpdist.fsdp import StateDictType, fully_shard
from mpdist.fsdp.wrap import ModuleWrapPolicy
from mpdist.optim import Adam
from mpdist.tensor import DTensor
from mpdist.testing import spawn_threads


def model() -> nn.Sequential:
    mpdist.manual_seed(5)
    return nn.Sequential(
        nn.Linear(4, 6, dtype=np.float64),
        nn.BatchNorm1d(6, dtype=np.float64),
        nn.Linear(6, 2, dtype=np.float64),
    )


def _fully_shard(rank: int, ws: int) -> None:
    m = model()
    fully_shard(m[0])
    fully_shard(m[2])
    fully_shard(m)
    sharded = {k: p for k, p in m.named_parameters()}
    sd = m.state_dict()
    assert list(sd) == list(model().state_dict())
    for k, p in sharded.items():
        v = sd[k]
        assert isinstance(v, DTensor) and not v.requires_grad and v is not p
        assert v.placements == p.placements and v.to_local().data_ptr() == p.to_local().data_ptr()
    assert type(sd["1.running_mean"]) is Tensor
    assert sd["1.running_mean"].data_ptr() == m[1].running_mean.data_ptr()
    sd["2.bias"].to_local().fill_(3.0)  # in place: the parameter's piece changes
    assert np.all(m[2].bias.to_local().data == 3.0)
    assert m.state_dict(keep_vars=True)["2.bias"] is sharded["2.bias"]

    x = np.random.default_rng(0).standard_normal((4, 4))
    out = m(x)  # the root unit stays gathered until backward
    gathered = {k: p for k, p in m.named_parameters()}
    assert any(not isinstance(p, DTensor) for p in gathered.values())
    during = m.state_dict()
    assert all(isinstance(during[k], DTensor) for k in sharded)
    assert all(
        during[k].to_local().data_ptr() == p.to_local().data_ptr() for k, p in sharded.items()
    )
    assert all(gathered[k] is p for k, p in m.named_parameters())  # registered as before
    # loading while gathered writes the sharded pieces
    m.load_state_dict(
        {k: v.full_tensor() + 1.0 if isinstance(v, DTensor) else v for k, v in during.items()}
    )
    np.testing.assert_array_equal(sharded["2.bias"].full_tensor().data, 4.0)
    out.sum().backward()
    opt = Adam(m.parameters(), lr=0.1)
    opt.step()  # optimizer state of a DTensor parameter: DTensors placed like it, as torch's
    for p in sharded.values():
        for key in ("exp_avg", "exp_avg_sq"):
            v = opt.state[p][key]
            assert isinstance(v, DTensor) and v._spec == p._spec and v.data.shape == p.data.shape
    assert type(opt.state[sharded["0.weight"]]["step"]) is Tensor
    with pytest.raises(NotImplementedError, match="assign=True"):
        m.load_state_dict(m.state_dict(), assign=True)


@pytest.mark.parametrize("ws", [2])
def test_fully_shard_state_dict_values_are_detached_dtensors_sharing_the_pieces(ws: int) -> None:
    spawn_threads(_fully_shard, ws)


def _fsdp1(rank: int, ws: int) -> tuple[dict, dict]:
    m = FSDP(model(), auto_wrap_policy=ModuleWrapPolicy({nn.Linear}))
    full = m.state_dict()
    with FSDP.state_dict_type(m, StateDictType.SHARDED_STATE_DICT):
        sharded = m.state_dict()
    with pytest.raises(NotImplementedError, match="assign=True"):
        m.load_state_dict(full, assign=True)
    return full, sharded


def test_fsdp1_state_dict_values_are_tensors() -> None:
    want = model().state_dict()
    for full, sharded in spawn_threads(_fsdp1, 2):
        assert set(full) == set(want) and set(sharded) == set(want)
        for k, v in full.items():
            assert type(v) is Tensor and v.dtype == want[k].dtype, k
            np.testing.assert_array_equal(v.data, want[k].data)
        assert all(isinstance(sharded[k], DTensor) for k in ("0.weight", "2.bias"))
        assert type(sharded["1.running_var"]) is Tensor
