"""SGD and Adam against hand-computed steps and against torch when it is installed."""

from __future__ import annotations

import math

import numpy as np
import pytest

from mpdist import nn
from mpdist.optim import SGD, Adam, AdamW


def param(values) -> nn.Parameter:
    return nn.Parameter(np.array(values, dtype=np.float64))


def set_grad(p: nn.Parameter, g) -> None:
    p.grad = np.array(g, dtype=np.float64)


def test_plain_sgd() -> None:
    p = param([1.0, 2.0])
    opt = SGD([p], lr=0.1)
    set_grad(p, [1.0, -2.0])
    opt.step()
    np.testing.assert_allclose(p.data, [0.9, 2.2])


def test_sgd_momentum_dampening_weight_decay_by_hand() -> None:
    p = param([1.0])
    opt = SGD([p], lr=0.1, momentum=0.9, dampening=0.5, weight_decay=0.1)
    set_grad(p, [2.0])
    opt.step()  # g = 2 + 0.1 = 2.1; buf = 2.1; p = 1 - 0.21
    np.testing.assert_allclose(p.data, [0.79])
    opt.step()  # g = 2 + 0.079 = 2.079; buf = 0.9*2.1 + 0.5*2.079 = 2.9295; p -= 0.29295
    np.testing.assert_allclose(p.data, [0.79 - 0.29295])


def test_sgd_nesterov_by_hand() -> None:
    p = param([0.0])
    opt = SGD([p], lr=1.0, momentum=0.5, nesterov=True)
    set_grad(p, [1.0])
    opt.step()  # buf = 1; g = 1 + 0.5 = 1.5
    opt.step()  # buf = 1.5; g = 1 + 0.75 = 1.75
    np.testing.assert_allclose(p.data, [-3.25])
    with pytest.raises(ValueError, match="Nesterov"):
        SGD([p], lr=1.0, nesterov=True)


def test_adam_by_hand() -> None:
    p = param([1.0])
    opt = Adam([p], lr=0.1, betas=(0.9, 0.99), eps=1e-8)
    grads = [0.5, -1.0]
    m = v = 0.0
    x = 1.0
    for t, g in enumerate(grads, start=1):
        set_grad(p, [g])
        opt.step()
        m = 0.9 * m + 0.1 * g
        v = 0.99 * v + 0.01 * g * g
        x -= 0.1 / (1 - 0.9**t) * m / (math.sqrt(v) / math.sqrt(1 - 0.99**t) + 1e-8)
        np.testing.assert_allclose(p.data, [x], rtol=1e-12)
    assert opt.state[p]["step"] == 2


def test_params_without_grad_are_skipped_and_zero_grad() -> None:
    a, b = param([1.0]), param([1.0])
    opt = SGD([a, b], lr=1.0)
    set_grad(a, [1.0])
    opt.step()
    assert a.data[0] == 0.0 and b.data[0] == 1.0
    opt.zero_grad(set_to_none=False)
    assert a.grad.data[0] == 0.0
    opt.zero_grad()
    assert a.grad is None


def test_validation() -> None:
    p = param([1.0])
    with pytest.raises(ValueError, match="learning rate"):
        SGD([p], lr=-1)
    with pytest.raises(ValueError, match="beta"):
        Adam([p], betas=(1.0, 0.9))
    with pytest.raises(ValueError, match="empty"):
        SGD([], lr=0.1)
    with pytest.raises(ValueError, match="more than one"):
        SGD([p, p], lr=0.1)
    with pytest.raises(TypeError):
        SGD(p, lr=0.1)


def test_param_groups_and_state_dict_roundtrip() -> None:
    a, b = param([1.0]), param([1.0])
    opt = Adam([{"params": [a]}, {"params": [b], "lr": 0.5}], lr=0.1)
    assert opt.param_groups[1]["lr"] == 0.5 and opt.param_groups[0]["lr"] == 0.1
    set_grad(a, [1.0])
    set_grad(b, [1.0])
    opt.step()
    sd = opt.state_dict()
    a2, b2 = param(a.data), param(b.data)
    opt2 = Adam([{"params": [a2]}, {"params": [b2]}], lr=0.3)
    opt2.load_state_dict(sd)
    for o, x, y in ((opt, a, b), (opt2, a2, b2)):
        set_grad(x, [0.3])
        set_grad(y, [-0.3])
        o.step()
    np.testing.assert_array_equal(a.data, a2.data)
    np.testing.assert_array_equal(b.data, b2.data)


CONFIGS = [
    ("SGD", dict(lr=0.1)),
    ("SGD", dict(lr=0.1, momentum=0.9)),
    ("SGD", dict(lr=0.05, momentum=0.9, dampening=0.1, weight_decay=0.01)),
    ("SGD", dict(lr=0.05, momentum=0.8, nesterov=True, weight_decay=0.1)),
    ("Adam", dict(lr=0.01)),
    ("Adam", dict(lr=0.01, betas=(0.8, 0.9), eps=1e-6, weight_decay=0.1)),
    ("Adam", dict(lr=0.01, amsgrad=True)),
    ("AdamW", dict(lr=0.01, weight_decay=0.1)),
]


@pytest.mark.parametrize("name,kwargs", CONFIGS)
def test_against_torch(name: str, kwargs: dict) -> None:
    torch = pytest.importorskip("torch")
    rng = np.random.default_rng(0)
    init = [rng.standard_normal((3, 2)), rng.standard_normal(4)]
    ours = [param(x.copy()) for x in init]
    theirs = [torch.tensor(x.copy(), requires_grad=True) for x in init]
    opt = {"SGD": SGD, "Adam": Adam, "AdamW": AdamW}[name](ours, **kwargs)
    topt = getattr(torch.optim, name)(theirs, **kwargs)
    for _ in range(5):
        gs = [rng.standard_normal(x.shape) for x in init]
        for p, t, g in zip(ours, theirs, gs, strict=True):
            set_grad(p, g)
            t.grad = torch.tensor(g)
        opt.step()
        topt.step()
    for p, t in zip(ours, theirs, strict=True):
        np.testing.assert_allclose(p.data, t.detach().numpy(), rtol=1e-10, atol=1e-12)
