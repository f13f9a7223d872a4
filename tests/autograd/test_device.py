"""Devices: mpdist.device (CPU only), Tensor.device / is_cuda / to, Module.to / cpu, the
device= and dtype= keywords of Linear, and DDP's device_ids / replicate's device_id as torch
takes them for a CPU module."""

from __future__ import annotations

import pickle
from typing import Any

import numpy as np
import pytest

import mpdist
from mpdist import nn
from mpdist.autograd import Tensor, device
from mpdist.nn import functional as F
from mpdist.parallel import DistributedDataParallel as DDP
from mpdist.parallel import replicate
from mpdist.testing import spawn_threads


# ----------------------------------------------------------------- device
@pytest.mark.parametrize(
    ("args", "text", "index"),
    [
        (("cpu",), "cpu", None),
        (("cpu:0",), "cpu:0", 0),
        (("cpu", 0), "cpu:0", 0),
        ((0,), "cpu:0", 0),
        (("cpu:3",), "cpu:3", 3),
        ((np.int64(2),), "cpu:2", 2),
    ],
)
def test_device_spellings(args: tuple[Any, ...], text: str, index: int | None) -> None:
    d = device(*args)
    assert (str(d), d.type, d.index) == (text, "cpu", index)
    assert device(d) == d and device(text) == d and hash(device(text)) == hash(d)
    assert pickle.loads(pickle.dumps(d)) == d
    assert mpdist.device is device


def test_device_repr_and_equality_match_torch() -> None:
    torch = pytest.importorskip("torch")
    for spelling in ["cpu", "cpu:0", "cpu:1"]:
        assert repr(device(spelling)) == repr(torch.device(spelling))
        assert str(device(spelling)) == str(torch.device(spelling))
    assert repr(device("cpu", 0)) == repr(torch.device("cpu", 0))
    # as in torch: an index makes a different device, and a string is not a device
    assert device("cpu") != device("cpu:0")
    assert (device("cpu") == "cpu") is (torch.device("cpu") == "cpu") is False
    assert len({device("cpu"), device("cpu"), device("cpu:0")}) == 2


@pytest.mark.parametrize("spelling", ["cuda", "cuda:1", "meta", "mps", "xpu:0", "gpu", "CPU"])
def test_other_devices_are_refused(spelling: str) -> None:
    with pytest.raises(ValueError, match="mpdist runs on the CPU") as info:
        device(spelling)
    assert repr(spelling) in str(info.value)
    with pytest.raises(ValueError, match="mpdist runs on the CPU"):
        Tensor(np.ones(2)).to(spelling)
    with pytest.raises(ValueError, match="mpdist runs on the CPU"):
        nn.Linear(2, 2, device=spelling)
    with pytest.raises(ValueError, match="mpdist runs on the CPU"):
        nn.Linear(2, 2).to(spelling)


@pytest.mark.parametrize(
    ("args", "error", "match"),
    [
        (("cpu:x",), RuntimeError, "Invalid device string: 'cpu:x'"),
        (("cpu:",), RuntimeError, "Invalid device string"),
        (("",), RuntimeError, "Device string must not be empty"),
        (("cpu", -1), RuntimeError, "Device index must not be negative"),
        ((-1,), RuntimeError, "Device index must not be negative"),
        (("cpu:0", 0), RuntimeError, "must not include an index"),
        (("cpu", "0"), TypeError, "index must be an int"),
        ((None,), TypeError, "device"),
        ((1.0,), TypeError, "device"),
        ((True,), TypeError, "device"),
    ],
)
def test_malformed_devices(args: tuple[Any, ...], error: type[Exception], match: str) -> None:
    with pytest.raises(error, match=match):
        device(*args)


def test_device_is_immutable() -> None:
    d = device("cpu")
    with pytest.raises(AttributeError):
        d.index = 1  # type: ignore[misc]


# ----------------------------------------------------------------- Tensor
def test_tensor_device_and_flags() -> None:
    t = Tensor(np.zeros(3))
    assert t.device == device("cpu") and str(t.device) == "cpu"
    assert t.is_cuda is False and t.is_cpu is True
    assert t.cpu() is t
    with pytest.raises(ValueError, match="CPU"):
        t.cuda()


def test_to_without_a_change_is_self() -> None:
    t = Tensor(np.ones(3, np.float32), requires_grad=True)
    for args, kwargs in [
        (("cpu",), {}),
        ((device("cpu:0"),), {}),
        ((0,), {}),
        ((np.float32,), {}),
        (("cpu", np.float32), {}),
        ((), {"device": "cpu"}),
        ((), {"dtype": np.float32}),
        ((Tensor(np.zeros(1, np.float32)),), {}),
        ((np.float32, True), {}),
    ]:
        assert t.to(*args, **kwargs) is t, (args, kwargs)


def test_to_dtype_is_a_recorded_cast() -> None:
    a = np.array([0.5, -1.25, 2.0])
    t = Tensor(a.astype(np.float32), requires_grad=True)
    for args, kwargs in [
        ((np.float64,), {}),
        (("cpu", np.float64), {}),
        ((), {"dtype": "float64"}),
        ((Tensor(np.zeros(1)),), {}),
        ((), {"device": "cpu", "dtype": np.float64}),
    ]:
        t.grad = None
        d = t.to(*args, **kwargs)
        assert d.dtype == np.float64 and d.grad_fn is not None
        (d * Tensor(a)).sum().backward()
        assert t.grad is not None and t.grad.dtype == np.float32
        np.testing.assert_allclose(t.grad.data, a.astype(np.float32))


def test_to_copy_makes_a_new_tensor_in_the_graph() -> None:
    t = Tensor(np.ones(2), requires_grad=True)
    c = t.to(copy=True)
    assert c is not t and not np.shares_memory(c.data, t.data) and c.grad_fn is not None
    (c * 3).sum().backward()
    np.testing.assert_array_equal(t.grad.data, [3.0, 3.0])
    assert Tensor(np.ones(2)).to("cpu", np.float64, False, True) is not None


def test_to_an_integer_dtype_leaves_the_graph_as_in_torch() -> None:
    t = Tensor(np.array([1.7, -2.2]), requires_grad=True)
    i = t.to(np.int64)
    assert i.dtype == np.int64 and not i.requires_grad and i.grad_fn is None
    np.testing.assert_array_equal(i.data, [1, -2])
    torch = pytest.importorskip("torch")
    assert not torch.tensor([1.7], requires_grad=True).to(torch.int64).requires_grad


def test_to_argument_errors() -> None:
    t = Tensor(np.ones(2))
    with pytest.raises(TypeError, match="twice"):
        t.to(np.float32, np.float64)
    with pytest.raises(TypeError, match="twice"):
        t.to("cpu", device="cpu")
    with pytest.raises(TypeError, match="unexpected keyword"):
        t.to(dtyp=np.float32)
    with pytest.raises(TypeError, match="device, a dtype or a tensor"):
        t.to(object())


# ----------------------------------------------------------------- Module
def test_module_to_device_changes_nothing() -> None:
    m = nn.Sequential(nn.Linear(3, 4), nn.ReLU(), nn.Linear(4, 2))
    before = [p.data for p in m.parameters()]
    for target in ["cpu", "cpu:0", device("cpu"), 0]:
        assert m.to(target) is m
        assert m.to(device=target) is m
    assert m.cpu() is m
    assert all(p.data is b for p, b in zip(m.parameters(), before, strict=True))


def test_module_to_dtype_casts_floating_parameters_and_grads() -> None:
    m = nn.Linear(3, 2)
    w = m.weight
    m(np.ones((1, 3), np.float32)).sum().backward()
    assert m.to(np.float64) is m and m.weight is w
    assert m.weight.dtype == m.bias.dtype == m.weight.grad.dtype == np.float64
    m.to("cpu", np.float32)
    assert m.weight.dtype == np.float32
    m.to(Tensor(np.zeros(1)))  # a tensor's dtype
    assert m.weight.dtype == np.float64
    m.to(dtype=np.float32, device="cpu")
    assert m.weight.dtype == np.float32


def test_module_to_a_non_floating_dtype_is_torchs_type_error() -> None:
    with pytest.raises(
        TypeError, match="nn.Module.to only accepts floating point or complex dtypes"
    ):
        nn.Linear(2, 2).to(np.int64)
    torch = pytest.importorskip("torch")
    with pytest.raises(
        TypeError, match="nn.Module.to only accepts floating point or complex dtypes"
    ):
        torch.nn.Linear(2, 2).to(torch.int64)


def test_linear_device_and_dtype_keywords() -> None:
    assert nn.Linear(2, 3).weight.dtype == np.float32
    m = nn.Linear(2, 3, device="cpu", dtype=np.float64)
    assert m.weight.dtype == m.bias.dtype == np.float64
    assert nn.Linear(2, 3, False, "cpu", np.float64).bias is None
    mpdist.manual_seed(4)
    a = nn.Linear(5, 3, device=device("cpu"))
    mpdist.manual_seed(4)
    b = nn.Linear(5, 3)
    np.testing.assert_array_equal(a.weight.data, b.weight.data)


# ----------------------------------------------------------------- DDP and replicate
def _model() -> nn.Module:
    mpdist.manual_seed(0)
    return nn.Linear(3, 2, dtype=np.float64)


def test_ddp_device_ids_as_torch_takes_them_for_a_cpu_module() -> None:
    def body(rank: int, ws: int) -> None:
        for ok in [
            {},
            {"device_ids": None},
            {"device_ids": []},
            {"device_ids": ()},
            {"output_device": 0},
            {"output_device": None},
        ]:
            ddp = DDP(_model(), **ok)
            assert ddp.device_ids is None and ddp.output_device is None, ok
        for bad in [
            {"device_ids": [0]},
            {"device_ids": ["cpu"]},
            {"device_ids": [device("cpu")]},
            {"output_device": 1},
            {"output_device": device("cpu")},
        ]:
            with pytest.raises(
                ValueError,
                match=(
                    "DistributedDataParallel device_ids and output_device arguments only work with "
                    "single-device/multiple-device GPU modules or CPU modules"
                ),
            ):
                DDP(_model(), **bad)
        with pytest.raises(
            ValueError, match="device_ids can only be None or contain a single element"
        ):
            DDP(_model(), device_ids=[0, 1])
        with pytest.raises(TypeError):
            DDP(_model(), device_ids=0)  # type: ignore[arg-type]

    spawn_threads(body, 1)


def test_torch_ddp_takes_the_same_device_ids_on_cpu() -> None:
    """The oracle for the test above: torch with gloo in this process."""
    torch = pytest.importorskip("torch")
    import torch.distributed as tdist

    store = tdist.HashStore()
    tdist.init_process_group("gloo", store=store, rank=0, world_size=1)
    try:
        for ok in [None, [], ()]:
            assert (
                torch.nn.parallel.DistributedDataParallel(
                    torch.nn.Linear(3, 2), device_ids=ok
                ).device_ids
                is None
            )
        for bad in [[0], [torch.device("cpu")]]:
            with pytest.raises(
                ValueError,
                match="only work with single-device/multiple-device GPU modules or CPU modules",
            ):
                torch.nn.parallel.DistributedDataParallel(torch.nn.Linear(3, 2), device_ids=bad)
        with pytest.raises(
            ValueError, match="device_ids can only be None or contain a single element"
        ):
            torch.nn.parallel.DistributedDataParallel(torch.nn.Linear(3, 2), device_ids=[0, 1])
    finally:
        tdist.destroy_process_group()


def test_replicate_device_id_and_ddp_weakref() -> None:
    def body(rank: int, ws: int) -> None:
        x = np.ones((2, 3))
        for did in [None, device("cpu"), device("cpu:0"), mpdist.device(0)]:
            m = replicate(_model(), device_id=did)
            with pytest.raises(AttributeError):
                replicate.state(m)._ddp_weakref  # noqa: B018  (set by the first forward, as in torch)
            F.mse_loss(m(x), np.zeros((2, 2))).backward()
            ddp = replicate.state(m)._ddp_weakref()
            assert isinstance(ddp, DDP) and ddp is replicate.state(m)._ddp
            assert ddp.device_ids is None
        # an int names a GPU to torch's replicate: DDP refuses it for a CPU module at the first forward
        m = replicate(_model(), device_id=0)
        with pytest.raises(ValueError, match="device_ids and output_device arguments only work"):
            m(x)

    spawn_threads(body, 1)
