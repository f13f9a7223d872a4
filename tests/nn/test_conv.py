"""Conv2d and F.conv2d: values and every gradient against torch (float64, same weights) and
against finite differences, over stride / padding / dilation / groups / padding modes;
initialisation, state_dict and repr as torch's; torch's error messages."""

from __future__ import annotations

import math

import numpy as np
import pytest
from _gradcheck import check_gradients
from hypothesis import given, settings
from hypothesis import strategies as st

import mpdist
from mpdist import nn
from mpdist.autograd import Tensor
from mpdist.nn import functional as F
from mpdist.random import default_generator

FAST = settings(max_examples=25, deadline=None)
# torch's own note that it pads a copy for 'same' with an even kernel: not about us
pytestmark = pytest.mark.filterwarnings("ignore:Using padding='same':UserWarning")


def _torch_copy(m: nn.Conv2d, **kwargs):
    """The torch Conv2d with the same configuration and weights (float64)."""
    torch = pytest.importorskip("torch")
    t = torch.nn.Conv2d(dtype=torch.float64, **kwargs)
    t.load_state_dict({k: torch.tensor(np.asarray(v)) for k, v in m.state_dict().items()})
    return t


def _compare_with_torch(kwargs: dict, x: np.ndarray) -> None:
    torch = pytest.importorskip("torch")
    m = nn.Conv2d(dtype=np.float64, **kwargs)
    t = _torch_copy(m, **kwargs)
    xm = Tensor(x.copy(), requires_grad=True)
    xt = torch.tensor(x, requires_grad=True)
    out, ref = m(xm), t(xt)
    assert out.shape == tuple(ref.shape)
    np.testing.assert_allclose(out.data, ref.detach().numpy(), rtol=1e-6, atol=1e-6)
    w = np.random.default_rng(1).standard_normal(out.shape)
    (out * w).sum().backward()
    (ref * torch.tensor(w)).sum().backward()
    np.testing.assert_allclose(xm.grad.data, xt.grad.numpy(), rtol=1e-6, atol=1e-6)
    grads = dict(t.named_parameters())
    for name, p in m.named_parameters():
        np.testing.assert_allclose(p.grad.data, grads[name].grad.numpy(), rtol=1e-6, atol=1e-6)


CASES = [
    dict(in_channels=3, out_channels=4, kernel_size=3),
    dict(in_channels=3, out_channels=4, kernel_size=3, stride=2, padding=1),
    dict(in_channels=4, out_channels=6, kernel_size=(2, 3), stride=(2, 1), padding=(1, 2)),
    dict(in_channels=4, out_channels=4, kernel_size=3, dilation=2, groups=4, bias=False),
    dict(in_channels=4, out_channels=6, kernel_size=(3, 4), padding="same", dilation=(2, 1)),
    dict(in_channels=2, out_channels=2, kernel_size=2, padding="same"),  # odd total padding
    dict(in_channels=4, out_channels=2, kernel_size=3, stride=3, padding="valid", groups=2),
    dict(in_channels=2, out_channels=4, kernel_size=3, padding=2, padding_mode="reflect"),
    dict(
        in_channels=2,
        out_channels=4,
        kernel_size=3,
        stride=2,
        padding=(1, 3),
        padding_mode="replicate",
    ),
    dict(
        in_channels=4,
        out_channels=2,
        kernel_size=4,
        padding="same",
        padding_mode="circular",
        groups=2,
    ),
]


@pytest.mark.parametrize("kwargs", CASES, ids=lambda k: ",".join(f"{a}={b}" for a, b in k.items()))
def test_matches_torch(kwargs: dict) -> None:
    x = np.random.default_rng(0).standard_normal((2, kwargs["in_channels"], 7, 8))
    _compare_with_torch(kwargs, x)


@FAST
@given(
    groups=st.sampled_from([1, 2]),
    kernel=st.tuples(st.integers(1, 3), st.integers(1, 3)),
    stride=st.tuples(st.integers(1, 3), st.integers(1, 3)),
    padding=st.tuples(st.integers(0, 2), st.integers(0, 2)),
    dilation=st.tuples(st.integers(1, 2), st.integers(1, 2)),
    bias=st.booleans(),
    mode=st.sampled_from(["zeros", "reflect", "replicate", "circular"]),
)
def test_matches_torch_on_drawn_configurations(
    groups, kernel, stride, padding, dilation, bias, mode
) -> None:
    kwargs = dict(
        in_channels=2 * groups,
        out_channels=2 * groups,
        kernel_size=kernel,
        stride=stride,
        padding=padding,
        dilation=dilation,
        groups=groups,
        bias=bias,
        padding_mode=mode,
    )
    x = np.random.default_rng(0).standard_normal((2, 2 * groups, 6, 7))
    _compare_with_torch(kwargs, x)


def test_functional_conv2d_matches_torch() -> None:
    torch = pytest.importorskip("torch")
    rng = np.random.default_rng(2)
    x, w, b = (
        rng.standard_normal((2, 4, 6, 5)),
        rng.standard_normal((6, 2, 2, 3)),
        rng.standard_normal(6),
    )
    for kw in (
        dict(padding="same", groups=2),
        dict(stride=(2, 1), padding=1, dilation=(1, 2), groups=2),
    ):
        ts = [torch.tensor(a, requires_grad=True) for a in (x, w, b)]
        ms = [Tensor(a.copy(), requires_grad=True) for a in (x, w, b)]
        out, ref = F.conv2d(*ms, **kw), torch.nn.functional.conv2d(*ts, **kw)
        np.testing.assert_allclose(out.data, ref.detach().numpy(), rtol=1e-6, atol=1e-6)
        out.sum().backward()
        ref.sum().backward()
        for m_, t_ in zip(ms, ts, strict=True):
            np.testing.assert_allclose(m_.grad.data, t_.grad.numpy(), rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize(
    "kwargs",
    [
        dict(in_channels=2, out_channels=2, kernel_size=2, stride=2, padding=1),
        dict(
            in_channels=2,
            out_channels=4,
            kernel_size=(3, 2),
            dilation=(1, 2),
            padding="same",
            groups=2,
        ),
        dict(in_channels=2, out_channels=2, kernel_size=3, padding=1, padding_mode="reflect"),
        dict(in_channels=2, out_channels=2, kernel_size=2, padding=(2, 1), padding_mode="circular"),
        dict(
            in_channels=2,
            out_channels=2,
            kernel_size=2,
            stride=(1, 2),
            padding=1,
            padding_mode="replicate",
        ),
    ],
)
def test_gradients_against_finite_differences(kwargs: dict) -> None:
    m = nn.Conv2d(dtype=np.float64, **kwargs)
    x = np.random.default_rng(3).standard_normal((2, kwargs["in_channels"], 4, 5))
    check_gradients(m, [x], list(m.parameters()))


def test_one_graph_node_per_convolution() -> None:
    m = nn.Conv2d(2, 3, 3, padding=1, padding_mode="reflect")
    x = Tensor(np.ones((1, 2, 5, 5), np.float32), requires_grad=True)
    node = m(x).grad_fn
    assert node.name == "_Conv2d"
    assert node.inputs == (x, m.weight, m.bias)  # padding happens inside the node


def test_unbatched_input_and_dtypes() -> None:
    m = nn.Conv2d(3, 4, 3, padding=1)
    assert m.weight.dtype == np.float32 and m.bias.dtype == np.float32
    x = np.random.default_rng(5).standard_normal((3, 6, 6)).astype(np.float32)
    single = m(x)
    assert single.shape == (4, 6, 6) and single.dtype == np.float32
    np.testing.assert_allclose(single.data, m(x[None]).data[0], rtol=1e-6)
    # a float64 input computes in float64, like Linear
    assert m(x.astype(np.float64)).dtype == np.float64


def test_initialisation_draws_from_mpdist_generator() -> None:
    mpdist.manual_seed(123)
    m = nn.Conv2d(4, 6, (3, 2), groups=2)
    fan_in = 2 * 3 * 2
    bound = 1 / math.sqrt(fan_in)  # kaiming-uniform with a=sqrt(5)
    rng = np.random.default_rng(123)
    expected_w = rng.uniform(-bound, bound, (6, 2, 3, 2))
    expected_b = rng.uniform(-bound, bound, 6)
    np.testing.assert_allclose(m.weight.data, expected_w, rtol=1e-6)
    np.testing.assert_allclose(m.bias.data, expected_b, rtol=1e-6)
    # the next draw continues the same generator
    assert default_generator().uniform() == rng.uniform()


def test_state_dict_and_repr_as_torch() -> None:
    torch = pytest.importorskip("torch")
    for kwargs in CASES:
        m, t = nn.Conv2d(**kwargs), torch.nn.Conv2d(**kwargs)
        assert list(m.state_dict()) == list(t.state_dict())
        assert {k: v.shape for k, v in m.state_dict().items()} == {
            k: tuple(v.shape) for k, v in t.state_dict().items()
        }
        assert repr(m) == repr(t)


@pytest.mark.parametrize(
    "kwargs, match",
    [
        (
            dict(padding="same", stride=2),
            "padding='same' is not supported for strided convolutions",
        ),
        (dict(padding="full"), "Invalid padding string 'full'"),
        (dict(groups=3), "in_channels must be divisible by groups"),
        (dict(out_channels=3, groups=2), "out_channels must be divisible by groups"),
        (dict(groups=0), "groups must be a positive integer"),
        (dict(padding_mode="mirror"), "padding_mode must be one of"),
        (dict(kernel_size=(3, 3, 3)), "kernel_size"),
        (dict(kernel_size=0), "kernel_size must be positive"),
        (dict(device="cuda"), "CPU"),
    ],
)
def test_constructor_errors(kwargs: dict, match: str) -> None:
    args = dict(in_channels=4, out_channels=4, kernel_size=3) | kwargs
    with pytest.raises(ValueError, match=match):
        nn.Conv2d(**args)


@pytest.mark.parametrize(
    "call, match",
    [
        (
            lambda: nn.Conv2d(4, 4, 3, padding=-1)(np.ones((1, 4, 5, 5))),
            "negative padding is not supported",
        ),
        (
            lambda: nn.Conv2d(4, 4, 3, stride=0)(np.ones((1, 4, 5, 5))),
            "non-positive stride is not supported",
        ),
        (
            lambda: nn.Conv2d(4, 4, 3, dilation=0)(np.ones((1, 4, 5, 5))),
            "dilation should be greater than zero",
        ),
        (
            lambda: nn.Conv2d(4, 4, 3)(np.ones((1, 3, 5, 5))),
            r"Given groups=1, weight of size \[4, 4, 3, 3\], expected input\[1, 3, 5, 5\] to have 4 "
            r"channels, but got 3 channels instead",
        ),
        (
            lambda: nn.Conv2d(4, 4, 3)(np.ones((1, 4, 2, 2))),
            r"Calculated padded input size per channel: \(2 x 2\). Kernel size: \(3 x 3\)",
        ),
        (
            lambda: nn.Conv2d(4, 4, 3)(np.ones((4, 5))),
            "Expected 3D \\(unbatched\\) or 4D \\(batched\\) input",
        ),
        (
            lambda: F.conv2d(
                np.ones((1, 4, 5, 5)), Tensor(np.ones((4, 4, 3, 3))), stride=2, padding="same"
            ),
            "padding='same' is not supported for strided convolutions",
        ),
        (
            lambda: F.conv2d(np.ones((1, 4, 5, 5)), Tensor(np.ones((4, 4, 3, 3))), padding="bad"),
            "Invalid padding string: 'bad'",
        ),
        (
            lambda: F.conv2d(
                np.ones((1, 4, 5, 5)), Tensor(np.ones((4, 4, 3, 3))), Tensor(np.ones(3))
            ),
            "expected bias to be 1-dimensional with 4 elements",
        ),
        (
            lambda: nn.Conv2d(2, 2, 3, padding=3, padding_mode="reflect")(np.ones((1, 2, 3, 3))),
            "Padding size should be less than the corresponding input dimension",
        ),
    ],
)
def test_call_errors_as_torch(call, match: str) -> None:
    with pytest.raises(RuntimeError, match=match):
        call()
