"""CrossEntropyLoss / NLLLoss and their functional forms: class indices and probabilities,
weight, ignore_index, label_smoothing, reductions; against torch (float64) and finite
differences; torch's error texts."""

from __future__ import annotations

import warnings

import numpy as np
import pytest
from _gradcheck import check_gradients

from mpdist import nn
from mpdist.autograd import Tensor
from mpdist.nn import functional as F


def logits(*shape: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).standard_normal(shape) * 2


def classes(shape: tuple[int, ...], c: int, seed: int = 1, ignore: int | None = None) -> np.ndarray:
    t = np.random.default_rng(seed).integers(0, c, size=shape)
    if ignore is not None and t.size > 1:
        t.reshape(-1)[::3] = ignore
    return t


def probs(*shape: int, axis: int = 1, seed: int = 2) -> np.ndarray:
    e = np.exp(np.random.default_rng(seed).standard_normal(shape))
    return e / e.sum(axis=axis, keepdims=True)


# (input shape, target kind, kwargs)
CASES = [
    ((5, 4), "index", {}),
    ((5, 4), "index", {"reduction": "sum"}),
    ((5, 4), "index", {"reduction": "none"}),
    ((6, 4), "index", {"ignore_index": 2}),
    ((6, 4), "index", {"ignore_index": -1, "weight": [0.5, 1.0, 2.0, 0.1]}),
    ((6, 4), "index", {"ignore_index": -1, "weight": [0.5, 1.0, 2.0, 0.1], "reduction": "none"}),
    ((4, 3, 2, 2), "index", {"ignore_index": -1}),
    ((4,), "index", {}),
    ((6, 4), "index", {"label_smoothing": 0.2}),
    ((6, 4), "index", {"label_smoothing": 0.3, "ignore_index": -1}),
    ((6, 4), "index", {"label_smoothing": 0.3, "ignore_index": -1, "weight": [1, 2, 3, 4.0]}),
    ((6, 4), "index", {"label_smoothing": 0.1, "ignore_index": -1, "reduction": "sum"}),
    ((3, 4, 2), "index", {"label_smoothing": 0.1, "reduction": "none", "ignore_index": -1}),
    ((5, 4), "prob", {}),
    ((5, 4), "prob", {"label_smoothing": 0.25, "weight": [1, 2, 3, 4.0]}),
    ((3, 4, 2), "prob", {"reduction": "none"}),
    ((4,), "prob", {"reduction": "sum"}),
]


def target_for(shape, kind, kwargs):
    if kind == "prob":
        return probs(*shape, axis=0 if len(shape) == 1 else 1)
    c = shape[0] if len(shape) == 1 else shape[1]
    tshape = () if len(shape) == 1 else shape[:1] + shape[2:]
    ignore = kwargs.get("ignore_index")
    return classes(tshape, c, ignore=ignore if ignore is not None and len(shape) > 1 else None)


def ours_kwargs(kwargs):
    return {k: (np.asarray(v, dtype=np.float64) if k == "weight" else v) for k, v in kwargs.items()}


@pytest.mark.parametrize(("shape", "kind", "kwargs"), CASES)
def test_cross_entropy_gradient_matches_finite_differences(shape, kind, kwargs) -> None:
    t = target_for(shape, kind, kwargs)
    check_gradients(lambda x: F.cross_entropy(x, t, **ours_kwargs(kwargs)), [logits(*shape)])


@pytest.mark.parametrize(("shape", "kind", "kwargs"), CASES)
def test_cross_entropy_matches_torch(shape, kind, kwargs) -> None:
    torch = pytest.importorskip("torch")
    x, t = logits(*shape), target_for(shape, kind, kwargs)
    tk = {
        k: (torch.tensor(v, dtype=torch.float64) if k == "weight" else v) for k, v in kwargs.items()
    }
    xt, xo = torch.tensor(x, requires_grad=True), Tensor(x.copy(), requires_grad=True)
    lt = torch.nn.functional.cross_entropy(xt, torch.tensor(t), **tk)
    lo = F.cross_entropy(xo, t, **ours_kwargs(kwargs))
    assert lo.shape == tuple(lt.shape)
    np.testing.assert_allclose(lo.data, lt.detach().numpy(), rtol=1e-6, atol=1e-9)
    r = np.random.default_rng(4).standard_normal(lo.shape)
    (lt * torch.tensor(r)).sum().backward()
    (lo * r).sum().backward()
    np.testing.assert_allclose(xo.grad.data, xt.grad.numpy(), rtol=1e-6, atol=1e-9)
    # the module form says the same
    mod = nn.CrossEntropyLoss(**ours_kwargs(kwargs))
    np.testing.assert_allclose(mod(x, t).data, lt.detach().numpy(), rtol=1e-6, atol=1e-9)


@pytest.mark.parametrize(
    ("shape", "kwargs"),
    [
        ((5, 4), {}),
        ((6, 4), {"ignore_index": 1, "weight": [1, 2, 3, 4.0]}),
        ((3, 4, 2), {"reduction": "none"}),
    ],
)
def test_nll_loss_matches_torch_and_finite_differences(shape, kwargs) -> None:
    t = target_for(shape, "index", {})
    lp = logits(*shape)
    check_gradients(lambda x: F.nll_loss(x, t, **ours_kwargs(kwargs)), [lp])
    torch = pytest.importorskip("torch")
    tk = {
        k: (torch.tensor(v, dtype=torch.float64) if k == "weight" else v) for k, v in kwargs.items()
    }
    expected = torch.nn.functional.nll_loss(torch.tensor(lp), torch.tensor(t), **tk).numpy()
    np.testing.assert_allclose(nn.NLLLoss(**ours_kwargs(kwargs))(lp, t).data, expected, rtol=1e-9)


def test_every_target_ignored_gives_nan_loss_and_zero_gradient() -> None:
    x = Tensor(logits(3, 4), requires_grad=True)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        loss = F.cross_entropy(x, np.array([-100, -100, -100]))
        assert np.isnan(loss.item())
        loss.backward()
    np.testing.assert_array_equal(x.grad.data, 0)


def test_cross_entropy_by_hand() -> None:
    x = np.array([[1.0, 2.0, 3.0], [0.0, 0.0, 0.0]])
    lp = x - np.log(np.exp(x).sum(1, keepdims=True))
    np.testing.assert_allclose(
        F.cross_entropy(x, np.array([2, 0])).item(), -(lp[0, 2] + lp[1, 0]) / 2
    )
    # weights: the mean divides by the counted targets' total weight
    w = np.array([1.0, 1.0, 3.0])
    got = F.cross_entropy(x, np.array([2, 0]), weight=w).item()
    np.testing.assert_allclose(got, -(3 * lp[0, 2] + lp[1, 0]) / 4)


def test_legacy_size_average_and_reduce_flags() -> None:
    x, t = logits(4, 3), classes((4,), 3)
    full = F.cross_entropy(x, t, reduction="none").data
    with pytest.warns(UserWarning, match="reduction='sum'"):
        np.testing.assert_allclose(F.cross_entropy(x, t, size_average=False).item(), full.sum())
    with pytest.warns(UserWarning, match="reduction='none'"):
        np.testing.assert_allclose(nn.NLLLoss(reduce=False)(F.log_softmax(x, 1), t).data, full)


def test_errors_use_torch_texts() -> None:
    x = logits(3, 4)
    with pytest.raises(IndexError, match="Target 5 is out of bounds."):
        F.cross_entropy(x, np.array([5, 0, 0]))
    with pytest.raises(IndexError, match="Target -1 is out of bounds."):
        F.cross_entropy(x, np.array([-1, 0, 0]))
    with pytest.raises(
        ValueError, match=r"Expected input batch_size \(3\) to match target batch_size \(2\)."
    ):
        F.cross_entropy(x, np.array([1, 0]))
    with pytest.raises(
        RuntimeError, match="ignore_index is not supported for floating point target"
    ):
        F.cross_entropy(x, probs(3, 4), ignore_index=1)
    with pytest.raises(
        RuntimeError, match="0D or 1D target tensor expected, multi-target not supported"
    ):
        F.cross_entropy(x, probs(3, 5))
    with pytest.raises(RuntimeError, match="expected scalar type Long but found Float"):
        F.cross_entropy(x, np.array([1.0, 0.0, 0.0]))
    with pytest.raises(ValueError, match="bad is not a valid value for reduction"):
        F.nll_loss(x, np.array([1, 0, 0]), reduction="bad")
    with pytest.raises(ValueError, match="bad is not a valid value for reduction"):
        nn.CrossEntropyLoss(reduction="bad")
    with pytest.raises(
        RuntimeError, match=r"label_smoothing must be between 0.0 and 1.0. Got: 1.5"
    ):
        F.cross_entropy(x, np.array([1, 0, 0]), label_smoothing=1.5)
    with pytest.raises(
        RuntimeError, match="weight tensor should be defined either for all 4 classes"
    ):
        F.cross_entropy(x, np.array([1, 0, 0]), weight=np.ones(3))
    with pytest.raises(RuntimeError, match=r"Expected target size \[3, 5\], got \[3, 4\]"):
        F.nll_loss(logits(3, 4, 5), np.zeros((3, 4), dtype=np.int64))


def test_weight_is_a_buffer_as_in_torch() -> None:
    assert list(nn.CrossEntropyLoss(weight=np.ones(3)).state_dict()) == ["weight"]
    assert list(nn.CrossEntropyLoss().state_dict()) == []
