"""numpy ufuncs on Tensors: those with an autograd op record it (values and gradients
against the Tensor methods and finite differences), reflected operators with an ndarray or a
numpy scalar on the left still give recorded Tensors, comparisons (== and != too) give
boolean Tensors, every other ufunc (and out= naming a Tensor) is a TypeError, and numpy
functions that convert through __array__ keep working."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np
import pytest
from test_ops import check

from mpdist import nn
from mpdist.autograd import Tensor

_RNG = np.random.default_rng(7)
X = _RNG.uniform(0.5, 2.0, (2, 3))  # positive: log, sqrt and power are defined
Y = _RNG.uniform(0.5, 2.0, (2, 3))
ROW = _RNG.uniform(0.5, 2.0, (3,))
SQUARE = _RNG.standard_normal((3, 2))

UNARY: dict[str, tuple[np.ufunc, Callable[[Tensor], Tensor]]] = {
    "exp": (np.exp, Tensor.exp),
    "log": (np.log, Tensor.log),
    "sin": (np.sin, Tensor.sin),
    "cos": (np.cos, Tensor.cos),
    "tanh": (np.tanh, Tensor.tanh),
    "sqrt": (np.sqrt, Tensor.sqrt),
    "abs": (np.abs, Tensor.abs),
    "negative": (np.negative, Tensor.__neg__),
}


@pytest.mark.parametrize("name", UNARY)
def test_unary_ufuncs_record_their_op(name: str) -> None:
    ufunc, method = UNARY[name]
    t = Tensor(X.copy(), requires_grad=True)
    out = ufunc(t)
    assert isinstance(out, Tensor) and out.grad_fn is not None
    np.testing.assert_allclose(out.data, ufunc(X), rtol=1e-12)
    np.testing.assert_allclose(out.data, method(Tensor(X)).data, rtol=1e-12)
    check(lambda a: ufunc(a), X)


def test_positive_is_the_tensor_itself() -> None:
    t = Tensor(X, requires_grad=True)
    assert np.positive(t) is t


BINARY: dict[str, Callable[[Any, Any], Any]] = {
    "add": np.add,
    "subtract": np.subtract,
    "multiply": np.multiply,
    "true_divide": np.true_divide,
    "divide": np.divide,
    "power": np.power,
}


@pytest.mark.parametrize("name", BINARY)
@pytest.mark.parametrize("operands", ["tensor-tensor", "array-tensor", "tensor-array", "broadcast"])
def test_binary_ufuncs_record_their_op(name: str, operands: str) -> None:
    ufunc = BINARY[name]
    if operands == "tensor-tensor":
        check(lambda a, b: ufunc(a, b), X, Y)
    elif operands == "array-tensor":
        check(lambda b: ufunc(X, b), Y)
    elif operands == "tensor-array":
        check(lambda a: ufunc(a, Y), X)
    else:
        check(lambda a, b: ufunc(a, b), X, ROW)
    out = ufunc(X, Tensor(Y, requires_grad=True))
    assert isinstance(out, Tensor) and out.grad_fn is not None
    np.testing.assert_allclose(out.data, ufunc(X, Y), rtol=1e-12)


def test_matmul_ufunc() -> None:
    check(lambda a, b: np.matmul(a, b), X, SQUARE)
    check(lambda b: np.matmul(X, b), SQUARE)


REFLECTED: dict[str, Callable[[Any, Any], Any]] = {
    "+": lambda a, b: a + b,
    "-": lambda a, b: a - b,
    "*": lambda a, b: a * b,
    "/": lambda a, b: a / b,
    "**": lambda a, b: a**b,
}


@pytest.mark.parametrize("op", REFLECTED)
def test_reflected_operators_with_numpy_on_the_left_record(op: str) -> None:
    f = REFLECTED[op]
    for left in [X, ROW, np.float64(1.5), 1.5]:
        t = Tensor(Y.copy(), requires_grad=True)
        out = f(left, t)
        assert isinstance(out, Tensor) and out.grad_fn is not None, type(left)
        np.testing.assert_allclose(out.data, f(left, Y), rtol=1e-12)
        check(lambda b, left=left: f(left, b), Y)


def test_matmul_operator_with_an_array_on_the_left() -> None:
    t = Tensor(SQUARE.copy(), requires_grad=True)
    out = X @ t
    assert isinstance(out, Tensor) and out.grad_fn is not None
    check(lambda b: X @ b, SQUARE)


def test_result_dtypes_follow_numpy_promotion() -> None:
    t = Tensor(np.ones(2, np.float32), requires_grad=True)
    assert (2.0 * t).dtype == np.add(2.0, t).dtype == np.float32  # Python scalars are weak
    assert (np.float64(2.0) * t).dtype == np.float64  # numpy scalars are not (NEP 50)
    assert (np.ones(2, np.float16) + t).dtype == np.float32
    assert np.exp(t).dtype == np.float32


def test_comparisons_give_boolean_tensors() -> None:
    t = Tensor(Y)
    for ufunc, op in [
        (np.less, lambda a, b: a < b),
        (np.less_equal, lambda a, b: a <= b),
        (np.greater, lambda a, b: a > b),
        (np.greater_equal, lambda a, b: a >= b),
        (np.equal, lambda a, b: a == b),
        (np.not_equal, lambda a, b: a != b),
    ]:
        expected = ufunc(X, Y)
        for got in [ufunc(X, t), op(X, t), ufunc(Tensor(X), t)]:
            assert isinstance(got, Tensor) and got.dtype == np.bool_
            np.testing.assert_array_equal(got.data, expected)
    np.testing.assert_array_equal(np.isnan(Tensor(np.array([1.0, np.nan]))).data, [False, True])


def test_equality_with_an_array_is_elementwise() -> None:
    t = Tensor(Y)
    arr = Y.copy()
    for got in [arr == t, t == arr, np.equal(arr, t), np.equal(t, arr)]:
        assert isinstance(got, Tensor) and got.dtype == np.bool_ and bool(got.all())
    for got in [arr != t, t != arr, np.not_equal(arr, t)]:
        assert isinstance(got, Tensor) and not bool(got.any())
    # A list search compares with == after identity, as with torch's tensors.
    with pytest.raises(RuntimeError, match="more than one value is ambiguous"):
        [arr, t].index(t)


@pytest.mark.parametrize(
    ("call", "name"),
    [
        (lambda t: np.isfinite(t), "isfinite"),
        (lambda t: np.maximum(t, 0), "maximum"),
        (lambda t: np.floor(t), "floor"),
        (lambda t: np.exp2(t), "exp2"),
        (lambda t: np.add.reduce(t), "add.reduce"),
        (lambda t: np.add.accumulate(t), "add.accumulate"),
        (lambda t: np.multiply.outer(t, t), "multiply.outer"),
        (lambda t: np.ones(3) // t, "floor_divide"),
    ],
)
def test_ufuncs_without_an_op_name_themselves_and_point_to_data(
    call: Callable[[Tensor], Any], name: str
) -> None:
    t = Tensor(Y)
    with pytest.raises(TypeError, match=rf"numpy\.{name} has no autograd op") as info:
        call(t)
    assert "use .data for a plain array" in str(info.value)
    call(t.data)  # the advice works


def test_out_naming_a_tensor_is_refused() -> None:
    t = Tensor(np.zeros(3))
    for call in [
        lambda: np.add(t, 1.0, out=t),
        lambda: np.add(np.ones(3), np.ones(3), out=t),
        lambda: np.cos(np.ones(3), out=(t,)),
    ]:
        with pytest.raises(TypeError, match="cannot write into an mpdist Tensor"):
            call()
    assert t.data.tolist() == [0.0, 0.0, 0.0]
    with pytest.raises(TypeError, match="other than out=, got dtype"):
        np.add(t, 1.0, dtype=np.float32)


def test_out_naming_a_plain_array_gets_plain_values() -> None:
    t = Tensor(np.array([1.0, 2.0]), requires_grad=True)
    buf = np.zeros(2)
    assert np.multiply(t, 3.0, out=buf) is buf
    np.testing.assert_array_equal(buf, [3.0, 6.0])
    acc = np.ones(2)
    before = acc
    acc += t  # numpy's in place: the ndarray stays an ndarray, holding the values
    assert acc is before and isinstance(acc, np.ndarray)
    np.testing.assert_array_equal(acc, [2.0, 3.0])
    assert t.grad is None


def test_numpy_functions_that_convert_keep_working() -> None:
    t = Tensor(np.array([1.0, 2.0, 3.0]), requires_grad=True)
    assert np.allclose(t, [1.0, 2.0, 3.0]) and not np.allclose(t, [1.0, 2.0, 4.0])
    assert np.array_equal(t, Tensor(np.array([1.0, 2.0, 3.0])))
    np.testing.assert_allclose(t, [1.0, 2.0, 3.0])
    np.testing.assert_allclose(t, t)
    np.testing.assert_array_equal(t, np.array([1.0, 2.0, 3.0]))
    np.testing.assert_array_almost_equal(t, [1.0, 2.0, 3.0])
    with pytest.raises(AssertionError):
        np.testing.assert_allclose(t, [1.0, 2.0, 3.5])
    assert np.asarray(t) is t.data
    assert isinstance(np.stack([t, t]), np.ndarray)
    s = np.sum(t)
    assert isinstance(s, Tensor) and s.grad_fn is not None and np.mean(t).item() == 2.0


def test_parameters_take_part() -> None:
    lin = nn.Linear(3, 2, dtype=np.float64)
    x = np.ones((4, 3))
    (np.ones((4, 2)) * np.tanh(lin(x))).sum().backward()
    assert lin.weight.grad is not None
    w = lin.weight
    expected = (1 - np.tanh(x @ w.data.T + lin.bias.data) ** 2).T @ x
    np.testing.assert_allclose(w.grad.data, expected, rtol=1e-12)
