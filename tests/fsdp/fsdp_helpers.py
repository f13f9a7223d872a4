"""Models, data and the single-process reference shared by the FSDP1 tests."""

from __future__ import annotations

import functools
from typing import Any

import numpy as np

import mpdist
from mpdist import nn
from mpdist.fsdp import FullyShardedDataParallel as FSDP
from mpdist.fsdp import ShardingStrategy
from mpdist.fsdp.wrap import ModuleWrapPolicy, size_based_auto_wrap_policy
from mpdist.nn import functional as F
from mpdist.optim import SGD, Adam

N = 24  # full batch rows: divisible by 2 and 4 ranks
STEPS = 3


def mlp(seed: int = 3) -> nn.Sequential:
    """float64 MLP 6 -> 24 -> 24 -> 3 (ReLU between), the same in every rank."""
    mpdist.manual_seed(seed)
    return nn.Sequential(
        nn.Linear(6, 24, dtype=np.float64),
        nn.ReLU(),
        nn.Linear(24, 24, dtype=np.float64),
        nn.ReLU(),
        nn.Linear(24, 3, dtype=np.float64),
    )


def data(step: int) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(100 + step)
    return rng.standard_normal((N, 6)), rng.standard_normal((N, 3))


def optimizer(kind: str, params: Any) -> Any:
    return SGD(params, lr=0.1, momentum=0.9) if kind == "sgd" else Adam(params, lr=0.01)


def train_on_rows(model: Any, opt: Any, part: int, parts: int, steps: int = STEPS) -> None:
    """``steps`` of MSE training on slice ``part`` of ``parts`` equal row slices of each
    step's batch (``parts=1``: the full batch)."""
    per = N // parts
    rows = slice(part * per, (part + 1) * per)
    for step in range(steps):
        x, y = data(step)
        opt.zero_grad()
        F.mse_loss(model(x[rows]), y[rows]).backward()
        opt.step()


def reference(kind: str, steps: int = STEPS) -> dict[str, np.ndarray]:
    """The model after ``steps`` of full-batch training in one process."""
    model = mlp()
    train_on_rows(model, optimizer(kind, model.parameters()), 0, 1, steps)
    return model.state_dict()


POLICIES: dict[str, Any] = {
    "none": None,
    "linear": ModuleWrapPolicy({nn.Linear}),
    "size": functools.partial(size_based_auto_wrap_policy, min_num_params=100),
}


def train_fsdp(
    rank: int,
    world_size: int,
    kind: str = "sgd",
    policy: str = "linear",
    strategy: ShardingStrategy = ShardingStrategy.FULL_SHARD,
    use_orig_params: bool = False,
    steps: int = STEPS,
    **kw: Any,
) -> dict[str, np.ndarray]:
    """Train under FSDP on this rank's rows; the full state dict afterwards."""
    model = FSDP(
        mlp(),
        auto_wrap_policy=POLICIES[policy],
        sharding_strategy=strategy,
        use_orig_params=use_orig_params,
        **kw,
    )
    train_on_rows(model, optimizer(kind, model.parameters()), rank, world_size, steps)
    return model.state_dict()


def assert_matches(got: dict[str, Any], want: dict[str, np.ndarray], tol: float = 1e-6) -> None:
    assert sorted(got) == sorted(want)
    for k, v in want.items():
        np.testing.assert_allclose(np.asarray(got[k]), v, rtol=tol, atol=tol, err_msg=k)
