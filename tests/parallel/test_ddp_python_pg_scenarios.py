"""DDP trained through a Python ProcessGroup subclass matches plain training in one process.

The group stands for a world whose ranks all hold the same data, so DDP over it must
train exactly like the bare module: checked for the two ways a Python group can hand
back its result (a Work subclass after reducing in place, or a Work made by
``create_work_from_future`` whose future carries new arrays), for world sizes 1 and 3
(the latter makes DDP divide by the world size and rely on the reduction's result), and
with and without ``gradient_as_bucket_view``.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest

import mpdist
from mpdist import nn
from mpdist.nn import functional as F
from mpdist.optim import SGD
from mpdist.parallel import DistributedDataParallel as DDP
from mpdist.parallel import reducer
from mpdist.process_group import (
    AllreduceOptions,
    BroadcastOptions,
    Future,
    ProcessGroup,
    ReduceOp,
    Work,
    create_work_from_future,
)

STEPS = 3
LR = 0.3


class TallyWork(Work):
    """An operation that is already over and counts how its caller consumes it."""

    def __init__(self, group: SameDataWorld, outputs: list[Any]) -> None:
        super().__init__()
        self.group = group
        self.outputs = outputs

    def wait(self, timeout: Any = None) -> bool:
        self.group.waits += 1
        return True

    def get_future(self) -> Future:
        self.group.futures_taken += 1
        fut = Future()
        fut.set_result(self.outputs)
        return fut


class SameDataWorld(ProcessGroup):
    """Rank 0 of ``size`` ranks that all hold this process's data; nothing is sent.

    A sum over the world is ``size`` times the local array; a broadcast from rank 0
    changes nothing. ``in_place``: the sum overwrites the caller's array and a TallyWork
    is returned. Otherwise the caller's array is left as it was and the sum is a new
    array, delivered as the value of a future wrapped by ``create_work_from_future``.
    """

    def __init__(self, size: int, in_place: bool) -> None:
        super().__init__(0, size)
        self.in_place = in_place
        self.waits = 0
        self.futures_taken = 0
        self.broadcasts = 0
        self.sum_sizes: list[int] = []

    def getBackendName(self) -> str:  # noqa: N802 (torch's name)
        return "same-data"

    def _finished(self, outputs: list[Any]) -> Work:
        if self.in_place:
            return TallyWork(self, outputs)
        fut = Future()
        fut.set_result(outputs)
        return create_work_from_future(fut)

    def broadcast(self, tensors: list[Any], opts: BroadcastOptions | None = None) -> Work:
        assert isinstance(opts, BroadcastOptions) and opts.rootRank == 0
        self.broadcasts += 1
        return self._finished(list(tensors))

    def allreduce(self, tensors: list[Any], opts: AllreduceOptions | None = None) -> Work:
        assert isinstance(opts, AllreduceOptions) and opts.reduceOp == ReduceOp.SUM
        (array,) = tensors
        self.sum_sizes.append(array.size)
        if self.in_place:
            array *= self.size()
            return self._finished([array])
        return self._finished([array * self.size()])


class Scorer(nn.Module):
    """Class probabilities for 4 classes from 3 features (the first layer has no bias)."""

    def __init__(self) -> None:
        super().__init__()
        mpdist.manual_seed(11)
        self.embed = nn.Linear(3, 16, bias=False, dtype=np.float64)
        self.mix = nn.Linear(16, 16, dtype=np.float64)
        self.head = nn.Linear(16, 4, dtype=np.float64)

    def forward(self, x: Any) -> Any:
        h = self.mix(self.embed(x).tanh()).relu()
        return F.softmax(self.head(h), dim=1)


def batches() -> list[tuple[np.ndarray, np.ndarray]]:
    """One batch per step: 6 samples, targets one-hot."""
    rng = np.random.default_rng(2024)
    return [
        (rng.standard_normal((6, 3)), np.eye(4)[rng.integers(0, 4, size=6)]) for _ in range(STEPS)
    ]


@pytest.mark.parametrize("views", [False, True], ids=["grad-copies", "grad-views"])
@pytest.mark.parametrize("in_place", [True, False], ids=["work-subclass", "future-wrapped"])
@pytest.mark.parametrize("size", [1, 3])
def test_ddp_over_python_group_trains_like_one_process(
    monkeypatch: pytest.MonkeyPatch, size: int, in_place: bool, views: bool
) -> None:
    monkeypatch.setattr(reducer, "DEFAULT_FIRST_BUCKET_BYTES", 500)
    group = SameDataWorld(size, in_place)
    ddp = DDP(
        Scorer(),
        process_group=group,
        bucket_cap_mb=0.0005,
        gradient_as_bucket_view=views,
    )
    assert group.broadcasts >= 1
    if in_place:
        assert group.waits >= 1  # the initial broadcast is waited on
    buckets = ddp.reducer.buckets
    assert len(buckets) >= 2
    plain = Scorer()
    start = [p.data.copy() for p in plain.parameters()]
    ddp_opt, plain_opt = SGD(ddp.parameters(), lr=LR), SGD(plain.parameters(), lr=LR)
    nparams = sum(p.numel() for p in plain.parameters())

    for step, (x, y) in enumerate(batches()):
        for model, opt in ((ddp, ddp_opt), (plain, plain_opt)):
            opt.zero_grad()
            F.mse_loss(model(x), y).backward()
        assert len(group.sum_sizes) == len(buckets) * (step + 1)
        assert sum(group.sum_sizes[-len(buckets) :]) == nparams
        if in_place:
            assert group.futures_taken == len(buckets) * (step + 1)
        for (name, p), q in zip(ddp.module.named_parameters(), plain.parameters(), strict=True):
            np.testing.assert_allclose(p.grad.data, q.grad.data, rtol=1e-12, atol=1e-15)
            in_bucket = any(np.shares_memory(p.grad.data, b.buffer) for b in buckets)
            assert in_bucket is views, name
        ddp_opt.step()
        plain_opt.step()

    for p, q, s in zip(ddp.parameters(), plain.parameters(), start, strict=True):
        np.testing.assert_allclose(p.data, q.data, rtol=1e-12, atol=1e-15)
        assert not np.allclose(q.data, s)  # the steps moved every parameter
