"""``fully_shard`` beyond plain training: HSDP on a 2 x 2 mesh, ``replicate`` over sharded
submodules (torch's ``test_replicate_fully_shard_init`` scenario), gradient accumulation
without sync, prefetching on and off, and the memory claim (issue 13 item 4) from the
live-buffer count.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest

import mpdist
from mpdist import nn
from mpdist.device_mesh import init_device_mesh
from mpdist.fsdp import fully_shard, live_unsharded_bytes, peak_unsharded_bytes
from mpdist.nn import functional as F
from mpdist.optim import SGD, Adam
from mpdist.parallel import replicate
from mpdist.tensor import DTensor, Replicate, Shard

N = 24


def data(step: int, cols: int = 6, out: int = 3) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(300 + step)
    return rng.standard_normal((N, cols)), rng.standard_normal((N, out))


def mlp() -> nn.Sequential:
    mpdist.manual_seed(11)
    return nn.Sequential(
        nn.Linear(6, 10, dtype=np.float64),
        nn.ReLU(),
        nn.Linear(10, 3, dtype=np.float64),
    )


def whole(p: Any) -> np.ndarray:
    return p.full_tensor().data if isinstance(p, DTensor) else p.data


def check_equal(model: nn.Module, ref: nn.Module) -> None:
    got = dict(model.named_parameters())
    for k, p in ref.named_parameters():
        np.testing.assert_allclose(whole(got[k]), p.data, rtol=1e-6, atol=1e-9, err_msg=k)


def ref_step(ref: nn.Module, opt: Any, x: np.ndarray, y: np.ndarray) -> None:
    opt.zero_grad()
    F.mse_loss(ref(x), y).backward()
    opt.step()


@pytest.mark.world_size(4)
@pytest.mark.mpdist
def test_hsdp_on_a_2x2_mesh_trains_like_one_process(rank: int, world_size: int) -> None:
    mesh = init_device_mesh("cpu", (2, 2), mesh_dim_names=("replicate", "shard"))
    model, ref = mlp(), mlp()
    fully_shard(model[0], mesh=mesh)
    fully_shard(model, mesh=mesh)
    w = model[0].weight
    assert w.placements == (Replicate(), Shard(0)) and w.to_local().shape == (5, 6)
    opt, ref_opt = Adam(model.parameters(), lr=0.01), Adam(ref.parameters(), lr=0.01)
    rows = slice(rank * 6, (rank + 1) * 6)
    for step in range(3):
        x, y = data(step)
        opt.zero_grad()
        F.mse_loss(model(x[rows]), y[rows]).backward()
        opt.step()
        ref_step(ref, ref_opt, x, y)
    check_equal(model, ref)


class ToyModel(nn.Module):
    """torch's test_replicate_fully_shard_init model (three bias-free linears, a projection)."""

    def __init__(self, dim: int) -> None:
        super().__init__()
        mpdist.manual_seed(2)
        self.linears = nn.Sequential(*[nn.Linear(dim, dim, bias=False) for _ in range(3)])
        self.proj = nn.Linear(dim, dim, bias=False)

    def forward(self, x: Any) -> Any:
        return self.proj(self.linears(x))


@pytest.mark.world_size(2)
@pytest.mark.mpdist
def test_replicate_over_fully_sharded_linears(rank: int, world_size: int) -> None:
    model, ref = ToyModel(3).double(), ToyModel(3).double()
    for linear in model.linears:
        fully_shard(linear)
    fully_shard(model.linears)
    replicate(model)
    assert all(isinstance(lin.weight, DTensor) for lin in model.linears)
    assert not isinstance(model.proj.weight, DTensor)
    opt, ref_opt = SGD(model.parameters(), lr=0.1), SGD(ref.parameters(), lr=0.1)
    rows = slice(rank * 12, (rank + 1) * 12)
    for step in range(3):
        x, y = data(step, 3, 3)
        opt.zero_grad()
        F.mse_loss(model(x[rows]), y[rows]).backward()
        opt.step()
        ref_step(ref, ref_opt, x, y)
    assert all(isinstance(lin.weight, DTensor) for lin in model.linears)
    check_equal(model, ref)


@pytest.mark.world_size(2, 4)
@pytest.mark.mpdist
def test_no_gradient_sync_accumulates_locally(rank: int, world_size: int) -> None:
    model, ref = mlp(), mlp()
    fully_shard(model[0])
    fully_shard(model)
    opt, ref_opt = SGD(model.parameters(), lr=0.1), SGD(ref.parameters(), lr=0.1)
    rows = N // world_size
    mine = slice(rank * rows, (rank + 1) * rows)
    ref_opt.zero_grad()
    for micro in range(3):
        x, y = data(micro)
        model.set_requires_gradient_sync(micro == 2)
        F.mse_loss(model(x[mine]), y[mine]).backward()
        if micro < 2:  # nothing reduced yet: the pieces have no gradient
            assert all(p.grad is None for p in model.parameters())
        F.mse_loss(ref(x), y).backward()
    opt.step()
    ref_opt.step()
    check_equal(model, ref)


@pytest.mark.parametrize("overlap", [True, False], ids=["prefetch", "no-prefetch"])
@pytest.mark.world_size(2, 4)
@pytest.mark.mpdist
def test_unsharded_parameters_live_only_around_their_unit(
    rank: int, world_size: int, overlap: bool
) -> None:
    import mpdist.fsdp._fully_shard as fs

    fs.communication_thread_pays = lambda world_size: overlap  # this rank process only
    mpdist.manual_seed(4)
    layers = [nn.Linear(32, 32, bias=False, dtype=np.float64) for _ in range(4)]
    model, ref = nn.Sequential(*layers), nn.Sequential(*layers).__class__()
    for i, layer in enumerate(layers):
        ref.add_module(str(i), nn.Linear(32, 32, bias=False, dtype=np.float64))
        ref[i].weight.data[...] = layer.weight.data
    unit = 32 * 32 * 8
    for layer in layers:
        fully_shard(layer)
    fully_shard(model)
    assert live_unsharded_bytes() == 0
    sharded = sum(p.to_local().data.nbytes for p in model.parameters())
    assert sharded == 4 * unit // world_size
    opt, ref_opt = SGD(model.parameters(), lr=0.1), SGD(ref.parameters(), lr=0.1)
    rows = N // world_size
    for step in range(3):
        x, y = data(step, 32, 32)
        peak_unsharded_bytes(reset=True)
        opt.zero_grad()
        out = model(x[rank * rows : (rank + 1) * rows])
        assert live_unsharded_bytes() == 0  # every unit freed after its forward
        F.mse_loss(out, y[rank * rows : (rank + 1) * rows]).backward()
        assert live_unsharded_bytes() == 0
        peak = peak_unsharded_bytes()
        # the claim: pieces + at most the two largest units gathered at any time
        assert unit <= peak <= 2 * unit, (peak, unit)
        assert sharded + peak <= 4 * unit // world_size + 2 * unit
        opt.step()
        ref_step(ref, ref_opt, x, y)
    check_equal(model, ref)
