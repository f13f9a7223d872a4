"""Tensor ``==`` / ``!=`` and truth values as torch's: elementwise boolean Tensors outside the
graph (scalars, tensors, broadcasting, ndarrays on either side), ``bool()`` only of one
element, hashing by identity (dicts and sets of tensors), list searches that fall back to
``==`` as in torch, and ``autograd.equal`` still one bool. torch is the oracle where installed."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np
import pytest

from mpdist import autograd, nn
from mpdist.autograd import Tensor

A = np.array([[1.0, 2.0, 3.0], [2.0, 2.0, 0.5]])
B = np.array([[1.0, 0.0, 3.0], [2.0, 5.0, 0.5]])
ROW = np.array([2.0, 2.0, 0.5])
INTS = np.array([[1, 2, 3], [2, 2, 0]], dtype=np.int64)

# (name, f(x, y)) for x, y tensors of either library (or a plain operand for y)
OPS: list[tuple[str, Callable[[Any, Any], Any]]] = [
    ("eq", lambda x, y: x == y),
    ("ne", lambda x, y: x != y),
    ("req", lambda x, y: y == x),
    ("rne", lambda x, y: y != x),
]


def _values(t: Any) -> np.ndarray:
    return np.asarray(t.numpy() if hasattr(t, "numpy") else t)


@pytest.mark.parametrize(("name", "op"), OPS)
@pytest.mark.parametrize(
    ("left", "right"),
    [(A, B), (A, ROW), (A, ROW[:, None][:2]), (A, np.array(2.0)), (INTS, A), (INTS, ROW)],
    ids=["same-shape", "row", "column", "0-d", "int-float", "int-row"],
)
def test_tensor_operands_against_torch(name: str, op: Any, left: Any, right: Any) -> None:
    torch = pytest.importorskip("torch")
    got = op(Tensor(left), Tensor(right))
    want = op(torch.from_numpy(left), torch.from_numpy(right))
    assert isinstance(got, Tensor) and got.dtype == np.bool_ and want.dtype == torch.bool
    assert got.shape == tuple(want.shape)
    np.testing.assert_array_equal(got.data, want.numpy())


@pytest.mark.parametrize(("name", "op"), OPS)
@pytest.mark.parametrize("scalar", [2, 2.0, 0.5, True, np.float64(2.0), np.int64(2)])
def test_scalar_operands_against_torch(name: str, op: Any, scalar: Any) -> None:
    torch = pytest.importorskip("torch")
    for values in (A, INTS, A.astype(np.float32)):
        got = op(Tensor(values), scalar)
        want = op(torch.from_numpy(values), scalar)
        assert isinstance(got, Tensor) and got.dtype == np.bool_
        np.testing.assert_array_equal(got.data, want.numpy())


def test_float32_against_a_python_float_compares_in_float32() -> None:
    torch = pytest.importorskip("torch")
    values = np.array([0.1, 0.2], dtype=np.float32)
    got, want = Tensor(values) == 0.1, torch.from_numpy(values) == 0.1
    np.testing.assert_array_equal(got.data, want.numpy())
    assert got.data.tolist() == [True, False]


@pytest.mark.parametrize(
    ("op", "want"),
    [
        (lambda a, t: a == t, lambda a, t: a == t),
        (lambda a, t: t == a, lambda a, t: a == t),
        (lambda a, t: a != t, lambda a, t: a != t),
        (lambda a, t: t != a, lambda a, t: a != t),
        (lambda a, t: np.equal(a, t), lambda a, t: a == t),
        (lambda a, t: np.not_equal(t, a), lambda a, t: a != t),
    ],
)
def test_ndarrays_on_either_side(op: Any, want: Any) -> None:
    for arr, vals in [(B, A), (ROW, A), (B.astype(np.float32), A), (np.array(2.0), A)]:
        got = op(arr, Tensor(vals))
        assert isinstance(got, Tensor) and got.dtype == np.bool_
        np.testing.assert_array_equal(got.data, want(arr, vals))


def test_ndarray_equality_matches_torch() -> None:
    torch = pytest.importorskip("torch")
    t = torch.from_numpy(A)
    pairs = [(B == Tensor(A), B == t), (Tensor(A) == B, t == B)]  # noqa: SIM300
    for got, want in pairs:
        np.testing.assert_array_equal(got.data, want.numpy())
    # torch's ``ndarray != tensor`` is a Python bool (numpy's fallback); ours is elementwise,
    # as ``tensor != ndarray`` is in both.
    got = B != Tensor(A)  # noqa: SIM300
    np.testing.assert_array_equal(got.data, (t != torch.from_numpy(B)).numpy())


@pytest.mark.parametrize("other", [None, "a", object(), [1.0, 2.0, 3.0], (1.0,), {"k": 1}])
def test_anything_else_is_unequal_as_in_torch(other: Any) -> None:
    torch = pytest.importorskip("torch")
    t, tt = Tensor(A), torch.from_numpy(A)
    assert (t == other) is (tt == other) is False
    assert (t != other) is (tt != other) is True
    assert (other == t) is False and (other != t) is True
    with pytest.raises(TypeError):
        t < other  # noqa: B015
    with pytest.raises(TypeError):
        tt < other  # noqa: B015


def test_mismatched_shapes_are_an_error() -> None:
    with pytest.raises(ValueError, match="broadcast"):
        Tensor(A) == Tensor(np.ones(2))  # noqa: B015


def test_comparisons_are_not_recorded() -> None:
    x = Tensor(A.copy(), requires_grad=True)
    y = x * 2
    for r in [x == 2, x != 2, y == x, x == A, A != y, np.equal(x, y)]:  # noqa: SIM300
        assert isinstance(r, Tensor) and r.dtype == np.bool_
        assert r.grad_fn is None and not r.requires_grad and r.is_leaf
    # a mask built with == feeds a recorded op and the gradient flows only through the data
    mask = (x == 2).astype(np.float64)
    (x * mask).sum().backward()
    assert x.grad is not None
    np.testing.assert_array_equal(x.grad.data, (A == 2).astype(np.float64))


def test_torch_idioms() -> None:
    t = Tensor(np.full((2, 3), 2.0))
    assert (t == 2).all()
    assert not (t != 2).any()
    a, b = Tensor(A), Tensor(B)
    assert (a == b).sum().item() == int((A == B).sum()) == 4
    step = Tensor(np.array(2.0, dtype=np.float32))  # an optimizer's 0-d step
    assert step == 2 and step != 3 and (step != 2).item() is False
    if step == 1:
        pytest.fail("a 0-d tensor's == decides an if as its value does")


@pytest.mark.parametrize(
    ("values", "want"),
    [
        (np.array(0.0), False),
        (np.array(3.0), True),
        (np.array([0]), False),
        (np.array([[2]]), True),
        (np.array(np.nan), True),
        (np.array([True]), True),
        (np.array(False), False),
    ],
)
def test_bool_of_one_element(values: np.ndarray, want: bool) -> None:
    assert bool(Tensor(values)) is want
    torch = pytest.importorskip("torch")
    assert bool(torch.from_numpy(values)) is want


@pytest.mark.parametrize(
    ("values", "amount"),
    [(np.array([1.0, 2.0]), "more than one value"), (np.zeros((2, 0)), "no values")],
)
def test_bool_of_more_or_fewer_elements_is_torchs_error(values: np.ndarray, amount: str) -> None:
    text = f"Boolean value of Tensor with {amount} is ambiguous"
    with pytest.raises(RuntimeError, match=f"^{text}$"):
        bool(Tensor(values))
    with pytest.raises(RuntimeError, match=f"^{text}$"):
        bool(nn.Parameter(Tensor(values)))
    torch = pytest.importorskip("torch")
    with pytest.raises(RuntimeError, match=f"^{text}$"):
        bool(torch.from_numpy(values))


def test_tensors_as_dict_keys_and_set_members() -> None:
    p, q = Tensor(A.copy()), Tensor(A.copy())  # equal values, different tensors
    w = nn.Parameter(Tensor(A.copy()))
    d = {p: "p", q: "q", w: "w"}
    assert d[p] == "p" and d[q] == "q" and d[w] == "w" and len(d) == 3
    s = {p, q, w}
    assert len(s) == 3 and p in s and q in s and w in s
    assert Tensor(A.copy()) not in s and Tensor(A.copy()) not in d
    assert hash(p) != hash(q) and hash(p) == hash(p)
    torch = pytest.importorskip("torch")
    tp, tq = torch.from_numpy(A.copy()), torch.from_numpy(A.copy())
    assert len({tp: 1, tq: 2}) == len({tp, tq}) == 2 and torch.from_numpy(A.copy()) not in {tp}


_SEARCHED = ([1.0, 2.0], [3.0, 4.0], 5.0, 5.0)  # p, q, s, s2 of the searches below


def _outcome(f: Callable[[], Any]) -> Any:
    try:
        return f()
    except RuntimeError as e:
        return RuntimeError, str(e)


@pytest.mark.parametrize(
    "search",
    [
        lambda p, q, s, s2: p in [p, q],
        lambda p, q, s, s2: q in [p, q],
        lambda p, q, s, s2: [p, q].index(p),
        lambda p, q, s, s2: [p, q].index(q),
        lambda p, q, s, s2: [p, q].count(p),
        lambda p, q, s, s2: s in [s, p],
        lambda p, q, s, s2: p in [s, p],
        lambda p, q, s, s2: [s, p].index(p),
        lambda p, q, s, s2: (p, q) == (p, q),
        lambda p, q, s, s2: (p,) == (q,),
        lambda p, q, s, s2: (s,) == (s2,),
    ],
)
def test_list_searches_behave_as_torchs(search: Any) -> None:
    """``in`` / ``.index`` / tuple equality try identity first, then ``==``: a hit on the
    first element is found, reaching past a multi-element tensor is torch's error."""
    torch = pytest.importorskip("torch")
    ours = _outcome(lambda: search(*(Tensor(v) for v in _SEARCHED)))
    theirs = _outcome(lambda: search(*(torch.tensor(v) for v in _SEARCHED)))
    assert ours == theirs


def test_equal_is_still_one_bool() -> None:
    a, b = Tensor(A), Tensor(A.copy())
    assert autograd.equal(a, b) is True and a.equal(b) is True
    assert autograd.equal(a, Tensor(B)) is False
    assert autograd.equal(a, Tensor(A[:1])) is False  # shapes differ: False, not an error
    assert autograd.equal(Tensor(INTS), Tensor(INTS.astype(np.float64))) is True
    torch = pytest.importorskip("torch")
    assert torch.equal(torch.from_numpy(A), torch.from_numpy(A.copy())) is True
    assert torch.equal(torch.from_numpy(A), torch.from_numpy(A[:1])) is False
