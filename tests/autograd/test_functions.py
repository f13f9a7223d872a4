"""The torch-level tensor functions of mpdist.autograd and the matching Tensor methods:
factories (dtype defaults, sizes, keywords), math and shape functions (values and gradients
against torch on the same inputs, and against finite differences), tests (isnan, any, all,
allclose, equal), their errors, and manual_seed's one generator per rank."""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import Any

import numpy as np
import pytest
from test_ops import check

import mpdist
import mpdist.autograd as A
import mpdist.distributed as dist
from mpdist import nn
from mpdist.autograd import Tensor
from mpdist.testing import spawn_threads


def _dtype_name(dtype: Any) -> str:
    """'float32' for np.float32 and torch.float32 alike."""
    return str(dtype).removeprefix("torch.")


def _types(lib: Any) -> dict[str, Any]:
    """Dtypes by name in torch or numpy spelling (mpdist takes numpy dtypes)."""
    src = np if lib is A else lib
    return {"f64": src.float64, "i32": src.int32}


# ----------------------------------------------------------------- factories
FACTORIES: dict[str, Callable[[Any, dict[str, Any]], Any]] = {
    "tensor float list": lambda L, t: L.tensor([1.0, 2.0]),
    "tensor int list": lambda L, t: L.tensor([1, 2]),
    "tensor mixed nested": lambda L, t: L.tensor([[1, 2.5], [3, 4]]),
    "tensor bool": lambda L, t: L.tensor(True),
    "tensor empty": lambda L, t: L.tensor([]),
    "tensor scalar": lambda L, t: L.tensor(3.5),
    "tensor f64 ndarray": lambda L, t: L.tensor(np.array([1.0, 2.0])),
    "tensor i32 ndarray": lambda L, t: L.tensor(np.arange(3, dtype=np.int32)),
    "tensor numpy f64 scalars": lambda L, t: L.tensor([np.float64(1.5), 2.0]),
    "tensor dtype": lambda L, t: L.tensor([1, 2], dtype=t["f64"]),
    "zeros ints": lambda L, t: L.zeros(2, 3),
    "zeros tuple": lambda L, t: L.zeros((2, 3)),
    "zeros list": lambda L, t: L.zeros([2, 3]),
    "zeros size=": lambda L, t: L.zeros(size=(2, 3)),
    "zeros 0-d": lambda L, t: L.zeros(()),
    "ones": lambda L, t: L.ones(4),
    "ones dtype": lambda L, t: L.ones(2, 1, dtype=t["f64"]),
    "full int": lambda L, t: L.full((2, 2), 7),
    "full float": lambda L, t: L.full((2,), 1.5),
    "full bool": lambda L, t: L.full((3,), True),
    "full dtype": lambda L, t: L.full([2], 2, dtype=t["f64"]),
    "zeros_like": lambda L, t: L.zeros_like(L.ones(2, 3, dtype=t["i32"])),
    "ones_like dtype": lambda L, t: L.ones_like(L.zeros(2), dtype=t["f64"]),
    "arange n": lambda L, t: L.arange(5),
    "arange start end": lambda L, t: L.arange(1, 4),
    "arange float step": lambda L, t: L.arange(0, 1, 0.25),
    "arange float start": lambda L, t: L.arange(0.5, 3),
    "arange negative step": lambda L, t: L.arange(10, 0, -3),
    "arange dtype": lambda L, t: L.arange(0, 3, dtype=t["f64"]),
    "arange fractional": lambda L, t: L.arange(0, 1, 0.1),
}


@pytest.mark.parametrize("case", FACTORIES)
def test_factories_match_torch(case: str) -> None:
    torch = pytest.importorskip("torch")
    ours = FACTORIES[case](A, _types(A))
    theirs = FACTORIES[case](torch, _types(torch))
    assert isinstance(ours, Tensor)
    assert _dtype_name(ours.dtype) == _dtype_name(theirs.dtype)
    assert ours.shape == tuple(theirs.shape)
    np.testing.assert_allclose(ours.data, theirs.numpy(), rtol=1e-7)


RANDOM: dict[str, Callable[[Any, dict[str, Any]], Any]] = {
    "randn": lambda L, t: L.randn(2, 3),
    "randn tuple dtype": lambda L, t: L.randn((4,), dtype=t["f64"]),
    "rand": lambda L, t: L.rand(3, 2),
    "rand size=": lambda L, t: L.rand(size=(5,)),
    "randint high": lambda L, t: L.randint(5, (3,)),
    "randint low high": lambda L, t: L.randint(2, 5, (2, 2)),
    "randint keywords": lambda L, t: L.randint(low=1, high=3, size=(4,)),
    "randint dtype": lambda L, t: L.randint(0, 9, (3,), dtype=t["i32"]),
    "randperm": lambda L, t: L.randperm(6),
    "empty": lambda L, t: L.empty(2, 3),
    "empty_like": lambda L, t: L.empty_like(L.zeros(3, dtype=t["i32"])),
}


@pytest.mark.parametrize("case", RANDOM)
def test_random_and_empty_factories_have_torchs_dtype_and_shape(case: str) -> None:
    torch = pytest.importorskip("torch")
    ours = RANDOM[case](A, _types(A))
    theirs = RANDOM[case](torch, _types(torch))
    assert _dtype_name(ours.dtype) == _dtype_name(theirs.dtype)
    assert ours.shape == tuple(theirs.shape)


def test_random_factories_values() -> None:
    A.manual_seed(0)
    u = A.rand(20000).data
    assert u.min() >= 0 and u.max() < 1 and abs(u.mean() - 0.5) < 0.01
    n = A.randn(20000, dtype=np.float64).data
    assert abs(n.mean()) < 0.03 and abs(n.std() - 1) < 0.03
    i = A.randint(3, 7, (5000,)).data
    assert set(np.unique(i)) == {3, 4, 5, 6}
    assert sorted(A.randperm(50).tolist()) == list(range(50))
    g = np.random.default_rng(3)
    np.testing.assert_array_equal(
        A.randn(4, generator=g, dtype=np.float64).data,
        np.random.default_rng(3).standard_normal(4),
    )


def test_factory_keywords() -> None:
    for make in [
        lambda **k: A.zeros(2, **k),
        lambda **k: A.ones(2, **k),
        lambda **k: A.empty(2, **k),
        lambda **k: A.full((2,), 1.0, **k),
        lambda **k: A.randn(2, **k),
        lambda **k: A.rand(2, **k),
        lambda **k: A.tensor([1.0, 2.0], **k),
        lambda **k: A.arange(0.0, 2.0, **k),
        lambda **k: A.zeros_like(A.ones(2), **k),
        lambda **k: A.ones_like(A.ones(2), **k),
        lambda **k: A.empty_like(A.ones(2), **k),
    ]:
        t = make(requires_grad=True, device="cpu")
        assert t.requires_grad and t.is_leaf and t.device == A.device("cpu")
        assert not make().requires_grad
        with pytest.raises(ValueError, match="mpdist runs on the CPU"):
            make(device="cuda")
    with pytest.raises(RuntimeError, match="Only Tensors of floating point"):
        A.zeros(2, dtype=np.int64, requires_grad=True)
    with pytest.raises(RuntimeError, match="Only Tensors of floating point"):
        A.randint(3, (2,), requires_grad=True)


def test_tensor_copies_its_data() -> None:
    a = np.array([1.0, 2.0])
    t = A.tensor(a)
    a[0] = 9
    assert t.data[0] == 1.0 and t.dtype == np.float64
    src = Tensor(np.ones(2), requires_grad=True)
    c = A.tensor(src)
    assert c.is_leaf and not c.requires_grad and not np.shares_memory(c.data, src.data)


@pytest.mark.parametrize(
    ("call", "error", "match"),
    [
        (lambda: A.zeros(-1), RuntimeError, "Dimension size must be non-negative"),
        (lambda: A.zeros(2.0), TypeError, "size must be ints"),
        (lambda: A.zeros(2, size=(2,)), TypeError, "both"),
        (lambda: A.randint(5), TypeError, "size"),
        (lambda: A.randint(5, 5, (2,)), RuntimeError, "from=5 >= to=5"),
        (lambda: A.randperm(-1), RuntimeError, "non-negative"),
        (lambda: A.arange(0, 3, 0), RuntimeError, "step must be nonzero"),
    ],
)
def test_factory_errors(call: Callable[[], Any], error: type[Exception], match: str) -> None:
    with pytest.raises(error, match=match):
        call()


# ----------------------------------------------------------------- differentiable functions
Arrays = list[np.ndarray]
_RNG = np.random.default_rng(0)
X = _RNG.standard_normal((3, 4))
Y = _RNG.standard_normal((3, 4))
POS = _RNG.uniform(0.5, 2.0, (3, 4))

FUNCTIONS: dict[str, tuple[Callable[..., Any], Arrays]] = {
    "sin": (lambda L, x: L.sin(x), [X]),
    "cos": (lambda L, x: L.cos(x), [X]),
    "exp": (lambda L, x: L.exp(x), [X]),
    "log": (lambda L, x: L.log(x), [POS]),
    "tanh": (lambda L, x: L.tanh(x), [X]),
    "sigmoid": (lambda L, x: L.sigmoid(x), [X]),
    "sqrt": (lambda L, x: L.sqrt(x), [POS]),
    "abs": (lambda L, x: L.abs(x), [X]),
    "relu": (lambda L, x: L.relu(x), [X]),
    "sum": (lambda L, x: L.sum(x), [X]),
    "sum dim": (lambda L, x: L.sum(x, 1), [X]),
    "sum dims keepdim": (lambda L, x: L.sum(x, (0, 1), keepdim=True), [X]),
    "mean": (lambda L, x: L.mean(x), [X]),
    "mean dim keepdim": (lambda L, x: L.mean(x, dim=0, keepdim=True), [X]),
    "flatten": (lambda L, x: L.flatten(x.reshape(3, 2, 2)), [X]),
    "flatten start": (lambda L, x: L.flatten(x.reshape(3, 2, 2), 1), [X]),
    "flatten range": (lambda L, x: L.flatten(x.reshape(3, 2, 2), 0, 1), [X]),
    "flatten 0-d": (lambda L, x: L.flatten(x.sum()), [X]),
    "split size": (lambda L, x: L.split(x, 3, dim=1), [X]),
    "split sections": (lambda L, x: L.split(x, [1, 2], 0), [X]),
    "chunk": (lambda L, x: L.chunk(x, 3, dim=1), [X]),
    "chunk last dim": (lambda L, x: L.chunk(x, 2, -1), [X]),
    "where": (lambda L, x, y: L.where(x > y, x, y), [X, Y]),
    "where scalar": (lambda L, x: L.where(x > 0, x, 0.0), [X]),
    "where broadcast": (lambda L, x, y: L.where(x > 0, x, y[:1]), [X, Y]),
    "stack": (lambda L, x, y: L.stack([x, y], dim=1), [X, Y]),
    "cat": (lambda L, x, y: L.cat([x, y], dim=1), [X, Y]),
    "method split": (lambda L, x: x.split([3, 1], 1), [X]),
    "method chunk": (lambda L, x: x.chunk(2), [X]),
    "method flatten": (lambda L, x: x.reshape(3, 2, 2).flatten(1, 2), [X]),
}


def _pieces(out: Any) -> tuple[Any, ...]:
    return tuple(out) if isinstance(out, (tuple, list)) else (out,)


@pytest.mark.parametrize("case", FUNCTIONS)
def test_function_values_and_gradients_match_torch(case: str) -> None:
    torch = pytest.importorskip("torch")
    fn, arrays = FUNCTIONS[case]
    ours = [Tensor(a.copy(), requires_grad=True) for a in arrays]
    theirs = [torch.tensor(a, requires_grad=True) for a in arrays]
    out_ours, out_theirs = _pieces(fn(A, *ours)), _pieces(fn(torch, *theirs))
    assert len(out_ours) == len(out_theirs)
    rng = np.random.default_rng(1)
    weights = [rng.standard_normal(o.shape) for o in out_ours]
    for o, t in zip(out_ours, out_theirs, strict=True):
        assert o.shape == tuple(t.shape) and _dtype_name(o.dtype) == _dtype_name(t.dtype)
        np.testing.assert_allclose(o.data, t.detach().numpy(), rtol=1e-6, atol=1e-12)
    sum((o * w).sum() for o, w in zip(out_ours, weights, strict=True)).backward()
    sum((t * torch.tensor(w)).sum() for t, w in zip(out_theirs, weights, strict=True)).backward()
    for o, t in zip(ours, theirs, strict=True):
        np.testing.assert_allclose(o.grad.data, t.grad.numpy(), rtol=1e-6, atol=1e-12)


@pytest.mark.parametrize("case", FUNCTIONS)
def test_function_gradients_by_finite_differences(case: str) -> None:
    fn, arrays = FUNCTIONS[case]

    def joined(*ts: Tensor) -> Tensor:
        return A.cat([p.reshape(-1) for p in _pieces(fn(A, *ts))])

    check(joined, *arrays)


def test_split_pieces_are_views_and_one_node() -> None:
    t = Tensor(np.arange(10.0), requires_grad=True)
    pieces = A.split(t, 4)
    assert [p.shape for p in pieces] == [(4,), (4,), (2,)]
    assert all(np.shares_memory(p.data, t.data) for p in pieces)
    assert len({p.grad_fn for p in pieces}) == 1
    pieces[1].sum().backward()  # the other pieces get no gradient: zeros there
    np.testing.assert_array_equal(t.grad.data, [0, 0, 0, 0, 1, 1, 1, 1, 0, 0])


@pytest.mark.parametrize(
    ("args", "sizes"),
    [((6, 4), [2, 2, 2]), ((5, 3), [2, 2, 1]), ((0, 3), [0, 0, 0]), ((1, 4), [1])],
)
def test_chunk_sizes_match_torch(args: tuple[int, int], sizes: list[int]) -> None:
    n, chunks = args
    assert [p.shape[0] for p in A.chunk(A.arange(n), chunks)] == sizes
    torch = pytest.importorskip("torch")
    assert [p.shape[0] for p in torch.chunk(torch.arange(n), chunks)] == sizes


def test_split_of_an_empty_axis_is_one_empty_piece_as_in_torch() -> None:
    assert [p.shape for p in A.split(A.zeros(0), 2)] == [(0,)]
    assert [p.shape for p in A.split(A.zeros(0), 0)] == [(0,)]


def test_where_with_only_a_condition_gives_indices() -> None:
    cond = A.tensor([[True, False], [False, True]])
    rows, cols = A.where(cond)
    assert rows.dtype == np.int64 and rows.tolist() == [0, 1] and cols.tolist() == [0, 1]
    torch = pytest.importorskip("torch")
    assert [i.tolist() for i in torch.where(torch.tensor(cond.data))] == [[0, 1], [0, 1]]


def test_where_keeps_float32_with_a_python_scalar() -> None:
    x = A.tensor([1.0, -2.0], requires_grad=True)
    out = A.where(x > 0, x, 0.0)
    assert out.dtype == np.float32
    out.sum().backward()
    np.testing.assert_array_equal(x.grad.data, [1.0, 0.0])


@pytest.mark.parametrize(
    ("call", "error", "match"),
    [
        (
            lambda: A.sin([1.0]),
            TypeError,
            r"sin\(\): argument 'input' \(position 1\) must be Tensor, not list",
        ),
        (lambda: A.sum(np.ones(2)), TypeError, "must be Tensor, not ndarray"),
        (lambda: A.split([1, 2], 1), TypeError, "argument 'tensor'"),
        (lambda: A.equal(A.ones(2), [1.0, 1.0]), TypeError, "argument 'other' \\(position 2\\)"),
        (lambda: A.allclose(A.ones(2), 1.0), TypeError, "must be Tensor, not float"),
        (
            lambda: A.allclose(A.ones(2), A.ones(2, dtype=np.float64)),
            RuntimeError,
            "float32 did not match float64",
        ),
        (
            lambda: A.where(A.ones(2), 1.0, 0.0),
            RuntimeError,
            "where expected condition to be a boolean tensor",
        ),
        (lambda: A.where(A.ones(2) > 0, 1.0), TypeError, "condition alone"),
        (
            lambda: A.split(A.arange(5), [2, 2]),
            RuntimeError,
            "split_with_sizes expects split_sizes to sum exactly to 5",
        ),
        (
            lambda: A.split(A.arange(5), 0),
            RuntimeError,
            "split_size can only be 0 if dimension size is 0",
        ),
        (lambda: A.split(A.arange(5), -1), RuntimeError, "non-negative"),
        (lambda: A.split(A.arange(5), 1, 4), IndexError, "Dimension out of range"),
        (
            lambda: A.chunk(A.arange(3), 0),
            RuntimeError,
            "chunk expects `chunks` to be greater than 0",
        ),
        (
            lambda: A.flatten(A.zeros(2, 3, 4), 2, 1),
            RuntimeError,
            "start_dim cannot come after end_dim",
        ),
        (lambda: A.flatten(A.zeros(2, 3), 0, 2), IndexError, "Dimension out of range"),
    ],
)
def test_function_errors(call: Callable[[], Any], error: type[Exception], match: str) -> None:
    with pytest.raises(error, match=match):
        call()


# ----------------------------------------------------------------- tests and accessors
def test_tests_and_accessors_match_torch() -> None:
    torch = pytest.importorskip("torch")
    a = np.array([[0.0, np.nan, 2.0], [1.0, 0.0, -3.0]])
    b = a + 1e-9
    ours, theirs = Tensor(a), torch.tensor(a)
    ob, tb = Tensor(b), torch.tensor(b)
    for f in [
        lambda L, x: L.isnan(x),
        lambda L, x: x.isnan(),
        lambda L, x: x.any(),
        lambda L, x: x.all(),
        lambda L, x: x.any(1),
        lambda L, x: x.all(dim=0, keepdim=True),
        lambda L, x: (x > 0).any(dim=1, keepdim=True),
        lambda L, x: (x < 1).all(1),
    ]:
        o, t = f(A, ours), f(torch, theirs)
        assert o.dtype == np.bool_ and o.tolist() == t.tolist()
    for kwargs in [
        {},
        {"equal_nan": True},
        {"rtol": 0, "atol": 1e-12},
        {"equal_nan": True, "atol": 1e-8},
    ]:
        assert A.allclose(ours, ob, **kwargs) == torch.allclose(theirs, tb, **kwargs), kwargs
        assert ours.allclose(ob, **kwargs) == theirs.allclose(tb, **kwargs)
    clean, tclean = Tensor(np.nan_to_num(a)), torch.tensor(np.nan_to_num(a))
    assert A.equal(clean, Tensor(clean.data.copy())) and torch.equal(tclean, tclean.clone())
    assert A.equal(clean, clean[:1]) is torch.equal(tclean, tclean[:1]) is False
    assert A.equal(A.tensor([1.0]), A.tensor([1])) == torch.equal(
        torch.tensor([1.0]), torch.tensor([1])
    )
    assert ours.numel() == theirs.numel() and ours.size() == tuple(theirs.size())
    assert ours.size(-1) == theirs.size(-1) and ours.size(0) == theirs.size(0)
    assert clean.tolist() == tclean.tolist()
    assert A.tensor([2.5]).item() == torch.tensor([2.5]).item()


# ----------------------------------------------------------------- one generator per rank
def test_manual_seed_is_one_function() -> None:
    assert A.manual_seed is mpdist.manual_seed is mpdist.random.manual_seed


def _draws() -> list[Any]:
    return [
        A.randn(3).tolist(),
        A.rand(2).tolist(),
        A.randint(10, (3,)).tolist(),
        A.randperm(5).tolist(),
        nn.Linear(3, 2).weight.data.tolist(),
    ]


def test_manual_seed_makes_random_functions_and_init_reproducible() -> None:
    A.manual_seed(21)
    first = _draws()
    A.manual_seed(21)
    assert _draws() == first
    A.manual_seed(22)
    assert _draws()[0] != first[0]
    # one stream: a draw in between moves parameter initialisation on
    A.manual_seed(21)
    w0 = nn.Linear(3, 2).weight.data.tolist()
    A.manual_seed(21)
    A.randn(1)
    assert nn.Linear(3, 2).weight.data.tolist() != w0


def test_rank_threads_seeded_alike_draw_alike_and_apart() -> None:
    A.manual_seed(5)
    reference = [_draws(), _draws()]
    order: list[int] = []
    lock = threading.Lock()

    def body(rank: int, ws: int) -> list[Any]:
        A.manual_seed(5)
        first = _draws()
        if rank == 0:
            A.randn(1000)  # rank 0 alone draws more: rank 1's numbers must not move
            with lock:
                order.append(0)
        dist.barrier()
        second = _draws()
        with lock:
            order.append(rank)
        return [first, second]

    r0, r1 = spawn_threads(body, 2)
    assert order[0] == 0  # rank 0's extra draws happened before rank 1's second draws
    assert r1 == reference and r0[0] == reference[0]
    assert r0[1] != reference[1]
