"""SGD and Adam against hand-computed steps and against torch when it is installed."""

from __future__ import annotations

import math
import pickle

import numpy as np
import pytest

from mpdist import nn
from mpdist.autograd import Tensor
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
    step = opt.state[p]["step"]  # a 0-d float32 Tensor, as torch's
    assert isinstance(step, Tensor) and step.shape == () and step.dtype == np.float32
    assert step.item() == 2


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
    sd = pickle.loads(pickle.dumps(opt.state_dict()))  # a checkpoint: torch's shares tensors
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


def _trained(torch, name: str, kwargs: dict, steps: int = 3):
    """(ours, torch's) optimizers of the same two float64 parameters after ``steps`` steps
    (the second parameter gets no gradient in the first step: state only for some)."""
    rng = np.random.default_rng(1)
    init = [rng.standard_normal((3, 2)), rng.standard_normal(4)]
    ours = [param(x.copy()) for x in init]
    theirs = [torch.tensor(x.copy(), requires_grad=True) for x in init]
    opt = {"SGD": SGD, "Adam": Adam, "AdamW": AdamW}[name](ours, **kwargs)
    topt = getattr(torch.optim, name)(theirs, **kwargs)
    for step in range(steps):
        for i, (p, t) in enumerate(zip(ours, theirs, strict=True)):
            g = rng.standard_normal(init[i].shape)
            p.grad, t.grad = (None, None) if step == 0 and i == 1 else (g, torch.tensor(g))
        opt.step()
        topt.step()
    return opt, topt


@pytest.mark.parametrize("name,kwargs", CONFIGS)
def test_state_dict_as_torch(name: str, kwargs: dict) -> None:
    torch = pytest.importorskip("torch")
    opt, topt = _trained(torch, name, kwargs)
    sd, tsd = opt.state_dict(), topt.state_dict()
    assert list(sd) == list(tsd) == ["state", "param_groups"]
    assert list(sd["state"]) == list(tsd["state"])
    params = opt.param_groups[0]["params"]
    for i, state in sd["state"].items():
        tstate = tsd["state"][i]
        assert list(state) == list(tstate)
        assert state is opt.state[params[i]]  # the optimizer's own dicts and tensors
        for k, v in state.items():
            t = tstate[k]
            assert isinstance(v, Tensor) and not v.requires_grad, k
            assert str(v.dtype) == str(t.dtype).removeprefix("torch."), k
            assert tuple(v.shape) == tuple(t.shape), k
            np.testing.assert_allclose(v.data, t.numpy(), rtol=1e-10, atol=1e-12, err_msg=k)
    (group,), (tgroup,) = sd["param_groups"], tsd["param_groups"]
    assert list(group)[-1] == list(tgroup)[-1] == "params"
    assert group["params"] == tgroup["params"] == [0, 1]
    assert {k: tgroup[k] for k in group} == group  # torch has more keys (foreach, fused...)
    assert group is not opt.param_groups[0]


@pytest.mark.parametrize("name,kwargs", CONFIGS)
def test_load_state_dict_as_torch(name: str, kwargs: dict) -> None:
    torch = pytest.importorskip("torch")
    opt, topt = _trained(torch, name, kwargs)
    sd, tsd = opt.state_dict(), topt.state_dict()
    # into float32 parameters: floating state cast to float32, step kept
    ours = [nn.Parameter(np.zeros((3, 2), np.float32)), nn.Parameter(np.zeros(4, np.float32))]
    theirs = [torch.zeros(3, 2, requires_grad=True), torch.zeros(4, requires_grad=True)]
    other = type(opt)(ours, lr=1.0)
    tother = type(topt)(theirs, lr=1.0)
    other.load_state_dict(sd)
    tother.load_state_dict(tsd)
    assert other.param_groups[0]["lr"] == tother.param_groups[0]["lr"] == kwargs["lr"]
    assert other.param_groups[0]["params"][0] is ours[0]
    for p, t in zip(ours, theirs, strict=True):
        assert list(other.state[p]) == list(tother.state[t])
        for k, v in other.state[p].items():
            tv = tother.state[t][k]
            assert str(v.dtype) == str(tv.dtype).removeprefix("torch."), k
            np.testing.assert_allclose(v.data, tv.numpy(), rtol=1e-6, err_msg=k)
    # loaded tensors are the saved ones unless cast, as torch's
    same = type(opt)(opt.param_groups[0]["params"], lr=1.0)
    same.load_state_dict(sd)
    for p in sd["state"]:
        param_ = same.param_groups[0]["params"][p]
        assert all(v is sd["state"][p][k] for k, v in same.state[param_].items())
        assert same.state[param_] is not sd["state"][p]
    # then training on from a pickled checkpoint equals torch's training on
    again = type(opt)([param(p.data.copy()) for p in opt.param_groups[0]["params"]], lr=1.0)
    tagain = type(topt)(
        [
            torch.tensor(p.detach().numpy().copy(), requires_grad=True)
            for p in topt.param_groups[0]["params"]
        ],
        lr=1.0,
    )
    again.load_state_dict(pickle.loads(pickle.dumps(sd)))
    tagain.load_state_dict(pickle.loads(pickle.dumps(tsd)))
    rng = np.random.default_rng(3)
    for _ in range(2):
        for p, t in zip(
            again.param_groups[0]["params"], tagain.param_groups[0]["params"], strict=True
        ):
            g = rng.standard_normal(p.shape)
            p.grad, t.grad = g, torch.tensor(g)
        again.step()
        tagain.step()
    for p, t in zip(again.param_groups[0]["params"], tagain.param_groups[0]["params"], strict=True):
        np.testing.assert_allclose(p.data, t.detach().numpy(), rtol=1e-10, atol=1e-12)


def test_load_state_dict_errors_as_torch() -> None:
    torch = pytest.importorskip("torch")
    opt = SGD([param([1.0]), param([2.0])], lr=0.1)
    topt = torch.optim.SGD(
        [torch.ones(1, requires_grad=True)] * 1 + [torch.ones(1, requires_grad=True)], lr=0.1
    )
    bad_groups = [
        {"state": {}, "param_groups": []},
        {"state": {}, "param_groups": [{"lr": 0.1, "params": [0]}]},
    ]
    for bad in bad_groups:
        with pytest.raises(ValueError) as mine:
            opt.load_state_dict(bad)
        with pytest.raises(ValueError) as theirs:
            topt.load_state_dict(bad)
        assert str(mine.value) == str(theirs.value)


def test_old_checkpoint_values_load() -> None:
    """ndarrays and a plain-number step (mpdist's state dicts before they held Tensors)."""
    p = param([1.0, 2.0])
    opt = Adam([p], lr=0.1)
    group = {k: v for k, v in opt.param_groups[0].items() if k != "params"}
    old = {"exp_avg": np.ones(2), "exp_avg_sq": np.ones(2), "step": 4}
    opt.load_state_dict({"state": {0: old}, "param_groups": [{**group, "params": [0]}]})
    assert isinstance(opt.state[p]["exp_avg"], Tensor)
    set_grad(p, [0.0, 0.0])
    opt.step()
    assert isinstance(opt.state[p]["step"], Tensor) and opt.state[p]["step"].item() == 5
    np.testing.assert_allclose(opt.state[p]["exp_avg"].data, [0.9, 0.9])
