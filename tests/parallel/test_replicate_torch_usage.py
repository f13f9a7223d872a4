"""replicate() used the way torch's own replicate tests use it: a wrong device_id named with
torch's text, keyword arguments to forward, a CPU device_id, several replicated submodules
compared with one process training on the whole batch. Checked against torch where installed."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest

import mpdist
from mpdist import nn
from mpdist.autograd import Tensor
from mpdist.nn import functional as F
from mpdist.parallel import replicate
from mpdist.testing import spawn_threads

TORCH_TEXT = "Expected device_id to be int or torch.device, but got"


class KwNet(nn.Module):
    """A layer whose forward takes a keyword argument that changes the result."""

    def __init__(self) -> None:
        super().__init__()
        mpdist.manual_seed(3)
        self.a = nn.Linear(3, 2, dtype=np.float64)

    def forward(self, inp: Tensor, *, kwarg: Any = None) -> Tensor:
        if kwarg is not None:
            inp = inp @ kwarg
        return self.a(inp)


def _inputs(rank: int) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(10 + rank)
    return rng.standard_normal((4, 3)), rng.standard_normal((3, 3))


@pytest.mark.parametrize("bad", [[mpdist.device("cpu")], (0,), "cpu", 1.0], ids=repr)
def test_wrong_device_id_type_is_named_with_torchs_text(bad: Any) -> None:
    with pytest.raises(RuntimeError, match=TORCH_TEXT) as info:
        replicate(KwNet(), device_id=bad)
    assert str(type(bad)) in str(info.value)


def test_torch_says_the_same_about_a_list_device_id() -> None:
    torch = pytest.importorskip("torch")
    from torch.distributed._composable.replicate import replicate as torch_replicate

    with pytest.raises(RuntimeError, match=TORCH_TEXT):
        torch_replicate(torch.nn.Linear(2, 2), device_id=[torch.device("cpu")])


def test_keyword_arguments_reach_the_module_and_their_gradients_are_averaged() -> None:
    def body(rank: int, world_size: int) -> dict[str, np.ndarray]:
        model = replicate(KwNet(), device_id=mpdist.device("cpu"))
        x, k = _inputs(rank)
        out = model(x, kwarg=k)
        # the forward really used the keyword: the plain module gives the same output
        np.testing.assert_allclose(out.data, KwNet()(x, kwarg=k).data, rtol=1e-12)
        out.sum().backward()
        assert replicate.state(model)._ddp_weakref().device_ids is None
        return {n: p.grad.data.copy() for n, p in model.named_parameters()}

    results = spawn_threads(body, 2)
    local = []
    for rank in range(2):
        plain = KwNet()
        x, k = _inputs(rank)
        plain(x, kwarg=k).sum().backward()
        local.append({n: p.grad.data for n, p in plain.named_parameters()})
    for name in ("a.weight", "a.bias"):
        np.testing.assert_array_equal(results[0][name], results[1][name])
        np.testing.assert_allclose(
            results[0][name], (local[0][name] + local[1][name]) / 2, rtol=1e-12
        )


def test_replicated_submodules_train_as_one_process_on_the_whole_batch() -> None:
    """Each of three linears replicated on its own, plain SGD by hand on each rank's half of
    the batch, two iterations with a reshuffle: equal to the unwrapped model on the batch."""

    def make() -> nn.Module:
        mpdist.manual_seed(0)
        return nn.Sequential(*(nn.Linear(2, 2, dtype=np.float64) for _ in range(3)))

    rng = np.random.default_rng(5)
    x, y = rng.standard_normal((2, 2)), rng.standard_normal((2, 2))
    orders = [np.array([0, 1]), np.array([1, 0])]

    def step(model: nn.Module, xb: np.ndarray, yb: np.ndarray) -> None:
        F.mse_loss(model(xb), yb).backward()
        with mpdist.autograd.no_grad():
            for p in model.parameters():
                p -= p.grad
                p.grad = None

    def body(rank: int, world_size: int) -> list[np.ndarray]:
        model = make()
        for sub in model:
            replicate(sub)
        for order in orders:
            xs, ys = x[order], y[order]
            step(model, xs[rank : rank + 1], ys[rank : rank + 1])
        return [p.data.copy() for p in model.parameters()]

    results = spawn_threads(body, 2)
    plain = make()
    for order in orders:
        step(plain, x[order], y[order])
    for got0, got1, want in zip(results[0], results[1], plain.parameters(), strict=True):
        np.testing.assert_array_equal(got0, got1)
        np.testing.assert_allclose(got0, want.data, rtol=1e-10, atol=1e-12)
