"""replicate() in real rank processes over tcp: training, state_dict and device_id checks.

Applied to the whole model, to each child only, or with DDP keyword arguments, replicate
trains like one process on the full batch and leaves the state_dict (keys, values,
loading) as the plain model's; device_id values that are not ints are refused.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest

import mpdist
import mpdist.distributed as dist
from mpdist import nn
from mpdist.nn import functional as F
from mpdist.optim import SGD
from mpdist.parallel import replicate

ROWS_PER_RANK = 3
STEPS = 3


class Tower(nn.Module):
    """A stem, a body (itself a Sequential) and a bias-free head; the same weights each time."""

    def __init__(self) -> None:
        super().__init__()
        mpdist.manual_seed(5)
        self.stem = nn.Linear(4, 6, dtype=np.float64)
        self.body = nn.Sequential(nn.Linear(6, 6, dtype=np.float64), nn.Tanh())
        self.head = nn.Linear(6, 3, bias=False, dtype=np.float64)

    def forward(self, x: Any) -> Any:
        return self.head(self.body(self.stem(x).relu()))


def replicated(how: str) -> Tower:
    """A Tower made data parallel ``how``: "root", "children" or "kwargs"."""
    model = Tower()
    if how == "root":
        replicate(model)
    elif how == "children":
        for child in (model.stem, model.body, model.head):
            replicate(child)
    else:
        replicate(model, bucket_cap_mb=1, gradient_as_bucket_view=True)
    return model


def global_batch(step: int, world_size: int) -> tuple[np.ndarray, np.ndarray]:
    """The batch of every rank at ``step`` (the same on all ranks)."""
    rng = np.random.default_rng(100 + step)
    rows = ROWS_PER_RANK * world_size
    return rng.standard_normal((rows, 4)), rng.standard_normal((rows, 3))


@pytest.mark.parametrize("how", ["root", "children", "kwargs"])
@pytest.mark.mpdist(world_size=2)
def test_replicated_training_matches_one_process(rank: int, world_size: int, how: str) -> None:
    model = replicated(how)
    alone = Tower()
    start = [p.data.copy() for p in alone.parameters()]
    opt, alone_opt = SGD(model.parameters(), lr=0.2), SGD(alone.parameters(), lr=0.2)
    mine = slice(rank * ROWS_PER_RANK, (rank + 1) * ROWS_PER_RANK)
    for step in range(STEPS):
        x, y = global_batch(step, world_size)
        opt.zero_grad()
        alone_opt.zero_grad()
        F.mse_loss(model(x[mine]), y[mine]).backward()
        F.mse_loss(alone(x), y).backward()
        for p, q in zip(model.parameters(), alone.parameters(), strict=True):
            np.testing.assert_allclose(p.grad.data, q.grad.data, rtol=1e-10, atol=1e-13)
        opt.step()
        alone_opt.step()
    for p, q, s in zip(model.parameters(), alone.parameters(), start, strict=True):
        np.testing.assert_allclose(p.data, q.data, rtol=1e-10, atol=1e-13)
        assert not np.allclose(q.data, s)  # training moved every parameter
    flat = np.concatenate([p.data.ravel() for p in model.parameters()])
    replicas = [np.empty_like(flat) for _ in range(world_size)]
    dist.all_gather(replicas, flat)
    for other in replicas:
        np.testing.assert_array_equal(other, flat)
    if how == "kwargs":
        ddp = replicate.state(model)._ddp
        assert ddp.gradient_as_bucket_view and ddp.bucket_bytes_cap == 1024 * 1024
        buffers = [b.buffer for b in ddp.reducer.buckets]
        for p in model.parameters():
            assert any(np.shares_memory(p.grad.data, buf) for buf in buffers)


@pytest.mark.parametrize("how", ["root", "children"])
@pytest.mark.mpdist(world_size=2)
def test_state_dict_is_the_plain_models(rank: int, world_size: int, how: str) -> None:
    model, plain = replicated(how), Tower()

    def same_as_plain() -> None:
        ours, theirs = model.state_dict(), plain.state_dict()
        assert list(ours) == list(theirs)
        for key, value in theirs.items():
            np.testing.assert_array_equal(ours[key], value)

    same_as_plain()
    x, y = global_batch(0, world_size)
    F.mse_loss(model(x[rank::world_size]), y[rank::world_size]).backward()  # builds the DDPs
    same_as_plain()

    # a plain model's state_dict loads into the replicated one, strictly, key for key
    mpdist.manual_seed(rank + 40)
    donor = nn.Linear(4, 6, dtype=np.float64)
    plain.stem.load_state_dict(donor.state_dict())
    result = model.load_state_dict(plain.state_dict())
    assert (result.missing_keys, result.unexpected_keys) == ([], [])
    same_as_plain()


@pytest.mark.parametrize("bad", [["cpu"], "cpu", 0.5, True], ids=repr)
def test_device_id_must_be_an_int(bad: Any) -> None:
    with pytest.raises(RuntimeError, match="Expected device_id to be int or torch.device"):
        replicate(Tower(), device_id=bad)
    assert replicate.state(replicate(Tower(), device_id=0)) is not None
