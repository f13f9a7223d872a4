"""Every autograd op's gradient against central finite differences, on hypothesis shapes."""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from mpdist.autograd import Tensor, cat, matmul, stack

FAST = settings(max_examples=12, deadline=None)


def numeric_grads(f: Callable[..., Tensor], arrays: list[np.ndarray], weight: np.ndarray) -> list:
    """Central differences of sum(f(*arrays) * weight) with respect to each array."""
    eps = 1e-6
    grads = []
    for k, a in enumerate(arrays):
        g = np.zeros_like(a)
        for i in np.ndindex(a.shape):
            hi = [x.copy() for x in arrays]
            lo = [x.copy() for x in arrays]
            hi[k][i] += eps
            lo[k][i] -= eps
            fh = (np.asarray(f(*[Tensor(x) for x in hi]).data) * weight).sum()
            fl = (np.asarray(f(*[Tensor(x) for x in lo]).data) * weight).sum()
            g[i] = (fh - fl) / (2 * eps)
        grads.append(g)
    return grads


def check(f: Callable[..., Tensor], *arrays: np.ndarray, seed: int = 0) -> None:
    arrays = [np.asarray(a, dtype=np.float64) for a in arrays]
    ts = [Tensor(a.copy(), requires_grad=True) for a in arrays]
    out = f(*ts)
    rng = np.random.default_rng(seed)
    weight = rng.standard_normal(out.shape)
    (out * weight).sum().backward()
    expected = numeric_grads(f, arrays, weight)
    for t, e in zip(ts, expected, strict=True):
        assert t.grad is not None
        assert t.grad.shape == t.shape
        np.testing.assert_allclose(t.grad.data, e, rtol=1e-5, atol=1e-6)


def arrays(shape: tuple[int, ...], lo: float = -2.0, hi: float = 2.0):
    return hnp.arrays(
        np.float64, shape, elements=st.floats(lo, hi, allow_nan=False, allow_infinity=False)
    )


small_shapes = hnp.array_shapes(min_dims=0, max_dims=3, min_side=1, max_side=3)


@st.composite
def broadcast_pair(draw, lo: float = -2.0, hi: float = 2.0):
    shapes = draw(hnp.mutually_broadcastable_shapes(num_shapes=2, max_dims=3, max_side=3))
    a, b = shapes.input_shapes
    return draw(arrays(a, lo, hi)), draw(arrays(b, lo, hi))


BINARY = {
    "add": lambda a, b: a + b,
    "sub": lambda a, b: a - b,
    "mul": lambda a, b: a * b,
}


@pytest.mark.parametrize("name", sorted(BINARY))
@FAST
@given(pair=broadcast_pair())
def test_binary_broadcasting(name: str, pair) -> None:
    check(BINARY[name], *pair)


@FAST
@given(pair=broadcast_pair(0.5, 2.0))
def test_div_and_pow_broadcasting(pair) -> None:
    check(lambda a, b: a / b, *pair)
    check(lambda a, b: a**b, *pair)


@FAST
@given(x=small_shapes.flatmap(lambda s: arrays(s, 0.5, 2.0)))
def test_scalar_and_array_operands(x: np.ndarray) -> None:
    c = np.full(x.shape[-1:] if x.ndim else (), 1.5)
    check(lambda a: 2.0 + a - 3.0 * a / 4.0, x)
    check(lambda a: 1.0 - a, x)
    check(lambda a: 2.0 / a, x)
    check(lambda a: a**3 + 2.0**a, x)
    check(lambda a: c * a + c - a / c, x)
    check(lambda a: c / a - c, x)  # ndarray on the left defers to Tensor's reflected ops


UNARY = {
    "neg": (lambda a: -a, -2, 2),
    "exp": (lambda a: a.exp(), -2, 2),
    "log": (lambda a: a.log(), 0.5, 3),
    "sin": (lambda a: a.sin(), -3, 3),
    "cos": (lambda a: a.cos(), -3, 3),
    "tanh": (lambda a: a.tanh(), -2, 2),
    "sigmoid": (lambda a: a.sigmoid(), -3, 3),
    "sqrt": (lambda a: a.sqrt(), 0.5, 3),
    "clone": (lambda a: a.clone(), -2, 2),
}


@pytest.mark.parametrize("name", sorted(UNARY))
@FAST
@given(data=st.data())
def test_unary(name: str, data) -> None:
    f, lo, hi = UNARY[name]
    check(f, data.draw(small_shapes.flatmap(lambda s: arrays(s, lo, hi))))


@FAST
@given(x=small_shapes.flatmap(lambda s: arrays(s, 0.1, 2.0)), sign=st.sampled_from([-1, 1]))
def test_relu_and_abs_away_from_the_kink(x: np.ndarray, sign: int) -> None:
    x = x * np.where(np.arange(x.size).reshape(x.shape) % 2, 1, sign)
    check(lambda a: a.relu(), x)
    check(lambda a: a.abs(), x)


@st.composite
def array_and_axis(draw):
    x = draw(hnp.array_shapes(min_dims=1, max_dims=3, max_side=3).flatmap(arrays))
    axis = draw(
        st.none()
        | st.integers(-x.ndim, x.ndim - 1)
        | st.lists(st.integers(0, x.ndim - 1), min_size=1, max_size=x.ndim, unique=True).map(tuple)
    )
    return x, axis


@FAST
@given(xa=array_and_axis(), keepdims=st.booleans())
def test_sum_and_mean(xa, keepdims: bool) -> None:
    x, axis = xa
    check(lambda a: a.sum(axis=axis, keepdims=keepdims), x)
    check(lambda a: a.mean(axis=axis, keepdims=keepdims), x)
    ref = x.mean(axis=axis, keepdims=keepdims)
    np.testing.assert_allclose(Tensor(x).mean(axis, keepdims).data, ref)


def test_torch_spellings_of_sum() -> None:
    x = np.arange(6.0).reshape(2, 3)
    assert Tensor(x).sum(dim=1, keepdim=True).shape == (2, 1)
    assert Tensor(x).mean(dim=0).shape == (3,)


@st.composite
def matmul_operands(draw):
    n, k, m = (draw(st.integers(1, 3)) for _ in range(3))
    batch = draw(hnp.mutually_broadcastable_shapes(num_shapes=2, max_dims=2, max_side=2))
    kind = draw(st.sampled_from(["mm", "batched", "vec-mat", "mat-vec", "vec-vec"]))
    shapes = {
        "mm": ((n, k), (k, m)),
        "batched": (batch.input_shapes[0] + (n, k), batch.input_shapes[1] + (k, m)),
        "vec-mat": ((k,), batch.input_shapes[1] + (k, m)),
        "mat-vec": (batch.input_shapes[0] + (n, k), (k,)),
        "vec-vec": ((k,), (k,)),
    }[kind]
    return draw(arrays(shapes[0])), draw(arrays(shapes[1]))


@FAST
@given(ab=matmul_operands())
def test_matmul(ab) -> None:
    a, b = ab
    check(lambda x, y: x @ y, a, b)
    np.testing.assert_allclose(matmul(Tensor(a), b).data, a @ b)


@FAST
@given(x=hnp.array_shapes(min_dims=1, max_dims=3, max_side=4).flatmap(arrays))
def test_reshape_transpose(x: np.ndarray) -> None:
    check(lambda a: a.reshape(-1), x)
    check(lambda a: a.reshape(x.shape[::-1]), x)
    check(lambda a: a.T, x)
    perm = tuple(np.random.default_rng(x.size).permutation(x.ndim))
    check(lambda a: a.transpose(perm), x)
    if x.ndim >= 2:
        check(lambda a: a.swapaxes(0, -1), x)


def test_indexing_accumulates_repeated_indices() -> None:
    x = np.random.default_rng(1).standard_normal((4, 3))
    check(lambda a: a[1:3], x)
    check(lambda a: a[:, 1], x)
    check(lambda a: a[np.array([0, 2, 2, 0])], x)
    check(lambda a: a[Tensor(np.array([3, 3])), 1:], x)
    check(lambda a: a[x > 0], x)
    check(lambda a: a[-1, -1], x)


@FAST
@given(
    shape=hnp.array_shapes(min_dims=1, max_dims=2, max_side=3),
    n=st.integers(1, 3),
    axis=st.integers(0, 1),
)
def test_stack_and_cat(shape, n: int, axis: int) -> None:
    rng = np.random.default_rng(n)
    xs = [rng.standard_normal(shape) for _ in range(n)]
    ax = axis % len(shape)
    check(lambda *ts: stack(ts, axis=axis), *xs)
    check(lambda *ts: cat(ts, axis=ax), *xs)
    ragged = [rng.standard_normal((i + 1,) + tuple(shape[1:])) for i in range(n)]
    check(lambda *ts: cat(ts, dim=0), *ragged)


def test_astype_casts_the_gradient_back() -> None:
    x = Tensor(np.ones(3, dtype=np.float32), requires_grad=True)
    (x.astype(np.float64) * 2.0).sum().backward()
    assert x.grad.dtype == np.float32
    np.testing.assert_array_equal(x.grad.data, [2, 2, 2])


def test_composite_mlp_like_expression() -> None:
    rng = np.random.default_rng(3)
    x, w, b = rng.standard_normal((5, 4)), rng.standard_normal((3, 4)), rng.standard_normal(3)
    check(lambda w, b: ((x @ w.T + b).tanh() ** 2).mean(axis=0), w, b)
