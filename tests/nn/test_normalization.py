"""BatchNorm1d/2d/3d and LayerNorm: outputs, gradients (finite differences, and torch on the
same weights when installed), running statistics, train/eval, state_dict names, errors."""

from __future__ import annotations

import numpy as np
import pytest
from _gradcheck import check_gradients

from mpdist import nn
from mpdist.autograd import Tensor
from mpdist.nn import functional as F

RNG = np.random.default_rng(0)


def data(*shape: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).standard_normal(shape) * 2.0 + 0.5


def randomize(m: nn.Module, seed: int = 1) -> None:
    """Non-trivial weight and bias, so that their gradients are exercised."""
    rng = np.random.default_rng(seed)
    for p in m.parameters():
        p.data[...] = rng.standard_normal(p.shape)


# ----------------------------------------------------------------- BatchNorm: finite differences
@pytest.mark.parametrize(
    ("cls", "shape"),
    [(nn.BatchNorm1d, (5, 3)), (nn.BatchNorm1d, (4, 3, 2)), (nn.BatchNorm2d, (3, 2, 2, 3))],
)
def test_batchnorm_training_gradients_match_finite_differences(cls, shape) -> None:
    bn = cls(shape[1], dtype=np.float64)
    randomize(bn)
    check_gradients(bn, [data(*shape)], params=list(bn.parameters()))


def test_batchnorm_eval_gradients_match_finite_differences() -> None:
    bn = nn.BatchNorm2d(2, dtype=np.float64)
    randomize(bn)
    bn.running_mean.data[:] = [0.3, -0.2]
    bn.running_var.data[:] = [2.0, 0.5]
    bn.eval()
    check_gradients(bn, [data(3, 2, 2, 2)], params=list(bn.parameters()))


def test_batchnorm_training_output_is_normalized_per_channel() -> None:
    bn = nn.BatchNorm2d(3, dtype=np.float64)
    y = bn(data(4, 3, 5, 5)).data
    np.testing.assert_allclose(y.mean(axis=(0, 2, 3)), 0, atol=1e-12)
    np.testing.assert_allclose(y.var(axis=(0, 2, 3)), 1, rtol=1e-4)  # eps=1e-5 shrinks it


def test_a_mean_that_dwarfs_the_spread_keeps_full_precision() -> None:
    x = data(16, 3) * 1e-3 + 1e6
    y = nn.BatchNorm1d(3, eps=0.0, dtype=np.float64)(x).data
    centred = x - x.mean(axis=0)
    np.testing.assert_allclose(y, centred / centred.std(axis=0), rtol=1e-6, atol=1e-6)


def test_running_stats_follow_the_momentum_rule_with_the_unbiased_variance() -> None:
    bn = nn.BatchNorm1d(2, momentum=0.3, dtype=np.float64)
    rm, rv = np.zeros(2), np.ones(2)
    for step in range(3):
        x = data(6, 2, seed=step)
        bn(x)
        rm = 0.7 * rm + 0.3 * x.mean(axis=0)
        rv = 0.7 * rv + 0.3 * x.var(axis=0, ddof=1)
    np.testing.assert_allclose(bn.running_mean.data, rm, rtol=1e-12)
    np.testing.assert_allclose(bn.running_var.data, rv, rtol=1e-12)
    assert bn.num_batches_tracked.data == 3 and bn.num_batches_tracked.dtype == np.int64


def test_momentum_none_is_the_cumulative_average() -> None:
    bn = nn.BatchNorm1d(2, momentum=None, dtype=np.float64)
    xs = [data(5, 2, seed=s) for s in range(4)]
    for x in xs:
        bn(x)
    np.testing.assert_allclose(bn.running_mean.data, np.mean([x.mean(0) for x in xs], 0))
    np.testing.assert_allclose(bn.running_var.data, np.mean([x.var(0, ddof=1) for x in xs], 0))


def test_eval_uses_running_stats_and_leaves_them_alone() -> None:
    bn = nn.BatchNorm1d(2, dtype=np.float64)
    bn.running_mean.data[:] = [1.0, -1.0]
    bn.running_var.data[:] = [4.0, 0.25]
    bn.eval()
    x = data(3, 2)
    y = bn(x).data
    np.testing.assert_allclose(y, (x - [1.0, -1.0]) / np.sqrt(np.array([4.0, 0.25]) + 1e-5))
    np.testing.assert_array_equal(bn.running_mean.data, [1.0, -1.0])
    assert bn.num_batches_tracked.data == 0


def test_without_running_stats_batch_stats_are_used_in_eval_too() -> None:
    bn = nn.BatchNorm1d(3, track_running_stats=False, affine=False, dtype=np.float64)
    assert bn.running_mean is None and list(bn.state_dict()) == []
    x = data(4, 3)
    expected = (x - x.mean(0)) / np.sqrt(x.var(0) + 1e-5)
    np.testing.assert_allclose(bn(x).data, expected)
    bn.eval()
    np.testing.assert_allclose(bn(x).data, expected)


def test_parameter_and_buffer_names_and_affine_switches() -> None:
    assert list(nn.BatchNorm2d(3).state_dict()) == [
        "weight",
        "bias",
        "running_mean",
        "running_var",
        "num_batches_tracked",
    ]
    assert [n for n, _ in nn.BatchNorm1d(3, affine=False).named_parameters()] == []
    assert [n for n, _ in nn.BatchNorm1d(3, bias=False).named_parameters()] == ["weight"]
    bn = nn.BatchNorm1d(3)
    assert bn.weight.dtype == np.float32 and bn.running_var.dtype == np.float32
    np.testing.assert_array_equal(bn.weight.data, 1)
    np.testing.assert_array_equal(bn.bias.data, 0)
    assert repr(bn) == (
        "BatchNorm1d(3, eps=1e-05, momentum=0.1, affine=True, bias=True, track_running_stats=True)"
    )


def test_input_rank_and_batch_size_errors() -> None:
    with pytest.raises(ValueError, match=r"expected 2D or 3D input \(got 4D input\)"):
        nn.BatchNorm1d(2)(np.zeros((2, 2, 2, 2)))
    with pytest.raises(ValueError, match=r"expected 4D input \(got 2D input\)"):
        nn.BatchNorm2d(2)(np.zeros((2, 2)))
    with pytest.raises(ValueError, match="Expected more than 1 value per channel when training"):
        nn.BatchNorm1d(2)(np.zeros((1, 2)))
    nn.BatchNorm1d(2).eval()(np.zeros((1, 2)))  # one sample is fine in eval mode
    with pytest.raises(RuntimeError, match="running_mean should contain 3 elements not 2"):
        F.batch_norm(np.zeros((4, 3)), np.zeros(2), np.ones(2))


def test_device_and_dtype_keywords() -> None:
    assert nn.BatchNorm1d(2, device="cpu", dtype=np.float64).weight.dtype == np.float64
    assert nn.LayerNorm(2, device=None).weight.dtype == np.float32

    class Dev:
        type = "cpu"

    nn.BatchNorm2d(2, device=Dev())
    with pytest.raises(ValueError, match="CPU"):
        nn.BatchNorm2d(2, device="cuda")
    with pytest.raises(ValueError, match="CPU"):
        nn.LayerNorm(2, device="cuda:1")


def test_empty_batch_in_training_keeps_running_stats() -> None:
    bn = nn.BatchNorm2d(2, dtype=np.float64)
    x = Tensor(np.zeros((0, 2, 3, 3)), requires_grad=True)
    y = bn(x)
    assert y.shape == (0, 2, 3, 3)
    y.sum().backward()
    np.testing.assert_array_equal(bn.weight.grad.data, 0)
    np.testing.assert_array_equal(bn.running_mean.data, 0)
    np.testing.assert_array_equal(bn.running_var.data, 1)
    assert bn.num_batches_tracked.data == 1


# ----------------------------------------------------------------- LayerNorm
@pytest.mark.parametrize("affine", [True, False])
@pytest.mark.parametrize("shape", [(4,), (3, 4)])
def test_layernorm_gradients_match_finite_differences(affine, shape) -> None:
    ln = nn.LayerNorm(shape, elementwise_affine=affine, dtype=np.float64)
    randomize(ln)
    check_gradients(ln, [data(2, *shape)], params=list(ln.parameters()))


def test_layernorm_values_names_and_errors() -> None:
    x = data(2, 5)
    ln = nn.LayerNorm(5, dtype=np.float64)
    expected = (x - x.mean(-1, keepdims=True)) / np.sqrt(x.var(-1, keepdims=True) + 1e-5)
    np.testing.assert_allclose(ln(x).data, expected)
    assert list(ln.state_dict()) == ["weight", "bias"]
    assert list(nn.LayerNorm(5, bias=False).state_dict()) == ["weight"]
    assert repr(ln) == "LayerNorm((5,), eps=1e-05, elementwise_affine=True, bias=True)"
    msg = r"Given normalized_shape=\[3\], expected input with shape \[\*, 3\], but got input of size\[2, 4\]"
    with pytest.raises(RuntimeError, match=msg):
        nn.LayerNorm(3)(np.zeros((2, 4)))


# ----------------------------------------------------------------- against torch
torch_cases = pytest.mark.parametrize(
    ("name", "kwargs", "shape"),
    [
        ("BatchNorm1d", {}, (6, 3)),
        ("BatchNorm1d", {"momentum": None}, (4, 3, 5)),
        ("BatchNorm2d", {"momentum": 0.2, "eps": 1e-3}, (3, 2, 4, 4)),
        ("BatchNorm2d", {"affine": False}, (2, 2, 3, 3)),
        ("BatchNorm2d", {"bias": False}, (2, 2, 3, 3)),
        ("BatchNorm1d", {"track_running_stats": False}, (5, 4)),
        ("BatchNorm3d", {}, (2, 2, 2, 3, 2)),
    ],
)


def _to_torch_state(torch, m):
    return {k: torch.from_numpy(np.array(v)) for k, v in m.state_dict().items()}


@torch_cases
def test_batchnorm_matches_torch_over_train_and_eval_steps(name, kwargs, shape) -> None:
    torch = pytest.importorskip("torch")
    ours = getattr(nn, name)(shape[1], dtype=np.float64, **kwargs)
    randomize(ours)
    theirs = getattr(torch.nn, name)(shape[1], dtype=torch.float64, **kwargs)
    theirs.load_state_dict(_to_torch_state(torch, ours))
    for step in range(4):
        if step == 3:
            ours.eval()
            theirs.eval()
        x = data(*shape, seed=10 + step)
        xt = torch.tensor(x, requires_grad=True)
        xo = Tensor(x.copy(), requires_grad=True)
        r = np.random.default_rng(step).standard_normal(shape)
        yt, yo = theirs(xt), ours(xo)
        (yt * torch.from_numpy(r)).sum().backward()
        (yo * r).sum().backward()
        np.testing.assert_allclose(yo.data, yt.detach().numpy(), rtol=1e-6, atol=1e-9)
        np.testing.assert_allclose(xo.grad.data, xt.grad.numpy(), rtol=1e-6, atol=1e-9)
        for (n, p), (_, q) in zip(ours.named_parameters(), theirs.named_parameters(), strict=True):
            np.testing.assert_allclose(p.grad.data, q.grad.numpy(), rtol=1e-6, atol=1e-9, err_msg=n)
        for k, v in theirs.state_dict().items():
            np.testing.assert_allclose(ours.state_dict()[k], v.numpy(), rtol=1e-6, err_msg=k)


@pytest.mark.parametrize(
    "kwargs", [{}, {"affine": False}, {"bias": False}, {"momentum": None, "eps": 1e-3}]
)
def test_batchnorm_repr_matches_torch(kwargs) -> None:
    torch = pytest.importorskip("torch")
    assert repr(nn.BatchNorm2d(3, **kwargs)) == repr(torch.nn.BatchNorm2d(3, **kwargs))
    assert repr(nn.SyncBatchNorm(3, **kwargs)) == repr(torch.nn.SyncBatchNorm(3, **kwargs))


def test_batchnorm_loads_a_torch_state_dict() -> None:
    torch = pytest.importorskip("torch")
    theirs = torch.nn.BatchNorm2d(3)
    theirs(torch.randn(4, 3, 2, 2))
    ours = nn.BatchNorm2d(3)
    ours.load_state_dict({k: v.numpy() for k, v in theirs.state_dict().items()})
    assert list(ours.state_dict()) == list(theirs.state_dict())
    np.testing.assert_array_equal(ours.running_var.data, theirs.running_var.numpy())
    assert ours.num_batches_tracked.data == 1


@pytest.mark.parametrize(
    ("shape", "norm", "affine"), [((4, 5), 5, True), ((2, 3, 4), (3, 4), True), ((2, 3), 3, False)]
)
def test_layernorm_matches_torch(shape, norm, affine) -> None:
    torch = pytest.importorskip("torch")
    ours = nn.LayerNorm(norm, elementwise_affine=affine, dtype=np.float64)
    randomize(ours)
    theirs = torch.nn.LayerNorm(norm, elementwise_affine=affine, dtype=torch.float64)
    theirs.load_state_dict(_to_torch_state(torch, ours))
    x = data(*shape)
    xt, xo = torch.tensor(x, requires_grad=True), Tensor(x.copy(), requires_grad=True)
    r = np.random.default_rng(3).standard_normal(shape)
    yt, yo = theirs(xt), ours(xo)
    (yt * torch.from_numpy(r)).sum().backward()
    (yo * r).sum().backward()
    np.testing.assert_allclose(yo.data, yt.detach().numpy(), rtol=1e-6, atol=1e-9)
    np.testing.assert_allclose(xo.grad.data, xt.grad.numpy(), rtol=1e-6, atol=1e-9)
    for p, q in zip(ours.parameters(), theirs.parameters(), strict=True):
        np.testing.assert_allclose(p.grad.data, q.grad.numpy(), rtol=1e-6, atol=1e-9)


def test_functional_forms_match_torch() -> None:
    torch = pytest.importorskip("torch")
    tF = torch.nn.functional
    x = data(4, 3, 2)
    rm, rv = np.zeros(3), np.ones(3)
    rmt, rvt = torch.zeros(3, dtype=torch.float64), torch.ones(3, dtype=torch.float64)
    w, b = data(3, seed=5), data(3, seed=6)
    for training in (True, False):
        yo = F.batch_norm(x, rm, rv, Tensor(w), Tensor(b), training, 0.3, 1e-4)
        yt = tF.batch_norm(
            torch.tensor(x), rmt, rvt, torch.tensor(w), torch.tensor(b), training, 0.3, 1e-4
        )
        np.testing.assert_allclose(yo.data, yt.numpy(), rtol=1e-6, atol=1e-9)
        np.testing.assert_allclose(rm, rmt.numpy(), rtol=1e-6)  # updated in place
        np.testing.assert_allclose(rv, rvt.numpy(), rtol=1e-6)
    np.testing.assert_allclose(
        F.layer_norm(x, (3, 2), eps=1e-3).data,
        tF.layer_norm(torch.tensor(x), (3, 2), eps=1e-3).numpy(),
        rtol=1e-6,
        atol=1e-9,
    )
