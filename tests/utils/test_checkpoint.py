"""Activation checkpointing: gradients as without it, intermediate values really dropped and
recomputed once, the random generator replayed, torch's argument rules, checkpoint_sequential."""

from __future__ import annotations

import gc
import weakref
from collections.abc import Callable
from typing import Any

import numpy as np
import pytest

import mpdist
from mpdist import nn
from mpdist.autograd import Tensor
from mpdist.random import default_generator, get_rng_state
from mpdist.utils.checkpoint import checkpoint, checkpoint_sequential

VARIANTS = [True, False]


def _linear(seed: int, n_in: int, n_out: int) -> nn.Linear:
    mpdist.manual_seed(seed)
    return nn.Linear(n_in, n_out, dtype=np.float64)


class Segment:
    """``x -> tanh(x W1 + b1) W2``, counting its runs and keeping weak references to the
    intermediate arrays of each run."""

    def __init__(self) -> None:
        self.l1 = _linear(1, 3, 5)
        self.l2 = _linear(2, 5, 2)
        self.runs = 0
        self.kept: list[weakref.ref[np.ndarray]] = []

    def params(self) -> list[Tensor]:
        return [self.l1.weight, self.l1.bias, self.l2.weight, self.l2.bias]

    def __call__(self, x: Tensor) -> Tensor:
        self.runs += 1
        h = self.l1(x)
        a = h.tanh()
        self.kept += [weakref.ref(h.data), weakref.ref(a.data)]
        return self.l2(a)


def _grads(tensors: list[Tensor]) -> list[np.ndarray]:
    out = []
    for t in tensors:
        assert t.grad is not None
        out.append(t.grad.data.copy())
        t.grad = None
    return out


@pytest.mark.parametrize("use_reentrant", VARIANTS)
def test_gradients_equal_the_plain_run(use_reentrant: bool) -> None:
    seg = Segment()
    x0 = np.random.default_rng(0).standard_normal((4, 3))
    r = np.random.default_rng(1).standard_normal((4, 2))

    x = Tensor(x0.copy(), requires_grad=True)
    ((seg(x) * r).sum()).backward()
    plain = _grads([x, *seg.params()])

    x = Tensor(x0.copy(), requires_grad=True)
    y = checkpoint(seg, x, use_reentrant=use_reentrant)
    ((y * r).sum()).backward()
    for a, b in zip(_grads([x, *seg.params()]), plain, strict=True):
        np.testing.assert_allclose(a, b, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("use_reentrant", VARIANTS)
def test_gradients_match_finite_differences(use_reentrant: bool) -> None:
    seg = Segment()
    x = Tensor(np.random.default_rng(2).standard_normal((2, 3)), requires_grad=True)
    r = np.random.default_rng(3).standard_normal((2, 2))

    def loss() -> float:
        return float((seg(Tensor(x.data)).data * r).sum())

    (checkpoint(seg, x, use_reentrant=use_reentrant) * r).sum().backward()
    eps = 1e-6
    for t in [x, *seg.params()]:
        assert t.grad is not None
        numeric = np.zeros_like(t.data)
        for i in np.ndindex(t.data.shape):
            old = t.data[i]
            t.data[i] = old + eps
            up = loss()
            t.data[i] = old - eps
            down = loss()
            t.data[i] = old
            numeric[i] = (up - down) / (2 * eps)
        np.testing.assert_allclose(t.grad.data, numeric, rtol=1e-6, atol=1e-8)


@pytest.mark.parametrize("use_reentrant", VARIANTS)
def test_intermediate_values_are_dropped_and_recomputed_once(use_reentrant: bool) -> None:
    seg = Segment()
    x = Tensor(np.ones((4, 3)), requires_grad=True)

    # Without checkpointing the graph keeps the intermediate arrays alive until backward.
    y = seg(x)
    gc.collect()
    assert all(ref() is not None for ref in seg.kept)
    del y

    seg.kept.clear()
    y = checkpoint(seg, x, use_reentrant=use_reentrant)
    gc.collect()
    assert seg.runs == 2  # the plain run above and this forward
    assert len(seg.kept) == 2 and all(ref() is None for ref in seg.kept)
    y.sum().backward()
    assert seg.runs == 3  # recomputed exactly once, in backward
    gc.collect()
    assert all(ref() is None for ref in seg.kept)  # the recomputation is dropped too


@pytest.mark.parametrize("use_reentrant", VARIANTS)
def test_random_draws_are_replayed_in_the_recompute(use_reentrant: bool) -> None:
    """A segment that draws noise from mpdist's generator: backward differentiates the same
    draws as forward, and leaves the generator where it was before backward."""
    seen: list[np.ndarray] = []

    def noisy(x: Tensor) -> Tensor:
        noise = default_generator().standard_normal(x.shape)
        seen.append(noise)
        return (x * noise).sin()

    mpdist.manual_seed(7)
    x = Tensor(np.linspace(0.1, 1.0, 6).reshape(2, 3), requires_grad=True)
    y = checkpoint(noisy, x, use_reentrant=use_reentrant)
    before = get_rng_state()
    y.sum().backward()
    assert get_rng_state() == before
    np.testing.assert_array_equal(seen[0], seen[1])
    assert x.grad is not None
    np.testing.assert_allclose(x.grad.data, np.cos(x.data * seen[0]) * seen[0], rtol=1e-12)


@pytest.mark.parametrize("use_reentrant", VARIANTS)
def test_preserve_rng_state_false_draws_anew(use_reentrant: bool) -> None:
    seen: list[np.ndarray] = []

    def noisy(x: Tensor) -> Tensor:
        noise = default_generator().standard_normal(x.shape)
        seen.append(noise)
        return x * noise

    x = Tensor(np.ones(5), requires_grad=True)
    y = checkpoint(noisy, x, use_reentrant=use_reentrant, preserve_rng_state=False)
    y.sum().backward()
    assert not np.array_equal(seen[0], seen[1])
    assert x.grad is not None
    np.testing.assert_array_equal(x.grad.data, seen[1])  # what the recompute drew


def test_use_reentrant_left_out_warns_and_runs_reentrant() -> None:
    lin = _linear(3, 2, 2)
    x = Tensor(np.ones((1, 2)))  # does not require grad
    with (
        pytest.warns(UserWarning, match="use_reentrant parameter should be passed explicitly"),
        pytest.warns(UserWarning, match="None of the inputs have requires_grad=True"),
    ):
        y = checkpoint(lin, x)
    # the reentrant variant: only the arguments tie the segment to the graph
    assert not y.requires_grad


def test_reentrant_refuses_keyword_arguments_and_non_reentrant_passes_them() -> None:
    def f(x: Tensor, scale: float = 1.0) -> Tensor:
        return x * scale

    x = Tensor(np.ones(3), requires_grad=True)
    with pytest.raises(ValueError, match="Unexpected keyword arguments: scale"):
        checkpoint(f, x, use_reentrant=True, scale=2.0)
    checkpoint(f, x, use_reentrant=False, scale=2.0).sum().backward()
    assert x.grad is not None
    np.testing.assert_array_equal(x.grad.data, [2.0, 2.0, 2.0])


def test_non_reentrant_reaches_parameters_when_no_input_requires_grad() -> None:
    lin = _linear(4, 3, 2)
    x = Tensor(np.ones((2, 3)))
    y = checkpoint(lin, x, use_reentrant=False)
    assert y.requires_grad
    y.sum().backward()
    assert lin.weight.grad is not None
    np.testing.assert_allclose(lin.weight.grad.data, np.full((2, 3), 2.0))


@pytest.mark.parametrize(("use_reentrant", "passes"), [(True, 3), (False, 1)])
def test_a_shared_parameter_gets_its_gradient_in_one_pass_only_without_reentrant(
    use_reentrant: bool, passes: int
) -> None:
    """The same layer outside and twice inside checkpoints: the reentrant variant
    accumulates into it once per pass (3), the other once with the total (torch's
    behaviour, and what DDP relies on)."""
    lin = _linear(5, 3, 3)
    calls: list[int] = []
    lin.weight.register_post_accumulate_grad_hook(lambda p: calls.append(1))
    x = Tensor(np.ones((2, 3)), requires_grad=True)
    h = lin(x)
    h = checkpoint(lin, h, use_reentrant=use_reentrant)
    h = checkpoint(lin, h, use_reentrant=use_reentrant)
    h.sum().backward()
    total = lin.weight.grad
    assert len(calls) == passes

    lin.weight.grad = None
    lin(lin(lin(Tensor(np.ones((2, 3)), requires_grad=True)))).sum().backward()
    assert total is not None and lin.weight.grad is not None
    np.testing.assert_allclose(total.data, lin.weight.grad.data, rtol=1e-12)


@pytest.mark.parametrize("use_reentrant", VARIANTS)
def test_several_outputs_and_non_tensor_outputs_keep_their_places(use_reentrant: bool) -> None:
    def f(x: Tensor) -> tuple[Any, ...]:
        return x.sin(), "tag", x * 3.0

    x = Tensor(np.array([0.5, 1.0]), requires_grad=True)
    a, tag, b = checkpoint(f, x, use_reentrant=use_reentrant)
    assert tag == "tag"
    (a.sum() + b.sum()).backward()
    assert x.grad is not None
    np.testing.assert_allclose(x.grad.data, np.cos(x.data) + 3.0, rtol=1e-12)


def test_a_recompute_that_differs_from_forward_is_an_error() -> None:
    runs: list[int] = []

    def shifty(x: Tensor) -> Tensor:
        runs.append(1)
        return x * 2.0 if len(runs) == 1 else x[:1] * 2.0

    x = Tensor(np.ones(3), requires_grad=True)
    y = checkpoint(shifty, x, use_reentrant=False)
    with pytest.raises(RuntimeError, match="other metadata than the forward"):
        y.sum().backward()


def test_under_no_grad_it_is_a_plain_call() -> None:
    seg = Segment()
    with mpdist.autograd.no_grad():
        for use_reentrant in VARIANTS:
            y = checkpoint(
                seg, Tensor(np.ones((1, 3)), requires_grad=True), use_reentrant=use_reentrant
            )
            assert not y.requires_grad
    assert seg.runs == 2


@pytest.mark.parametrize("use_reentrant", VARIANTS)
@pytest.mark.parametrize("segments", [1, 2, 3])
def test_checkpoint_sequential_equals_the_plain_sequential(
    use_reentrant: bool, segments: int
) -> None:
    mpdist.manual_seed(11)
    model = nn.Sequential(
        nn.Linear(3, 4, dtype=np.float64),
        nn.ReLU(),
        nn.Linear(4, 4, dtype=np.float64),
        nn.Tanh(),
        nn.Linear(4, 2, dtype=np.float64),
    )
    x0 = np.random.default_rng(5).standard_normal((3, 3))
    x = Tensor(x0.copy(), requires_grad=True)
    model(x).sum().backward()
    plain = _grads([x, *model.parameters()])
    x = Tensor(x0.copy(), requires_grad=True)
    checkpoint_sequential(model, segments, x, use_reentrant=use_reentrant).sum().backward()
    for a, b in zip(_grads([x, *model.parameters()]), plain, strict=True):
        np.testing.assert_allclose(a, b, rtol=1e-12, atol=1e-12)


def test_checkpoint_sequential_arguments() -> None:
    fns: list[Callable[[Any], Any]] = [lambda t: t * 2.0, lambda t: t + 1.0]
    x = Tensor(np.ones(2), requires_grad=True)
    with pytest.raises(ValueError, match="Unexpected keyword arguments: bogus"):
        checkpoint_sequential(fns, 1, x, use_reentrant=False, bogus=1)
    with pytest.raises(ValueError, match="3 segments for 2 functions"):
        checkpoint_sequential(fns, 3, x, use_reentrant=False)
    with pytest.warns(UserWarning, match="use_reentrant"):
        y = checkpoint_sequential(fns, 2, x)
    np.testing.assert_array_equal(y.data, [3.0, 3.0])


# ------------------------------------------------------------------------ against torch


@pytest.mark.parametrize("use_reentrant", VARIANTS)
def test_same_gradients_as_torch_checkpoint(use_reentrant: bool) -> None:
    torch = pytest.importorskip("torch")
    from torch.utils.checkpoint import checkpoint as torch_checkpoint

    seg = Segment()
    tl1 = torch.nn.Linear(3, 5).double()
    tl2 = torch.nn.Linear(5, 2).double()
    with torch.no_grad():
        for t, m in ((tl1, seg.l1), (tl2, seg.l2)):
            t.weight.copy_(torch.from_numpy(m.weight.data))
            t.bias.copy_(torch.from_numpy(m.bias.data))
    x0 = np.random.default_rng(9).standard_normal((4, 3))
    r = np.random.default_rng(10).standard_normal((4, 2))

    tx = torch.tensor(x0, requires_grad=True)
    ty = torch_checkpoint(lambda z: tl2(tl1(z).tanh()), tx * 2, use_reentrant=use_reentrant)
    (ty * torch.from_numpy(r)).sum().backward()

    x = Tensor(x0.copy(), requires_grad=True)
    y = checkpoint(seg, x * 2.0, use_reentrant=use_reentrant)
    (y * r).sum().backward()

    np.testing.assert_allclose(y.data, ty.detach().numpy(), rtol=1e-12)
    assert x.grad is not None and tx.grad is not None
    np.testing.assert_allclose(x.grad.data, tx.grad.numpy(), rtol=1e-9, atol=1e-12)
    for mine, theirs in zip(
        seg.params(), [tl1.weight, tl1.bias, tl2.weight, tl2.bias], strict=True
    ):
        assert mine.grad is not None and theirs.grad is not None
        np.testing.assert_allclose(mine.grad.data, theirs.grad.numpy(), rtol=1e-9, atol=1e-12)
