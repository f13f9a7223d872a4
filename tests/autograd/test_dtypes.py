"""torch's dtype names in mpdist.autograd (numpy dtypes), the default floating dtype
(set_default_dtype / get_default_dtype) as factories and layer constructors follow it, the
``*_like`` factories full_like / randn_like / rand_like, sum/mean's numpy spellings
(axis=, keepdims=) and is_tensor: each against torch on the same calls where torch is
installed, and on its own terms everywhere."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

import numpy as np
import pytest
from test_ops import check

import mpdist.autograd as A
from mpdist import nn
from mpdist.autograd import Tensor
from mpdist.autograd.dtypes import DTYPE_NAMES


@pytest.fixture
def restore_default_dtype() -> Iterator[None]:
    """Put the process-wide default back, for mpdist and (if loaded) torch, whatever the test did."""
    yield
    A.set_default_dtype(A.float32)
    try:
        import torch
    except ImportError:
        return
    torch.set_default_dtype(torch.float32)


def _name(dtype: Any) -> str:
    """'float32' for np.float32 and torch.float32 alike."""
    return str(dtype).removeprefix("torch.")


# ------------------------------------------------------------------ names
def test_each_name_is_the_numpy_dtype_of_the_same_meaning() -> None:
    expected = {
        "bool": np.bool_, "uint8": np.uint8, "uint16": np.uint16, "uint32": np.uint32,
        "uint64": np.uint64, "int8": np.int8, "int16": np.int16, "short": np.int16,
        "int32": np.int32, "int": np.int32, "int64": np.int64, "long": np.int64,
        "float16": np.float16, "half": np.float16, "float32": np.float32, "float": np.float32,
        "float64": np.float64, "double": np.float64, "complex64": np.complex64,
        "cfloat": np.complex64, "complex128": np.complex128, "cdouble": np.complex128,
    }  # fmt: skip
    assert set(expected) == set(DTYPE_NAMES)
    for name, np_type in expected.items():
        value = getattr(A, name)
        assert isinstance(value, np.dtype) and value == np.dtype(np_type), name


@pytest.mark.parametrize("name", DTYPE_NAMES)
def test_each_name_means_what_torchs_does(name: str) -> None:
    torch = pytest.importorskip("torch")
    theirs = torch.empty(2, dtype=getattr(torch, name))
    assert _name(A.empty(2, dtype=getattr(A, name)).dtype) == _name(theirs.dtype)
    assert theirs.element_size() == getattr(A, name).itemsize


def test_names_work_where_torch_code_puts_dtypes() -> None:
    t = A.zeros(2, 3, dtype=A.float64)
    assert t.dtype == A.float64 and t.dtype == A.double
    assert A.ones(2).dtype == A.float32
    assert A.tensor([1, 2]).dtype == A.long
    assert (A.ones(2) > 0).dtype == A.bool
    assert t.to(A.float32).dtype == A.float
    assert A.arange(3, dtype=A.int32).dtype == A.int32
    layer = nn.Linear(2, 2, dtype=A.float64)
    assert layer.weight.dtype == A.float64
    assert layer.to(A.float32).weight.dtype == A.float32
    # the builtins are not exported by a star import
    assert "float" not in A.__all__ and "bool" not in A.__all__ and "int" not in A.__all__


# ---------------------------------------------------------- default dtype
DEFAULTED: dict[str, Callable[[Any], Any]] = {
    "tensor floats": lambda L: L.tensor([1.0, 2.5]),
    "tensor complex": lambda L: L.tensor([1j]),
    "tensor ints": lambda L: L.tensor([1, 2]),
    "zeros": lambda L: L.zeros(2),
    "ones": lambda L: L.ones(2, 2),
    "empty": lambda L: L.empty(3),
    "full float": lambda L: L.full((2,), 1.5),
    "full int": lambda L: L.full((2,), 3),
    "full complex": lambda L: L.full((2,), 1 + 2j),
    "arange float": lambda L: L.arange(0.0, 1.0, 0.5),
    "arange int": lambda L: L.arange(3),
    "randn": lambda L: L.randn(2),
    "rand": lambda L: L.rand(2),
    "zeros_like keeps the input's": lambda L: L.zeros_like(L.ones(2, dtype=L.float16)),
}


@pytest.mark.filterwarnings("ignore:ComplexHalf support is experimental")
@pytest.mark.parametrize("default", ["float64", "float16", "float32"])
@pytest.mark.parametrize("case", DEFAULTED)
def test_factories_follow_the_default_dtype_as_torchs_do(
    case: str, default: str, restore_default_dtype: None
) -> None:
    torch = pytest.importorskip("torch")
    A.set_default_dtype(getattr(A, default))
    torch.set_default_dtype(getattr(torch, default))
    assert A.get_default_dtype() == getattr(A, default)
    ours, theirs = DEFAULTED[case](A), DEFAULTED[case](torch)
    if default == "float16" and "complex" in case:
        # numpy has no complex32 (torch's experimental ComplexHalf, which torch.tensor gives
        # and torch.full does not): complex64 is kept
        assert _name(theirs.dtype) in ("complex32", "complex64") and ours.dtype == np.complex64
        return
    assert _name(ours.dtype) == _name(theirs.dtype)


def test_default_dtype_without_torch(restore_default_dtype: None) -> None:
    assert A.get_default_dtype() == A.float32
    A.set_default_dtype(A.float64)
    assert A.get_default_dtype() == np.float64
    assert A.tensor([0.5]).dtype == np.float64 and A.tensor([1j]).dtype == np.complex128
    assert A.randn(3).dtype == np.float64
    assert A.tensor([1, 2]).dtype == np.int64  # integers do not follow it
    A.set_default_dtype(np.float32)  # numpy spellings are dtypes too
    assert A.zeros(1).dtype == np.float32 and A.tensor([1j]).dtype == np.complex64


LAYERS: dict[str, Callable[[Any], Any]] = {
    "Linear": lambda nn_: nn_.Linear(3, 2),
    "Conv2d": lambda nn_: nn_.Conv2d(2, 3, 3),
    "LSTM": lambda nn_: nn_.LSTM(3, 4),
    "BatchNorm1d": lambda nn_: nn_.BatchNorm1d(3),
    "LayerNorm": lambda nn_: nn_.LayerNorm(3),
    "Embedding": lambda nn_: nn_.Embedding(5, 2),
}


@pytest.mark.parametrize("case", LAYERS)
def test_layers_make_parameters_and_buffers_in_the_default_dtype(
    case: str, restore_default_dtype: None
) -> None:
    A.set_default_dtype(A.float64)
    ours = LAYERS[case](nn)
    got = {k: _name(v.dtype) for k, v in ours.state_dict().items()}
    assert any(v == "float64" for v in got.values())
    assert all(v in ("float64", "int64") for v in got.values()), got
    try:
        import torch
    except ImportError:
        return
    torch.set_default_dtype(torch.float64)
    theirs = LAYERS[case](torch.nn)
    assert got == {k: _name(v.dtype) for k, v in theirs.state_dict().items()}


@pytest.mark.parametrize("bad", [A.int64, A.bool, A.complex64, None, "int32"])
def test_only_floating_defaults(bad: Any, restore_default_dtype: None) -> None:
    with pytest.raises(TypeError, match="only floating-point types are supported as the default"):
        A.set_default_dtype(bad)
    assert A.get_default_dtype() == A.float32


def test_torch_refuses_the_same_defaults() -> None:
    torch = pytest.importorskip("torch")
    for bad in (torch.int64, torch.bool, torch.complex64):
        with pytest.raises(
            TypeError, match="only floating-point types are supported as the default"
        ):
            torch.set_default_dtype(bad)


# ------------------------------------------------------------ *_like factories
LIKE: dict[str, Callable[[Any], Any]] = {
    "full_like float": lambda L: L.full_like(L.ones(2, 3), 2.5),
    "full_like int input casts the value": lambda L: L.full_like(L.ones(2, dtype=L.int64), 2.7),
    "full_like dtype": lambda L: L.full_like(L.ones(2), 3, dtype=L.int32),
    "full_like bool": lambda L: L.full_like(L.ones(2, dtype=L.bool), 1),
    "full_like 0-d": lambda L: L.full_like(L.tensor(1.0, dtype=L.float64), -1),
}


@pytest.mark.parametrize("case", LIKE)
def test_full_like_matches_torch(case: str) -> None:
    torch = pytest.importorskip("torch")
    ours, theirs = LIKE[case](A), LIKE[case](torch)
    assert isinstance(ours, Tensor)
    assert _name(ours.dtype) == _name(theirs.dtype)
    np.testing.assert_array_equal(ours.data, theirs.numpy())


def test_full_like_without_torch() -> None:
    t = A.full_like(A.zeros(2, 2, dtype=A.int64), 7.9, requires_grad=False)
    assert t.dtype == np.int64 and t.tolist() == [[7, 7], [7, 7]]
    g = A.full_like(A.zeros(3), 0.5, requires_grad=True)
    assert g.requires_grad and g.is_leaf and g.dtype == np.float32
    with pytest.raises(ValueError, match="mpdist runs on the CPU"):
        A.full_like(A.zeros(1), 1, device="cuda")


@pytest.mark.parametrize("fn", ["randn_like", "rand_like"])
@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_random_like_shape_dtype_and_generator(fn: str, dtype: str) -> None:
    like = getattr(A, fn)
    plain = getattr(A, fn.removesuffix("_like"))
    x = A.zeros(3, 4, dtype=getattr(A, dtype))
    A.manual_seed(5)
    a = like(x)
    A.manual_seed(5)
    b = plain(3, 4, dtype=getattr(A, dtype))
    assert a.shape == (3, 4) and a.dtype == x.dtype
    np.testing.assert_array_equal(a.data, b.data)  # the same generator, the same draws
    c = like(x, dtype=A.float64, requires_grad=True)
    assert c.dtype == np.float64 and c.requires_grad and c.is_leaf
    try:
        import torch
    except ImportError:
        return
    theirs = getattr(torch, fn)(torch.zeros(3, 4, dtype=getattr(torch, dtype)))
    assert _name(theirs.dtype) == dtype and tuple(theirs.shape) == a.shape


def test_random_like_values() -> None:
    A.manual_seed(1)
    n = A.randn_like(A.zeros(20000, dtype=A.float64)).data
    assert abs(n.mean()) < 0.03 and abs(n.std() - 1) < 0.03
    u = A.rand_like(A.zeros(20000)).data
    assert u.min() >= 0 and u.max() < 1 and abs(u.mean() - 0.5) < 0.01


@pytest.mark.parametrize("fn", ["randn_like", "rand_like"])
def test_random_like_needs_a_floating_dtype(fn: str) -> None:
    with pytest.raises(RuntimeError, match="floating point"):
        getattr(A, fn)(A.zeros(2, dtype=A.int64))
    with pytest.raises(RuntimeError, match="floating point"):
        getattr(A, fn)(A.zeros(2), dtype=A.int32)
    torch = pytest.importorskip("torch")
    with pytest.raises((RuntimeError, NotImplementedError)):  # torch: "not implemented for 'Long'"
        getattr(torch, fn)(torch.zeros(2, dtype=torch.int64))


# ------------------------------------------------------ sum / mean spellings
REDUCE: dict[str, Callable[[Any, Any], Any]] = {
    "sum axis": lambda L, x: L.sum(x, axis=0),
    "sum axis keepdims": lambda L, x: L.sum(x, axis=1, keepdims=True),
    "sum dim keepdims": lambda L, x: L.sum(x, 1, keepdims=True),
    "sum axis tuple": lambda L, x: L.sum(x, axis=(0, 1)),
    "mean axis": lambda L, x: L.mean(x, axis=-1),
    "mean axis keepdims": lambda L, x: L.mean(x, axis=0, keepdims=True),
}


@pytest.mark.parametrize("case", REDUCE)
def test_numpy_spellings_of_sum_and_mean_match_torch(case: str) -> None:
    torch = pytest.importorskip("torch")
    data = np.arange(12.0).reshape(3, 4)
    ours = REDUCE[case](A, A.tensor(data))
    theirs = REDUCE[case](torch, torch.tensor(data))
    assert ours.shape == tuple(theirs.shape)
    np.testing.assert_allclose(ours.data, theirs.numpy(), rtol=1e-12)


@pytest.mark.parametrize("case", REDUCE)
def test_numpy_spellings_of_sum_and_mean_gradients(case: str) -> None:
    rng = np.random.default_rng(0)
    check(lambda x: REDUCE[case](A, x), rng.standard_normal((3, 4)))


def test_dim_and_axis_together_are_refused() -> None:
    with pytest.raises(TypeError, match="both dim and its alias axis"):
        A.sum(A.ones(2, 2), 0, axis=1)
    with pytest.raises(TypeError, match="both dim and its alias axis"):
        A.mean(A.ones(2, 2), dim=0, axis=0)


# ------------------------------------------------------------------ is_tensor
def test_is_tensor() -> None:
    assert A.is_tensor(A.ones(2)) and A.is_tensor(nn.Parameter(A.ones(2)))
    assert not any(A.is_tensor(x) for x in (np.ones(2), 1.0, [1.0], None))
    torch = pytest.importorskip("torch")
    assert torch.is_tensor(torch.nn.Parameter(torch.ones(2)))
    assert not any(torch.is_tensor(x) for x in (np.ones(2), 1.0, [1.0], None))
