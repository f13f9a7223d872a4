"""softmax / log_softmax and their modules: values, stability, gradients (finite differences
and torch when installed), argument checks."""

from __future__ import annotations

import warnings

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from mpdist import nn
from mpdist.autograd import Tensor
from mpdist.nn import functional as F

FAST = settings(max_examples=20, deadline=None)
FUNCS = {"softmax": F.softmax, "log_softmax": F.log_softmax}


def _reference(name: str, a: np.ndarray, axis: int) -> np.ndarray:
    """The textbook formula in float64 (fine for the moderate inputs it is used on)."""
    e = np.exp(a)
    s = e / e.sum(axis=axis, keepdims=True)
    return s if name == "softmax" else np.log(s)


@st.composite
def input_and_dim(draw):
    shape = draw(hnp.array_shapes(min_dims=1, max_dims=3, min_side=1, max_side=4))
    a = draw(hnp.arrays(np.float64, shape, elements=st.floats(-3, 3)))
    return a, draw(st.integers(-len(shape), len(shape) - 1))


@pytest.mark.parametrize("name", sorted(FUNCS))
@FAST
@given(case=input_and_dim())
def test_values_and_gradient_against_finite_differences(name, case) -> None:
    a, dim = case
    f = FUNCS[name]
    weight = np.random.default_rng(0).standard_normal(a.shape)
    t = Tensor(a.copy(), requires_grad=True)
    out = f(t, dim=dim)
    np.testing.assert_allclose(out.data, _reference(name, a, dim), rtol=1e-10, atol=1e-12)
    (out * weight).sum().backward()

    def value(x: np.ndarray) -> float:
        return float((f(Tensor(x), dim=dim).data * weight).sum())

    eps = 1e-6
    numeric = np.zeros_like(a)
    for i in np.ndindex(a.shape):
        hi, lo = a.copy(), a.copy()
        hi[i] += eps
        lo[i] -= eps
        numeric[i] = (value(hi) - value(lo)) / (2 * eps)
    np.testing.assert_allclose(t.grad.data, numeric, rtol=1e-5, atol=1e-7)


def test_rows_sum_to_one_and_huge_inputs_stay_finite() -> None:
    x = np.array([[1000.0, 0.0, -1000.0], [-1e30, -1e30, -1e30]], dtype=np.float32)
    s = F.softmax(x, dim=1)
    assert s.dtype == np.float32
    np.testing.assert_allclose(s.data.sum(axis=1), 1.0, rtol=1e-6)
    np.testing.assert_allclose(s.data[0], [1.0, 0.0, 0.0])
    np.testing.assert_allclose(s.data[1], 1 / 3, rtol=1e-6)
    ls = F.log_softmax(Tensor(np.array([1000.0, 0.0, -1000.0]), requires_grad=True), dim=0)
    np.testing.assert_allclose(ls.data, [0.0, -1000.0, -2000.0])  # finite where softmax is 0
    ls.sum().backward()


def test_zero_dim_input_and_dtype_argument() -> None:
    s = Tensor(np.array(2.5), requires_grad=True)
    out = F.softmax(s, dim=0)
    assert out.shape == () and out.item() == 1.0
    out.backward()
    assert s.grad.item() == 0.0
    assert F.log_softmax(s, dim=-1).item() == 0.0
    half = F.softmax(np.array([1.0, 2.0], dtype=np.float64), dim=0, dtype=np.float32)
    assert half.dtype == np.float32
    assert F.softmax(np.array([1, 2]), dim=0, dtype=np.float64).dtype == np.float64


def test_argument_errors_and_implicit_dim() -> None:
    x = np.ones((2, 3))
    with pytest.raises(
        IndexError,
        match=r"Dimension out of range \(expected to be in range of \[-2, 1\], but got 2\)",
    ):
        F.softmax(x, dim=2)
    with pytest.raises(TypeError, match="dim must be an int"):
        F.softmax(x, dim=1.0)
    with pytest.raises(TypeError, match="expected a floating point input, got int64"):
        F.log_softmax(np.array([1, 2]), dim=0)
    with pytest.warns(UserWarning, match="Implicit dimension choice for softmax"):
        implicit = F.softmax(x)  # torch's legacy rule: dim 1 for 2-d input
    np.testing.assert_allclose(implicit.data, 1 / 3)


def test_modules() -> None:
    m = nn.Sequential(nn.Linear(3, 4), nn.Softmax(dim=1))
    x = np.random.default_rng(0).standard_normal((5, 3)).astype(np.float32)
    y = m(x)
    np.testing.assert_allclose(y.data.sum(axis=1), 1.0, rtol=1e-6)
    (y * np.arange(4)).sum().backward()
    assert m[0].weight.grad is not None
    lsm = nn.LogSoftmax(dim=-1)
    np.testing.assert_allclose(lsm(Tensor(x)).data, np.log(F.softmax(x, dim=-1).data), rtol=1e-5)
    assert repr(nn.Softmax(dim=1)) == "Softmax(dim=1)"
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        nn.Softmax(0)(np.ones(2))  # an explicit dim never warns


@pytest.mark.parametrize("name", sorted(FUNCS))
@pytest.mark.parametrize("dim", [0, 1, -1])
def test_against_torch(name: str, dim: int) -> None:
    torch = pytest.importorskip("torch")
    rng = np.random.default_rng(7)
    a = (rng.standard_normal((3, 4, 5)) * 5).astype(np.float32)
    w = rng.standard_normal((3, 4, 5)).astype(np.float32)
    t = Tensor(a.copy(), requires_grad=True)
    out = FUNCS[name](t, dim=dim)
    (out * w).sum().backward()
    tt = torch.tensor(a, requires_grad=True)
    tout = getattr(torch.nn.functional, name)(tt, dim=dim)
    (tout * torch.from_numpy(w)).sum().backward()
    assert out.dtype == np.float32
    np.testing.assert_allclose(out.data, tout.detach().numpy(), rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(t.grad.data, tt.grad.numpy(), rtol=1e-4, atol=1e-5)
