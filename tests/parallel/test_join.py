"""DistributedDataParallel.join(): uneven inputs across ranks (threaded backend)."""

from __future__ import annotations

import numpy as np
import pytest
from ddp_helpers import mlp

from mpdist import nn
from mpdist.nn import functional as F
from mpdist.optim import SGD
from mpdist.parallel import DistributedDataParallel as DDP
from mpdist.testing import spawn_threads

BATCHES = {0: 2, 1: 4}  # rank 1 has more data


def model() -> nn.Module:
    return mlp(3, 3, 5, 2)


def batch(rank: int, i: int) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(100 * rank + i)
    return rng.standard_normal((4, 3)), rng.standard_normal((4, 2))


def reference(divide_by_initial: bool) -> list[np.ndarray]:
    ref = model()
    opt = SGD(ref.parameters(), lr=0.1)
    for i in range(max(BATCHES.values())):
        active = [r for r in BATCHES if i < BATCHES[r]]
        div = 2 if divide_by_initial else len(active)
        opt.zero_grad()
        for r in active:
            x, y = batch(r, i)
            (F.mse_loss(ref(x), y) * (1.0 / div)).backward()
        opt.step()
    return [p.data.copy() for p in ref.parameters()]


@pytest.mark.parametrize("static", [False, True], ids=["dynamic", "static_graph"])
@pytest.mark.parametrize("divide_by_initial", [True, False])
def test_join_with_uneven_inputs(divide_by_initial: bool, static: bool) -> None:
    def body(rank: int, ws: int):
        ddp = DDP(model(), static_graph=static)
        opt = SGD(ddp.parameters(), lr=0.1)
        with ddp.join(divide_by_initial_world_size=divide_by_initial):
            for i in range(BATCHES[rank]):
                x, y = batch(rank, i)
                opt.zero_grad()
                F.mse_loss(ddp(x), y).backward()
                opt.step()
        # after join the default reduction is back to normal
        assert ddp.reducer.divisor == ws and ddp._join is None
        return [p.data.copy() for p in ddp.parameters()]

    ref = reference(divide_by_initial)
    out = spawn_threads(body, 2)
    for params in out:
        for p, q in zip(params, ref, strict=True):
            np.testing.assert_allclose(p, q, rtol=1e-10, atol=1e-12)


def test_join_throw_on_early_termination() -> None:
    def body(rank: int, ws: int):
        ddp = DDP(model())
        with (
            pytest.raises(RuntimeError, match="exhausted inputs"),
            ddp.join(throw_on_early_termination=True),
        ):
            for i in range(BATCHES[rank]):
                x, y = batch(rank, i)
                F.mse_loss(ddp(x), y).backward()
        return True

    assert spawn_threads(body, 2) == [True, True]


def test_join_disabled_and_no_sync_inside() -> None:
    def body(rank: int, ws: int):
        ddp = DDP(model())
        with ddp.join(enable=False):
            assert ddp._join is None
        with ddp.join():
            for i in range(BATCHES[rank]):
                x, y = batch(rank, i)
                with ddp.no_sync():
                    F.mse_loss(ddp(x), y).backward()
                F.mse_loss(ddp(x), y).backward()
        return [p.data.copy() for p in ddp.parameters()]

    a, b = spawn_threads(body, 2)
    for p, q in zip(a, b, strict=True):
        np.testing.assert_array_equal(p, q)
