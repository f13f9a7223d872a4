"""replicate(): lazy composable DDP, ignored_modules, separately replicated submodules,
kwargs passed to DDP, unchanged state_dict, errors."""

from __future__ import annotations

import numpy as np
import pytest

import mpdist
from mpdist import nn
from mpdist.nn import functional as F
from mpdist.parallel import replicate
from mpdist.testing import spawn_threads


class Net(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        mpdist.manual_seed(0)
        self.a = nn.Linear(4, 8, dtype=np.float64)
        self.b = nn.Linear(8, 8, dtype=np.float64)
        self.c = nn.Linear(8, 2, dtype=np.float64)

    def forward(self, x):
        return self.c(self.b(self.a(x).relu()).relu())


def grads(m: nn.Module) -> dict[str, np.ndarray]:
    return {n: p.grad.data.copy() for n, p in m.named_parameters()}


def batch(rank: int) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(rank)
    return rng.standard_normal((3, 4)), rng.standard_normal((3, 2))


def local_grads(rank: int) -> dict[str, np.ndarray]:
    m = Net()
    x, y = batch(rank)
    F.mse_loss(m(x), y).backward()
    return grads(m)


def test_replicate_with_ignored_modules() -> None:
    def body(rank: int, ws: int):
        m = Net()
        replicate(m, ignored_modules=[m.b])
        assert replicate.state(m)._ddp is None  # lazy
        x, y = batch(rank)
        F.mse_loss(m(x), y).backward()
        st = replicate.state(m)
        return grads(m), st._param_names

    (g0, names), (g1, _) = spawn_threads(body, 2)
    assert names == ["a.weight", "a.bias", "c.weight", "c.bias"]
    l0, l1 = local_grads(0), local_grads(1)
    for n in names:
        np.testing.assert_array_equal(g0[n], g1[n])
        np.testing.assert_allclose(g0[n], (l0[n] + l1[n]) / 2, rtol=1e-12)
    for n in ("b.weight", "b.bias"):  # ignored: each rank keeps its own gradient
        np.testing.assert_array_equal(g0[n], l0[n])
        np.testing.assert_array_equal(g1[n], l1[n])
        assert not np.allclose(g0[n], g1[n])


def test_submodules_replicated_separately_and_kwargs() -> None:
    def body(rank: int, ws: int):
        m = Net()
        replicate(m.a, bucket_cap_mb=1, find_unused_parameters=True)
        replicate(m.c)
        replicate(m)  # the parent takes only what the children did not
        x, y = batch(rank)
        F.mse_loss(m(x), y).backward()
        sa, sc, sm = (replicate.state(x) for x in (m.a, m.c, m))
        assert sa._ddp.find_unused_parameters and sa._ddp.bucket_bytes_cap == 1024 * 1024
        assert not sc._ddp.find_unused_parameters
        return grads(m), (sa._param_names, sc._param_names, sm._param_names)

    (g0, names), (g1, _) = spawn_threads(body, 2)
    assert names == (["weight", "bias"], ["weight", "bias"], ["b.weight", "b.bias"])
    l0, l1 = local_grads(0), local_grads(1)
    for n in g0:
        np.testing.assert_array_equal(g0[n], g1[n])
        np.testing.assert_allclose(g0[n], (l0[n] + l1[n]) / 2, rtol=1e-12)


def test_state_dict_parity_and_errors() -> None:
    def body(rank: int, ws: int):
        plain, rep = Net(), replicate(Net())
        rep(np.ones((1, 4)))
        assert list(rep.state_dict()) == list(plain.state_dict())
        for k, v in plain.state_dict().items():
            np.testing.assert_array_equal(rep.state_dict()[k], v)
        assert type(rep) is Net
        with pytest.raises(RuntimeError, match="only be applied to a module once"):
            replicate(rep)
        with pytest.raises(RuntimeError, match="Expected device_id to be int or torch.device"):
            replicate(Net(), device_id="cuda:0")
        assert replicate.state(plain) is None

    spawn_threads(body, 2)
