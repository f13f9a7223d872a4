"""Module registration, iteration order, state_dict, hooks, deepcopy, containers, layers."""

from __future__ import annotations

import copy
import math
import threading

import numpy as np
import pytest

import mpdist
from mpdist import nn
from mpdist.autograd import Tensor
from mpdist.nn import functional as F


class MLP(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.fc1 = nn.Linear(3, 4)
        self.act = nn.ReLU()
        self.fc2 = nn.Linear(4, 2, bias=False)
        self.register_buffer("steps", np.zeros(1))
        self.register_buffer("scratch", np.zeros(2), persistent=False)

    def forward(self, x):
        return self.fc2(self.act(self.fc1(x)))


def test_registration_order_and_names() -> None:
    m = MLP()
    assert [n for n, _ in m.named_parameters()] == ["fc1.weight", "fc1.bias", "fc2.weight"]
    assert list(m.state_dict()) == ["steps", "fc1.weight", "fc1.bias", "fc2.weight"]
    assert [n for n, _ in m.named_buffers()] == ["steps", "scratch"]
    assert [n for n, _ in m.named_modules()] == ["", "fc1", "act", "fc2"]
    assert m.fc2.bias is None
    assert m.fc1.weight.shape == (4, 3) and m.fc1.weight.dtype == np.float32


def test_shared_parameter_listed_once() -> None:
    m = nn.Sequential(nn.Linear(2, 2), nn.Linear(2, 2))
    m[1].weight = m[0].weight
    assert len(list(m.parameters())) == 3
    assert "1.weight" in m.state_dict()


def test_assignment_errors_and_deletion() -> None:
    m = MLP()
    with pytest.raises(TypeError, match="parameter 'weight'"):
        m.fc1.weight = np.zeros((4, 3))
    m.fc1.weight = None
    assert m.fc1.weight is None
    del m.fc2
    assert "fc2" not in dict(m.named_children())

    class Early(nn.Module):
        def __init__(self) -> None:
            self.w = nn.Parameter(np.zeros(1))

    with pytest.raises(AttributeError, match="before"):
        Early()


def test_state_dict_roundtrip_and_errors() -> None:
    a, b = MLP(), MLP()
    sd = a.state_dict()
    sd["fc1.weight"][0, 0] = 123.0  # shares memory with the parameter, as torch's does
    assert a.fc1.weight.data[0, 0] == 123.0
    w_obj = b.fc1.weight.data
    b.load_state_dict(a.state_dict())
    assert b.fc1.weight.data is w_obj  # loaded in place
    for k, v in a.state_dict().items():
        np.testing.assert_array_equal(b.state_dict()[k], v)
    bad = a.state_dict()
    del bad["fc1.bias"]
    bad["extra"] = np.zeros(1)
    with pytest.raises(RuntimeError, match=r'Missing key\(s\) in state_dict: "fc1.bias"'):
        b.load_state_dict(bad)
    res = b.load_state_dict(bad, strict=False)
    assert res.missing_keys == ["fc1.bias"] and res.unexpected_keys == ["extra"]
    wrong = a.state_dict()
    wrong["fc2.weight"] = np.zeros((3, 3))
    with pytest.raises(RuntimeError, match="size mismatch for fc2.weight"):
        b.load_state_dict(wrong)


def test_forward_hooks() -> None:
    m = nn.Linear(2, 2)
    calls = []
    h1 = m.register_forward_pre_hook(lambda mod, args: (args[0] * 0.0,))
    h2 = m.register_forward_hook(lambda mod, args, out: calls.append(out) or out * 2.0)
    out = m(np.ones((1, 2), dtype=np.float32))
    np.testing.assert_allclose(out.data, 2 * m.bias.data[None])
    assert len(calls) == 1
    h1.remove()
    h2.remove()
    m(np.ones((1, 2)))
    assert len(calls) == 1

    def kw_hook(mod, args, kwargs):
        return (args[0] + 1.0,), kwargs

    m.register_forward_pre_hook(kw_hook, with_kwargs=True)
    np.testing.assert_allclose(
        m(np.zeros((1, 2))).data, F.linear(np.ones((1, 2)), m.weight, m.bias).data
    )


def test_deepcopy_is_independent() -> None:
    m = MLP()
    m.fc1.weight.register_post_accumulate_grad_hook(lambda t: pytest.fail("hook copied"))
    c = copy.deepcopy(m)
    assert c.fc1.weight is not m.fc1.weight
    np.testing.assert_array_equal(c.fc1.weight.data, m.fc1.weight.data)
    c.fc1.weight.data += 1
    assert not np.array_equal(c.fc1.weight.data, m.fc1.weight.data)
    c(np.ones((2, 3))).sum().backward()  # the original's hook must not fire
    assert c.fc1.weight.grad is not None and m.fc1.weight.grad is None


def test_zero_grad_train_eval() -> None:
    m = MLP()
    m(np.ones((2, 3))).sum().backward()
    m.zero_grad(set_to_none=False)
    assert all(p.grad is not None and not p.grad.data.any() for p in m.parameters())
    m.zero_grad()
    assert all(p.grad is None for p in m.parameters())
    assert m.eval() is m and not m.fc1.training
    m.train()
    assert m.fc2.training


def test_manual_seed_reproducible_and_torch_bounds() -> None:
    mpdist.manual_seed(7)
    a = nn.Linear(50, 20)
    mpdist.manual_seed(7)
    b = nn.Linear(50, 20)
    np.testing.assert_array_equal(a.weight.data, b.weight.data)
    c = nn.Linear(50, 20)
    assert not np.array_equal(a.weight.data, c.weight.data)
    bound = 1 / math.sqrt(50)
    assert np.abs(a.weight.data).max() <= bound and np.abs(a.bias.data).max() <= bound
    assert np.abs(a.weight.data).max() > 0.8 * bound  # uses the whole range


def test_parameter_rng_is_per_thread() -> None:
    mpdist.manual_seed(3)
    expected = nn.Linear(4, 4).weight.data
    mpdist.manual_seed(3)
    got = []
    ts = [
        threading.Thread(target=lambda: got.append(nn.Linear(4, 4).weight.data)) for _ in range(2)
    ]
    for t in ts:
        t.start()
    for t in ts:
        t.join()
    for g in got:  # each thread starts from the process seed, unaffected by the other
        np.testing.assert_array_equal(g, expected)
    with pytest.raises(TypeError):
        mpdist.manual_seed("x")


def test_linear_matches_formula_and_gradients() -> None:
    m = nn.Linear(3, 2, dtype=np.float64)
    x = np.random.default_rng(0).standard_normal((5, 3))
    y = m(x)
    np.testing.assert_allclose(y.data, x @ m.weight.data.T + m.bias.data)
    y.sum().backward()
    np.testing.assert_allclose(m.weight.grad.data, np.ones((5, 2)).T @ x)
    np.testing.assert_allclose(m.bias.grad.data, [5.0, 5.0])


def test_containers() -> None:
    seq = nn.Sequential(nn.Linear(2, 3), nn.ReLU(), nn.Linear(3, 1))
    assert len(seq) == 3 and isinstance(seq[-1], nn.Linear) and isinstance(seq[1:], nn.Sequential)
    assert len(seq[1:]) == 2
    ml = nn.ModuleList([nn.Linear(1, 1)])
    ml.append(nn.Linear(1, 1))
    ml += [nn.ReLU()]
    ml.insert(0, nn.Identity())
    assert [type(m).__name__ for m in ml] == ["Identity", "Linear", "Linear", "ReLU"]
    assert [n for n, _ in ml.named_parameters()] == ["1.weight", "1.bias", "2.weight", "2.bias"]
    pl = nn.ParameterList([nn.Parameter(np.zeros(2)), np.ones(1)])
    assert len(pl) == 2 and list(pl.state_dict()) == ["0", "1"]
    with pytest.raises(IndexError):
        seq[5]
    assert "Linear(in_features=2, out_features=3, bias=True)" in repr(seq)


def test_mse_loss() -> None:
    x = Tensor(np.array([1.0, 2.0, 4.0]), requires_grad=True)
    t = np.array([0.0, 2.0, 2.0])
    loss = nn.MSELoss()(x, t)
    assert loss.item() == pytest.approx(5.0 / 3)
    loss.backward()
    np.testing.assert_allclose(x.grad.data, 2 * (x.data - t) / 3)
    assert F.mse_loss(x, t, reduction="sum").item() == 5.0
    assert F.mse_loss(x, t, reduction="none").shape == (3,)
    with pytest.raises(ValueError):
        nn.MSELoss("bogus")
    with pytest.warns(UserWarning, match="target size"):
        F.mse_loss(x, np.zeros((2, 3)))


def test_rng_state_roundtrip() -> None:
    from mpdist import random as mrandom

    mrandom.manual_seed(11)
    assert mrandom.initial_seed() == 11
    state = mrandom.get_rng_state()
    a = nn.Linear(3, 3).weight.data.copy()
    mrandom.set_rng_state(state)
    np.testing.assert_array_equal(nn.Linear(3, 3).weight.data, a)


def test_mlp_gradients_match_torch() -> None:
    torch = pytest.importorskip("torch")
    mpdist.manual_seed(0)
    ours = nn.Sequential(
        nn.Linear(5, 7, dtype=np.float64), nn.ReLU(), nn.Linear(7, 3, dtype=np.float64)
    )
    theirs = torch.nn.Sequential(
        torch.nn.Linear(5, 7), torch.nn.ReLU(), torch.nn.Linear(7, 3)
    ).double()
    with torch.no_grad():
        for (_, p), (_, q) in zip(ours.named_parameters(), theirs.named_parameters(), strict=True):
            q.copy_(torch.from_numpy(p.data))
    rng = np.random.default_rng(0)
    x, y = rng.standard_normal((9, 5)), rng.standard_normal((9, 3))
    loss = nn.MSELoss()(ours(x), y)
    tloss = torch.nn.MSELoss()(theirs(torch.from_numpy(x)), torch.from_numpy(y))
    loss.backward()
    tloss.backward()
    assert loss.item() == pytest.approx(tloss.item(), rel=1e-12)
    for p, q in zip(ours.parameters(), theirs.parameters(), strict=True):
        np.testing.assert_allclose(p.grad.data, q.grad.numpy(), rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("shape", [(4, 3), (2, 5, 3), (3,)])
@pytest.mark.parametrize("bias", [True, False])
def test_functional_linear_gradients_by_finite_differences(shape, bias: bool) -> None:
    rng = np.random.default_rng(len(shape))
    x0, w0, b0 = rng.standard_normal(shape), rng.standard_normal((2, 3)), rng.standard_normal(2)

    def f(x, w, b):
        return F.linear(x, w, b if bias else None)

    ts = [Tensor(a.copy(), requires_grad=True) for a in (x0, w0, b0)]
    out = f(*ts)
    weight = rng.standard_normal(out.shape)
    (out * weight).sum().backward()
    eps = 1e-6
    for k, t in enumerate(ts):
        if k == 2 and not bias:
            assert t.grad is None
            continue
        num = np.zeros_like(t.data)
        for i in np.ndindex(t.shape):
            args = [a.copy() for a in (x0, w0, b0)]
            args[k][i] += eps
            hi = (f(*map(Tensor, args)).data * weight).sum()
            args[k][i] -= 2 * eps
            lo = (f(*map(Tensor, args)).data * weight).sum()
            num[i] = (hi - lo) / (2 * eps)
        np.testing.assert_allclose(t.grad.data, num, rtol=1e-6, atol=1e-8)
    with pytest.raises(ValueError, match="expects"):
        F.linear(np.ones((2, 4)), ts[1])
