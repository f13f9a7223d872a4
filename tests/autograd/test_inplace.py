"""In-place tensor operators (``+= -= *= /=`` and ``add_`` & co): what they change, when they
refuse, and the hand-written SGD step they exist for."""

from __future__ import annotations

import copy

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

import mpdist
from mpdist import nn
from mpdist.autograd import Tensor, no_grad
from mpdist.nn import functional as F
from mpdist.optim import SGD

FAST = settings(max_examples=25, deadline=None)

IOPS = {
    "iadd": (lambda t, o: t.__iadd__(o), np.add),
    "isub": (lambda t, o: t.__isub__(o), np.subtract),
    "imul": (lambda t, o: t.__imul__(o), np.multiply),
    "itruediv": (lambda t, o: t.__itruediv__(o), np.divide),
}


def test_isub_under_no_grad_updates_the_parameter_itself() -> None:
    p = nn.Parameter(np.array([1.0, 2.0, 3.0], dtype=np.float32))
    p.grad = Tensor(np.array([1.0, 1.0, 2.0], dtype=np.float32))
    data, view = p.data, p.data[1:]
    ref = p
    with no_grad():
        p -= 0.5 * p.grad
    assert p is ref and p.data is data and p.dtype == np.float32
    np.testing.assert_array_equal(data, [0.5, 1.5, 2.0])
    np.testing.assert_array_equal(view, [1.5, 2.0])  # a view taken before sees the change
    assert p.requires_grad and p.is_leaf


def test_loop_variable_update_reaches_the_module() -> None:
    mpdist.manual_seed(0)
    model = nn.Linear(3, 2)
    before = [p.data.copy() for p in model.parameters()]
    F.mse_loss(model(np.ones((4, 3), dtype=np.float32)), np.zeros((4, 2))).backward()
    with no_grad():
        for param in model.parameters():
            param -= param.grad
            param.grad = None
    for p, b in zip(model.parameters(), before, strict=True):
        assert p.grad is None
        assert not np.array_equal(p.data, b)


@pytest.mark.parametrize("name", sorted(IOPS))
@FAST
@given(
    shapes=hnp.mutually_broadcastable_shapes(num_shapes=1, base_shape=(2, 3), max_dims=2),
    kind=st.sampled_from(["scalar", "array", "tensor", "list"]),
    dtype=st.sampled_from([np.float32, np.float64]),
)
def test_matches_the_out_of_place_op_in_the_left_dtype(name, shapes, kind, dtype) -> None:
    iop, ufunc = IOPS[name]
    rng = np.random.default_rng(0)
    left = rng.uniform(1, 2, (2, 3)).astype(dtype)
    right = rng.uniform(1, 2, shapes.input_shapes[0])  # float64, broadcasts into (2, 3)
    operand = {
        "scalar": 1.75,
        "array": right,
        "tensor": Tensor(right),
        "list": right.tolist(),
    }[kind]
    t = Tensor(left.copy())
    data = t.data
    out = iop(t, operand)
    assert out is t and t.data is data and t.dtype == dtype and t.shape == (2, 3)
    expected = ufunc(left, 1.75 if kind == "scalar" else right).astype(dtype)
    np.testing.assert_allclose(t.data, expected, rtol=1e-6, atol=1e-6)


def test_parameter_stays_a_parameter_and_integers_stay_integers() -> None:
    p = nn.Parameter(np.ones(2))
    with no_grad():
        p *= 3
        p /= Tensor(np.array([2.0, 4.0]))
        p += np.float32(1)
    assert type(p) is nn.Parameter
    np.testing.assert_array_equal(p.data, [2.5, 1.75])
    i = Tensor(np.arange(3))
    i += 2
    i *= np.int8(2)
    assert i.dtype == np.int64
    np.testing.assert_array_equal(i.data, [4, 6, 8])


def test_refusals() -> None:
    w = Tensor(np.ones(3), requires_grad=True)
    for op in (w.__iadd__, w.__isub__, w.__imul__, w.__itruediv__, w.add_, w.mul_):
        with pytest.raises(RuntimeError, match="a leaf Variable that requires grad"):
            op(1.0)
    np.testing.assert_array_equal(w.data, 1.0)  # nothing was written before the refusal
    y = w * 2.0
    with pytest.raises(RuntimeError, match="part of the recorded graph.*mul"):
        y += 1.0
    plain = Tensor(np.zeros(3))
    with pytest.raises(RuntimeError, match="operand requires grad"):
        plain += w
    with pytest.raises(RuntimeError, match="operand requires grad"):
        plain.copy_(w)
    plain += 1.0  # a tensor outside the graph may change in grad mode, as in torch
    np.testing.assert_array_equal(plain.data, 1.0)
    i = Tensor(np.arange(3))
    with pytest.raises(RuntimeError, match="result type float64 can't be cast.*int64"):
        i += 0.5
    with pytest.raises(RuntimeError, match="can't be cast"):
        i /= 2
    with pytest.raises(RuntimeError, match=r"output with shape \[3\] doesn't match.*\[2, 3\]"):
        plain += np.ones((2, 3))
    with pytest.raises(RuntimeError, match="does not broadcast"):
        plain -= np.ones(4)
    np.testing.assert_array_equal(plain.data, 1.0)


def test_graph_built_after_an_in_place_update_sees_the_new_value() -> None:
    w = Tensor(np.array([1.0, 2.0]), requires_grad=True)
    with no_grad():
        w += 1.0
        w.grad = None
    (w * w).sum().backward()
    np.testing.assert_array_equal(w.grad.data, [4.0, 6.0])


def _model_and_data():
    mpdist.manual_seed(3)
    model = nn.Sequential(nn.Linear(3, 4), nn.ReLU(), nn.Linear(4, 2))
    rng = np.random.default_rng(1)
    x = rng.standard_normal((8, 3)).astype(np.float32)
    y = rng.standard_normal((8, 2)).astype(np.float32)
    return model, x, y


def test_sgd_by_hand_equals_optim_sgd() -> None:
    model, x, y = _model_and_data()
    by_hand = copy.deepcopy(model)
    opt = SGD(model.parameters(), lr=0.1)
    lr = 0.1
    for _ in range(5):
        opt.zero_grad()
        F.mse_loss(model(x), y).backward()
        opt.step()

        for p in by_hand.parameters():
            p.grad = None
        F.mse_loss(by_hand(x), y).backward()
        with no_grad():
            for param in by_hand.parameters():
                param -= lr * param.grad
    for a, b in zip(model.parameters(), by_hand.parameters(), strict=True):
        np.testing.assert_allclose(a.data, b.data, rtol=1e-6, atol=1e-7)
    assert not np.array_equal(by_hand[0].weight.data, _model_and_data()[0][0].weight.data)


def test_sub_with_alpha_and_the_grad_idioms() -> None:
    p = nn.Parameter(np.array([1.0, 2.0]))
    p.grad = Tensor(np.array([2.0, 4.0]))
    with no_grad():
        p.sub_(p.grad, alpha=0.5)
        p.add_(Tensor(np.ones(2)), alpha=2)
    np.testing.assert_array_equal(p.data, [2.0, 2.0])
    g = p.grad
    assert p.grad.zero_() is g
    np.testing.assert_array_equal(p.grad.data, 0.0)


GRAPH_MODIFIED = "modified by an inplace operation"


def test_backward_refuses_a_graph_whose_saved_input_was_written_in_place() -> None:
    w = Tensor(np.array([1.0, 2.0]), requires_grad=True)
    x = Tensor(np.array([3.0, 4.0]))  # outside the graph: in-place allowed in grad mode
    y = (w * x).sum()
    x += 1.0
    with pytest.raises(RuntimeError, match=f"{GRAPH_MODIFIED}: an input or output of mul"):
        y.backward()
    assert w.grad is None  # refused before anything was accumulated


def test_backward_refuses_an_output_changed_under_no_grad() -> None:
    x = Tensor(np.array([0.0, 1.0]), requires_grad=True)
    e = x.exp()
    with no_grad():
        e *= 2.0  # exp's backward uses its output
    with pytest.raises(RuntimeError, match=GRAPH_MODIFIED):
        e.sum().backward()


def test_aliases_and_views_count_as_the_same_memory() -> None:
    w = Tensor(np.ones(3), requires_grad=True)
    y = (w * w).sum()
    with no_grad():
        w.detach()[0] = 5.0
    with pytest.raises(RuntimeError, match=GRAPH_MODIFIED):
        y.backward()
    buf = np.ones(4)
    a = Tensor(buf[:2], requires_grad=True)
    z = (a * a).sum()
    with no_grad():
        Tensor(buf[2:]).zero_()  # another view of the same buffer: treated as a write to a
    with pytest.raises(RuntimeError, match=GRAPH_MODIFIED):
        z.backward()


def test_an_update_between_two_backwards_of_a_kept_graph_is_refused() -> None:
    w = Tensor(np.array([1.0, 2.0]), requires_grad=True)
    loss = (w * w).sum()
    loss.backward()
    with no_grad():
        w -= 0.1 * w.grad
    with pytest.raises(RuntimeError, match=GRAPH_MODIFIED):
        loss.backward()
    # A graph recorded after the update is fine. Writes through .data (numpy itself) are not
    # tracked, as in torch: the gradient then uses the new value.
    w.grad = None
    loss = (w * w).sum()
    w.data[0] = 0.0
    loss.backward()
    np.testing.assert_allclose(w.grad.data, [0.0, 3.2])
