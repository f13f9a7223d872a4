"""Embedding, Dropout, GELU, Sigmoid, Flatten: values, gradients (finite differences and
torch when installed), train/eval, seeding, torch's names and errors."""

from __future__ import annotations

import numpy as np
import pytest
from _gradcheck import check_gradients

import mpdist
from mpdist import nn
from mpdist.autograd import Tensor
from mpdist.nn import functional as F


def data(*shape: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).standard_normal(shape) * 2


# ----------------------------------------------------------------- Embedding
def test_embedding_lookup_and_gradient_with_repeated_indices() -> None:
    emb = nn.Embedding(5, 3, dtype=np.float64)
    idx = np.array([[0, 2, 2], [4, 0, 2]])
    check_gradients(lambda: emb(idx), [], params=[emb.weight])
    out = emb(idx)
    np.testing.assert_array_equal(out.data, emb.weight.data[idx])
    emb.weight.grad = None
    out.sum().backward()
    np.testing.assert_array_equal(emb.weight.grad.data[:, 0], [2, 0, 3, 0, 1])


def test_embedding_padding_row_is_zero_and_gets_no_gradient() -> None:
    emb = nn.Embedding(4, 2, padding_idx=-1)
    assert emb.padding_idx == 3
    np.testing.assert_array_equal(emb.weight.data[3], 0)
    emb(np.array([3, 1, 3])).sum().backward()
    np.testing.assert_array_equal(emb.weight.grad.data[3], 0)
    np.testing.assert_array_equal(emb.weight.grad.data[1], 1)


def test_embedding_scale_grad_by_freq_and_max_norm() -> None:
    emb = nn.Embedding(3, 2, scale_grad_by_freq=True, dtype=np.float64)
    emb(np.array([0, 0, 0, 1])).sum().backward()
    np.testing.assert_allclose(emb.weight.grad.data, [[1, 1], [1, 1], [0, 0]])
    w = np.array([[3.0, 4.0], [0.3, 0.4], [6.0, 8.0]])
    emb = nn.Embedding.from_pretrained(w.copy(), max_norm=1.0)
    assert not emb.weight.requires_grad
    emb(np.array([0, 1]))
    np.testing.assert_allclose(emb.weight.data[0], [0.6, 0.8], rtol=1e-6)
    np.testing.assert_array_equal(emb.weight.data[1:], w[1:])  # small, or not looked up


def test_embedding_matches_torch() -> None:
    torch = pytest.importorskip("torch")
    kw = {"padding_idx": 1, "scale_grad_by_freq": True}
    ours = nn.Embedding(6, 4, dtype=np.float64, **kw)
    theirs = torch.nn.Embedding(6, 4, dtype=torch.float64, **kw)
    theirs.load_state_dict({k: torch.from_numpy(v.numpy()) for k, v in ours.state_dict().items()})
    idx = np.array([[1, 2, 5], [2, 2, 0]])
    r = data(2, 3, 4)
    (ours(idx) * r).sum().backward()
    (theirs(torch.tensor(idx)) * torch.tensor(r)).sum().backward()
    np.testing.assert_allclose(ours.weight.grad.data, theirs.weight.grad.numpy(), rtol=1e-12)
    assert repr(ours) == repr(theirs)
    assert list(ours.state_dict()) == ["weight"]


def test_embedding_errors() -> None:
    emb = nn.Embedding(3, 2)
    with pytest.raises(IndexError, match="index out of range in self"):
        emb(np.array([3]))
    with pytest.raises(IndexError, match="index out of range in self"):
        emb(np.array([-1]))
    with pytest.raises(RuntimeError, match="'indices' to have one of the following scalar types"):
        emb(np.array([1.0]))
    with pytest.raises(AssertionError, match="Padding_idx must be within num_embeddings"):
        nn.Embedding(3, 2, padding_idx=3)
    with pytest.raises(NotImplementedError, match="sparse"):
        nn.Embedding(3, 2, sparse=True)


# ----------------------------------------------------------------- Dropout
def test_dropout_scales_the_kept_elements_and_its_gradient_follows_the_mask() -> None:
    x = Tensor(np.ones((200, 50)), requires_grad=True)
    y = F.dropout(x, p=0.3)
    kept = y.data != 0
    np.testing.assert_allclose(y.data[kept], 1 / 0.7)
    assert abs(kept.mean() - 0.7) < 0.02
    y.sum().backward()
    np.testing.assert_allclose(x.grad.data, kept / 0.7)


def test_dropout_eval_p0_p1_and_bad_p() -> None:
    x = data(4, 5)
    d = nn.Dropout(0.5)
    d.eval()
    np.testing.assert_array_equal(d(x).data, x)
    np.testing.assert_array_equal(F.dropout(x, p=0.0).data, x)
    np.testing.assert_array_equal(F.dropout(x, p=1.0).data, 0)
    with pytest.raises(
        ValueError, match="dropout probability has to be between 0 and 1, but got 1.5"
    ):
        nn.Dropout(1.5)
    with pytest.raises(ValueError, match="dropout probability has to be between 0 and 1"):
        F.dropout(x, p=-0.1)
    assert repr(nn.Dropout(0.3)) == "Dropout(p=0.3, inplace=False)"


def test_dropout_masks_repeat_after_manual_seed() -> None:
    x = np.ones((8, 8))
    mpdist.manual_seed(7)
    a = nn.Dropout()(x).data
    b = nn.Dropout()(x).data
    mpdist.manual_seed(7)
    assert np.array_equal(nn.Dropout()(x).data, a)
    assert not np.array_equal(a, b)


# ----------------------------------------------------------------- activations, Flatten
@pytest.mark.parametrize("approximate", ["none", "tanh"])
def test_gelu_gradient_and_values(approximate) -> None:
    check_gradients(lambda x: F.gelu(x, approximate=approximate), [data(3, 4)])
    torch = pytest.importorskip("torch")
    x = data(50, seed=3)
    xt, xo = torch.tensor(x, requires_grad=True), Tensor(x.copy(), requires_grad=True)
    yt, yo = torch.nn.GELU(approximate)(xt), nn.GELU(approximate)(xo)
    np.testing.assert_allclose(yo.data, yt.detach().numpy(), rtol=1e-6, atol=1e-12)
    yt.sum().backward()
    yo.sum().backward()
    np.testing.assert_allclose(xo.grad.data, xt.grad.numpy(), rtol=1e-6, atol=1e-12)
    assert repr(nn.GELU(approximate)) == repr(torch.nn.GELU(approximate))


def test_gelu_and_sigmoid_values_and_errors() -> None:
    x = np.array([-1.0, 0.0, 2.0])
    np.testing.assert_allclose(F.gelu(x).data, [-0.15865525393145707, 0.0, 1.9544997361036416])
    assert F.gelu(x.astype(np.float32)).dtype == np.float32
    with pytest.raises(RuntimeError, match="approximate argument must be either none or tanh."):
        nn.GELU("x")
    with pytest.raises(RuntimeError, match="approximate argument must be either none or tanh."):
        F.gelu(x, approximate="x")
    np.testing.assert_allclose(nn.Sigmoid()(x).data, 1 / (1 + np.exp(-x)))
    check_gradients(nn.Sigmoid(), [data(2, 3)])


def test_flatten() -> None:
    x = data(2, 3, 4, 5)
    check_gradients(nn.Flatten(), [x])
    assert nn.Flatten()(x).shape == (2, 60)
    assert nn.Flatten(0, 2)(x).shape == (24, 5)
    assert nn.Flatten(-3, -2)(x).shape == (2, 12, 5)
    assert nn.Flatten()(np.zeros((0, 3, 2))).shape == (0, 6)
    assert nn.Unflatten(1, (2, 3))(np.zeros((4, 6))).shape == (4, 2, 3)
    assert repr(nn.Flatten()) == "Flatten(start_dim=1, end_dim=-1)"
    with pytest.raises(RuntimeError, match="start_dim cannot come after end_dim"):
        nn.Flatten(2, 1)(x)
