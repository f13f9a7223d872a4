"""``fully_shard`` (FSDP2) trains exactly like one process on the full batch.

Every rank builds the same float64 MLP from one seed, applies ``fully_shard`` to each
Linear and then to the root, and trains on its rows of the batch; a whole copy trains on
the whole batch in the same process. After several SGD-momentum and Adam steps the gathered
parameters must equal the whole copy's (1e-6). Also: the pieces follow ``Shard(0)``'s
``torch.chunk`` cut, the state dict holds DTensors and round-trips into an unwrapped model.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest

import mpdist
from mpdist import nn
from mpdist.fsdp import FSDPModule, fully_shard
from mpdist.nn import functional as F
from mpdist.optim import SGD, Adam
from mpdist.tensor import DTensor, Shard
from mpdist.testing import spawn_threads

N = 24  # batch rows: divisible by 2 and 4 ranks
STEPS = 3


def mlp() -> nn.Sequential:
    """float64 6 -> 10 -> 10 -> 3 (10 rows: uneven pieces on 4 ranks), the same everywhere."""
    mpdist.manual_seed(7)
    return nn.Sequential(
        nn.Linear(6, 10, dtype=np.float64),
        nn.ReLU(),
        nn.Linear(10, 10, dtype=np.float64),
        nn.ReLU(),
        nn.Linear(10, 3, dtype=np.float64),
    )


def data(step: int) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(200 + step)
    return rng.standard_normal((N, 6)), rng.standard_normal((N, 3))


def make_opt(kind: str, params: Any) -> Any:
    return SGD(params, lr=0.1, momentum=0.9) if kind == "sgd" else Adam(params, lr=0.01)


def shard(model: nn.Module, **kwargs: Any) -> nn.Module:
    for layer in model:
        if isinstance(layer, nn.Linear):
            fully_shard(layer, **kwargs)
    return fully_shard(model, **kwargs)


def full_values(model: nn.Module) -> dict[str, np.ndarray]:
    return {k: v.full_tensor().data for k, v in model.state_dict().items()}


def train(kind: str, rank: int, world: int, **kwargs: Any) -> None:
    ref = mlp()
    model = shard(mlp(), **kwargs)
    opt = make_opt(kind, model.parameters())
    ref_opt = make_opt(kind, ref.parameters())
    rows = N // world
    for step in range(STEPS):
        x, y = data(step)
        opt.zero_grad()
        mine = slice(rank * rows, (rank + 1) * rows)
        F.mse_loss(model(x[mine]), y[mine]).backward()
        opt.step()
        ref_opt.zero_grad()
        F.mse_loss(ref(x), y).backward()
        ref_opt.step()
    got, want = full_values(model), ref.state_dict()
    assert set(got) == set(want)
    for k in want:
        np.testing.assert_allclose(got[k], want[k].data, rtol=1e-6, atol=1e-9, err_msg=k)


@pytest.mark.world_size(2, 4)
@pytest.mark.mpdist
@pytest.mark.parametrize("kind", ["sgd", "adam"])
@pytest.mark.parametrize("reshard", [True, False])
def test_trains_like_one_process(rank: int, world_size: int, kind: str, reshard: bool) -> None:
    train(kind, rank, world_size, reshard_after_forward=reshard)


@pytest.mark.parametrize("world_size", [2, 4])
@pytest.mark.parametrize("kind", ["sgd", "adam"])
def test_trains_like_one_process_threads(world_size: int, kind: str) -> None:
    spawn_threads(lambda rank, world: train(kind, rank, world), world_size, timeout=120)


@pytest.mark.world_size(4)
@pytest.mark.mpdist
def test_pieces_follow_shard0_chunks(rank: int, world_size: int) -> None:
    model = shard(mlp())
    assert type(model).__name__ == "FSDPSequential" and isinstance(model, FSDPModule)
    assert isinstance(model, nn.Sequential) and type(model[0]).__name__ == "FSDPLinear"
    w = model[2].weight  # 10 x 10: rows 3, 3, 3, 1 on 4 ranks
    assert isinstance(w, DTensor) and w.placements == (Shard(0),)
    assert w.shape == (10, 10) and w.to_local().shape == ([3, 3, 3, 1][rank], 10)
    assert model[4].weight.to_local().shape == ([1, 1, 1, 0][rank], 10)
    np.testing.assert_array_equal(w.full_tensor().data, mlp()[2].weight.data)
    sd = model.state_dict()
    assert all(isinstance(v, DTensor) for v in sd.values())
    # optimizers see the DTensor pieces
    opt = SGD(model.parameters(), lr=0.1)
    assert all(isinstance(p, DTensor) for g in opt.param_groups for p in g["params"])


@pytest.mark.world_size(2)
@pytest.mark.mpdist
def test_state_dict_round_trip_into_unwrapped_model(rank: int, world_size: int) -> None:
    model = shard(mlp())
    opt = SGD(model.parameters(), lr=0.1)
    x, y = data(0)
    F.mse_loss(model(x), y).backward()
    opt.step()
    full = full_values(model)
    plain = mlp()
    plain.load_state_dict(full)
    x, _ = data(1)
    np.testing.assert_allclose(model(x).data, plain(x).data, rtol=1e-12)
    assert not any(np.array_equal(full[k], mlp().state_dict()[k]) for k in full)
    # back into a fresh sharded model: from full values, and from the DTensor pieces
    for source in (full, model.state_dict()):
        again = shard(mlp())
        again.load_state_dict(source)
        np.testing.assert_allclose(again(x).data, plain(x).data, rtol=1e-12)
