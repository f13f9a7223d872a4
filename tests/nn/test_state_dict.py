"""Module.state_dict / load_state_dict against torch's on the same modules: keys and order,
_metadata, values, dtypes, detached Tensors sharing the parameters' memory, keep_vars,
prefix and destination, strict and non-strict loading (return values, error texts),
assign=True, extra state, old BatchNorm checkpoints, pickle and deepcopy round trips."""

from __future__ import annotations

import copy
import pickle
import warnings
from collections import OrderedDict
from typing import Any

import numpy as np
import pytest

from mpdist import autograd, nn
from mpdist.autograd import Tensor
from mpdist.testing._asserts import assert_equal


def _buffer(ns: Any, arr: np.ndarray) -> Any:
    """``arr`` as a buffer value of namespace ``ns`` (torch wants a tensor)."""
    if ns is nn:
        return arr.copy()
    import torch

    return torch.tensor(arr)


def build(ns: Any, which: str) -> Any:
    """The same module built from ``mpdist.nn`` or ``torch.nn`` (``ns``)."""
    if which == "linear":
        return ns.Linear(3, 2, dtype=np.float64 if ns is nn else _torch_f64())
    if which == "sequential":
        return ns.Sequential(ns.Linear(3, 4), ns.BatchNorm1d(4), ns.ReLU(), ns.Linear(4, 2))

    class Inner(ns.Module):  # type: ignore[name-defined,misc]
        def __init__(self) -> None:
            super().__init__()
            self.proj = ns.Linear(2, 2, bias=False)
            self.register_buffer("scale", _buffer(ns, np.array([2.0, 3.0])))
            self.register_buffer("scratch", _buffer(ns, np.zeros(3)), persistent=False)

    class Outer(ns.Module):  # type: ignore[name-defined,misc]
        def __init__(self) -> None:
            super().__init__()
            self.register_buffer("steps", _buffer(ns, np.array(4, dtype=np.int64)))
            self.inner = Inner()
            self.head = ns.Linear(2, 1)
            self.again = self.inner.proj  # a shared submodule: saved under both paths
            self.gone = None

    return Outer()


def _torch_f64() -> Any:
    import torch

    return torch.float64


WHICH = ["linear", "sequential", "nested"]


def pair(which: str) -> tuple[Any, Any]:
    """(ours, torch's) with torch's values loaded into ours."""
    torch = pytest.importorskip("torch")
    theirs = build(torch.nn, which)
    ours = build(nn, which)
    if which == "sequential":  # running stats that are not the defaults
        theirs.train()(torch.randn(5, 3))
    assert str(ours.load_state_dict(theirs.state_dict())) == "<All keys matched successfully>"
    return ours, theirs


def _dtype_name(dt: Any) -> str:
    return str(dt).removeprefix("torch.")


@pytest.mark.parametrize("which", WHICH)
def test_keys_metadata_values_dtypes_shapes_as_torch(which: str) -> None:
    ours, theirs = pair(which)
    sd, tsd = ours.state_dict(), theirs.state_dict()
    assert type(sd) is OrderedDict
    assert list(sd) == list(tsd)
    assert sd._metadata == tsd._metadata  # type: ignore[attr-defined]
    for k, v in sd.items():
        t = tsd[k]
        assert type(v) is Tensor, k  # not a Parameter, not an ndarray
        assert not v.requires_grad and v.is_leaf and v.grad_fn is None
        assert _dtype_name(v.dtype) == _dtype_name(t.dtype)
        assert tuple(v.shape) == tuple(t.shape) and v.numel() == t.numel()
        np.testing.assert_array_equal(np.asarray(v), t.numpy())
    assert_equal(sd, copy.deepcopy(sd))


@pytest.mark.parametrize("which", WHICH)
def test_values_share_memory_with_the_module_as_torch(which: str) -> None:
    ours, theirs = pair(which)
    for module, sd in ((ours, ours.state_dict()), (theirs, theirs.state_dict())):
        live = dict(module.named_parameters(remove_duplicate=False))
        live.update(module.named_buffers(remove_duplicate=False))
        for k, v in sd.items():
            assert v.data_ptr() == live[k].data_ptr(), k
            assert v is not live[k]
        first = next(iter(sd))
        sd[first].fill_(7)  # in place on the state dict's tensor: the module changes
        assert np.all(np.asarray(live[first].detach()) == 7)


@pytest.mark.parametrize("which", WHICH)
def test_keep_vars_gives_the_parameters_and_buffers_themselves(which: str) -> None:
    ours, theirs = pair(which)
    for module in (ours, theirs):
        live = dict(module.named_parameters(remove_duplicate=False))
        live.update(module.named_buffers(remove_duplicate=False))
        kept = module.state_dict(keep_vars=True)
        assert list(kept) == list(module.state_dict())
        assert all(v is live[k] for k, v in kept.items())
    params = dict(ours.named_parameters())
    assert all(
        isinstance(v, nn.Parameter) == (k in params or k.startswith("again."))
        for k, v in ours.state_dict(keep_vars=True).items()
    )


def test_prefix_destination_and_positional_warning_as_torch() -> None:
    ours, theirs = pair("nested")
    assert list(ours.state_dict(prefix="m.")) == list(theirs.state_dict(prefix="m."))
    for module in (ours, theirs):
        dest: dict[str, Any] = {"x": 1}
        assert module.state_dict(destination=dest, prefix="p.") is dest
        assert list(dest) == ["x"] + [f"p.{k}" for k in module.state_dict()]
        assert not hasattr(dest, "_metadata")
        with pytest.warns(FutureWarning, match="Positional args are being deprecated"):
            got = module.state_dict(None, "q.", True)
        assert list(got) == [f"q.{k}" for k in module.state_dict()]
        assert all(v is module.state_dict(keep_vars=True)[k[2:]] for k, v in got.items())


def test_torch_idioms_on_state_dict_values() -> None:
    ours, _ = pair("sequential")
    sd = ours.state_dict()
    w = sd["0.weight"].clone()
    sd["0.weight"].copy_(np.zeros((4, 3)))
    assert np.all(ours[0].weight.data == 0) and np.any(w.data != 0)
    assert autograd.equal(sd["3.weight"], ours[3].weight)
    assert sd["1.num_batches_tracked"].dtype == np.int64
    assert sd["1.running_mean"].detach().data_ptr() == ours[1].running_mean.data_ptr()
    ours.load_state_dict({k: v.clone() if k != "0.weight" else w for k, v in sd.items()})
    np.testing.assert_array_equal(ours[0].weight.data, w.data)


def test_load_copies_in_place_casting_and_returns_incompatible_keys() -> None:
    torch = pytest.importorskip("torch")
    ours = nn.Linear(3, 2)  # float32
    theirs = torch.nn.Linear(3, 2)
    obj, arr = ours.weight, ours.weight.data
    values = {"weight": np.arange(6.0).reshape(2, 3), "bias": torch.ones(2, dtype=torch.float64)}
    res = ours.load_state_dict(values)  # grad mode on: loading needs no no_grad()
    tres = theirs.load_state_dict({k: torch.as_tensor(v) for k, v in values.items()})
    assert ours.weight is obj and ours.weight.data is arr and arr.dtype == np.float32
    np.testing.assert_array_equal(arr, np.arange(6.0).reshape(2, 3))
    np.testing.assert_array_equal(ours.bias.data, [1.0, 1.0])
    assert repr(res) == repr(tres) == "<All keys matched successfully>"
    assert res == ([], []) and type(res).__name__ == "_IncompatibleKeys"
    assert isinstance(res, nn.IncompatibleKeys)


def _errors(torch: Any, ours: Any, theirs: Any, sd: dict[str, Any], **kw: Any) -> tuple[str, str]:
    with pytest.raises(RuntimeError) as mine:
        ours.load_state_dict(sd, **kw)
    tsd = {k: torch.as_tensor(np.asarray(v)) if isinstance(v, Tensor) else v for k, v in sd.items()}
    with pytest.raises(RuntimeError) as torchs:
        theirs.load_state_dict(tsd, **kw)
    return str(mine.value), str(torchs.value)


def test_strict_and_non_strict_loading_as_torch() -> None:
    torch = pytest.importorskip("torch")
    ours, theirs = pair("sequential")
    bad: dict[str, Any] = dict(ours.state_dict())
    del bad["0.bias"], bad["1.running_var"]
    bad["zz"] = Tensor(np.ones(1))
    bad["0.weight.extra"] = Tensor(np.ones(1))
    bad["3.zz"] = Tensor(np.ones(1))
    bad["7.weight"] = Tensor(np.ones(1))
    mine, torchs = _errors(torch, ours, theirs, bad)
    assert mine == torchs
    assert mine.startswith("Error(s) in loading state_dict for Sequential:\n\tMissing key(s) in")
    tbad = {k: torch.as_tensor(np.asarray(v)) for k, v in bad.items()}
    res, tres = ours.load_state_dict(bad, strict=False), theirs.load_state_dict(tbad, strict=False)
    assert repr(res) == repr(tres)
    assert res.missing_keys == ["0.bias", "1.running_var"]
    assert res.unexpected_keys == ["zz", "7.weight", "0.weight.extra", "3.zz"]


@pytest.mark.parametrize("strict", [True, False])
def test_size_mismatch_and_non_tensor_errors_as_torch(strict: bool) -> None:
    torch = pytest.importorskip("torch")
    ours, theirs = pair("sequential")
    wrong: dict[str, Any] = dict(ours.state_dict())
    wrong["0.weight"] = Tensor(np.zeros((5, 3), dtype=np.float32))
    wrong["1.bias"] = Tensor(np.zeros((4, 1), dtype=np.float32))
    wrong["3.bias"] = [0.0, 0.0]
    before = ours[0].weight.data.copy()
    mine, torchs = _errors(torch, ours, theirs, wrong, strict=strict)
    assert mine == torchs
    assert "size mismatch for 0.weight: copying a param with shape torch.Size([5, 3])" in mine
    assert "received <class 'list'>" in mine
    np.testing.assert_array_equal(ours[0].weight.data, before)
    with pytest.raises(TypeError, match=r"Expected state_dict to be dict-like, got <class 'list'>"):
        ours.load_state_dict([("0.weight", before)])


def test_a_copy_that_fails_is_reported_as_torch() -> None:
    m = nn.Linear(2, 2)
    with pytest.raises(RuntimeError) as e:
        m.load_state_dict({"weight": np.zeros((2, 2)), "bias": np.array(["a", "b"])})
    assert 'While copying the parameter named "bias", whose dimensions in the model are' in str(
        e.value
    )


def test_assign_true_as_torch() -> None:
    torch = pytest.importorskip("torch")
    ours, theirs = pair("sequential")
    ours[3].weight.requires_grad_(False)
    theirs[3].weight.requires_grad_(False)
    values = {k: np.asarray(v).astype(np.float64) for k, v in ours.state_dict().items()}
    values["1.num_batches_tracked"] = np.array(3)
    keep = nn.Parameter(np.ones(2))
    values["3.bias"] = keep
    res = ours.load_state_dict(values, assign=True)
    tkeep = torch.nn.Parameter(torch.ones(2, dtype=torch.float64))
    tvalues = {k: torch.from_numpy(v) for k, v in values.items() if k != "3.bias"}
    tres = theirs.load_state_dict({**tvalues, "3.bias": tkeep}, assign=True)
    assert repr(res) == repr(tres)
    assert list(ours.state_dict()) == list(theirs.state_dict())  # order kept
    for k, v in ours.state_dict(keep_vars=True).items():
        t = theirs.state_dict(keep_vars=True)[k]
        assert isinstance(v, nn.Parameter) == isinstance(t, torch.nn.Parameter), k
        assert v.requires_grad == t.requires_grad, k
        assert _dtype_name(v.dtype) == _dtype_name(t.dtype), k
        if k != "3.bias":  # the value's memory became the parameter or buffer
            assert np.shares_memory(v.data, values[k]), k
    assert ours[3].bias is keep and theirs[3].bias is tkeep
    assert [n for n, _ in ours.named_parameters()] == [n for n, _ in theirs.named_parameters()]


def test_non_persistent_buffers_are_neither_saved_nor_loaded() -> None:
    ours, theirs = pair("nested")
    assert "inner.scratch" not in ours.state_dict()
    assert "inner.scratch" in dict(ours.named_buffers())
    res = ours.load_state_dict({**ours.state_dict(), "inner.scratch": np.ones(3)}, strict=False)
    assert res.unexpected_keys == ["inner.scratch"]
    np.testing.assert_array_equal(ours.inner.scratch.data, np.zeros(3))


def test_old_batchnorm_checkpoint_without_num_batches_tracked_as_torch() -> None:
    torch = pytest.importorskip("torch")
    for bn in (nn.BatchNorm1d(2), torch.nn.BatchNorm1d(2)):
        bn.num_batches_tracked.fill_(5)
        sd = bn.state_dict()
        del sd["num_batches_tracked"]
        with pytest.raises(RuntimeError, match=r'Missing key\(s\) in state_dict: "num_batches'):
            bn.load_state_dict(sd)  # version 2: the key is required
        del sd._metadata  # no version: an old checkpoint
        assert str(bn.load_state_dict(sd)) == "<All keys matched successfully>"
        assert int(bn.num_batches_tracked) == 5


def test_extra_state_as_torch() -> None:
    torch = pytest.importorskip("torch")

    def with_extra(ns: Any) -> Any:
        class Counter(ns.Linear):  # type: ignore[name-defined,misc]
            def __init__(self) -> None:
                super().__init__(1, 1)
                self.count = 0

            def get_extra_state(self) -> Any:
                return {"count": self.count}

            def set_extra_state(self, state: Any) -> None:
                self.count = state["count"]

        return ns.Sequential(Counter(), ns.Linear(1, 1))

    ours, theirs = with_extra(nn), with_extra(torch.nn)
    ours[0].count = theirs[0].count = 3
    sd, tsd = ours.state_dict(), theirs.state_dict()
    assert list(sd) == list(tsd) and sd["0._extra_state"] == {"count": 3}
    again = with_extra(nn)
    again.load_state_dict(sd)
    assert again[0].count == 3
    del sd["0._extra_state"]
    sd["1._extra_state"] = 1
    tsd = {k: torch.as_tensor(np.asarray(v)) for k, v in sd.items() if isinstance(v, Tensor)}
    tsd["1._extra_state"] = 1
    assert repr(again.load_state_dict(sd, strict=False)) == repr(
        with_extra(torch.nn).load_state_dict(tsd, strict=False)
    )


def test_zero_d_buffer_takes_a_one_element_vector_as_torch() -> None:
    torch = pytest.importorskip("torch")
    ours, theirs = nn.Module(), torch.nn.Module()
    ours.register_buffer("z", np.array(2.0))
    theirs.register_buffer("z", torch.tensor(2.0, dtype=torch.float64))
    ours.load_state_dict({"z": np.array([5.0])})
    theirs.load_state_dict({"z": torch.tensor([5.0])})
    assert ours.z.shape == () and float(ours.z) == float(theirs.z) == 5.0


@pytest.mark.parametrize("which", WHICH)
def test_pickle_and_deepcopy_round_trips(which: str) -> None:
    ours, _ = pair(which)
    sd = ours.state_dict()
    for again in (pickle.loads(pickle.dumps(sd)), copy.deepcopy(sd)):
        assert type(again) is OrderedDict and list(again) == list(sd)
        assert again._metadata == sd._metadata
        for k, v in again.items():
            assert type(v) is Tensor and not v.requires_grad
            assert v.dtype == sd[k].dtype
            np.testing.assert_array_equal(v.data, sd[k].data)
            assert not np.shares_memory(v.data, sd[k].data)
        fresh = build(nn, which)
        assert str(fresh.load_state_dict(again)) == "<All keys matched successfully>"
        assert_equal(fresh.state_dict(), sd)
    kept = pickle.loads(pickle.dumps(ours.state_dict(keep_vars=True)))
    assert all(
        type(v) is type(sd_v)
        for v, sd_v in zip(kept.values(), ours.state_dict(keep_vars=True).values(), strict=True)
    )


def test_warnings_free_default_call() -> None:
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        nn.Linear(1, 1).state_dict()
