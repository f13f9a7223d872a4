"""Functional collectives on real ranks (4 threads; 2 and 4 tcp processes): every op's values
on the world, on a mesh dimension, on a sub-mesh and on a list of ranks, against a numpy
reference of the whole group computed in one process; gradients against finite differences of
that reference; the lazy wait; what a collective mode sees; errors.

Inputs and loss weights are fixed functions of the rank, so each rank computes the reference
of its whole group by itself and checks its own outputs and gradient.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import Any

import numpy as np
import pytest

import mpdist._functional_collectives as fc
import mpdist.distributed as dist
from mpdist.autograd import Tensor
from mpdist.device_mesh import DeviceMesh, init_device_mesh
from mpdist.distributed import dispatch
from mpdist.process_group import ReduceOp
from mpdist.testing import spawn_threads


def x_of(r: int, shape: tuple[int, ...]) -> np.ndarray:
    return np.random.default_rng(100 + r).standard_normal(shape)


def w_of(r: int, shape: tuple[int, ...]) -> np.ndarray:
    return np.random.default_rng(200 + r).standard_normal(shape)


def a2a_split(i: int, j: int) -> int:
    """Rows group rank i sends to group rank j: uneven, some empty."""
    return (i + 2 * j) % 3


class Case:
    """One functional collective: the call, its reference over the group, the input shape."""

    def __init__(
        self,
        call: Callable[[Any, Any, int, int], Any],
        ref: Callable[[list[np.ndarray], int], np.ndarray],
        shape: Callable[[int, int], tuple[int, ...]],
        grad: bool = True,
    ) -> None:
        self.call, self.ref, self.shape, self.grad = call, ref, shape, grad


def _reduce(xs: list[np.ndarray], op: str) -> np.ndarray:
    if op == "sum":
        return np.sum(xs, axis=0)
    if op == "avg":
        return np.mean(xs, axis=0)
    return np.max(xs, axis=0)


def _a2a_ref(xs: list[np.ndarray], me: int) -> np.ndarray:
    n = len(xs)
    pieces = []
    for j, x in enumerate(xs):
        bounds = np.cumsum([a2a_split(j, k) for k in range(n)])[:-1]
        pieces.append(np.split(x, bounds)[me])
    return np.concatenate(pieces)


CASES: dict[str, Case] = {
    "all_reduce_sum": Case(
        lambda x, g, me, n: fc.all_reduce(x, "sum", g),
        lambda xs, me: _reduce(xs, "sum"),
        lambda me, n: (2, 3),
    ),
    "all_reduce_avg_op": Case(
        lambda x, g, me, n: fc.all_reduce(x, ReduceOp.AVG, g),
        lambda xs, me: _reduce(xs, "avg"),
        lambda me, n: (3,),
    ),
    "all_reduce_max": Case(
        lambda x, g, me, n: fc.all_reduce(x, "MAX", g),
        lambda xs, me: _reduce(xs, "max"),
        lambda me, n: (2, 2),
        grad=False,
    ),
    "all_gather_dim0": Case(
        lambda x, g, me, n: fc.all_gather_tensor(x, 0, g),
        lambda xs, me: np.concatenate(xs, axis=0),
        lambda me, n: (2, 3),
    ),
    "all_gather_dim1": Case(
        lambda x, g, me, n: fc.all_gather_tensor(x, 1, g),
        lambda xs, me: np.concatenate(xs, axis=1),
        lambda me, n: (2, 3),
    ),
    "all_gather_dim_minus1_3d": Case(
        lambda x, g, me, n: fc.all_gather_tensor_autograd(x, -1, g),
        lambda xs, me: np.concatenate(xs, axis=-1),
        lambda me, n: (2, 1, 2),
    ),
    "all_gather_0d": Case(
        lambda x, g, me, n: fc.all_gather_tensor(x, 0, g),
        lambda xs, me: np.stack(xs),
        lambda me, n: (),
    ),
    "reduce_scatter_dim0": Case(
        lambda x, g, me, n: fc.reduce_scatter_tensor(x, "sum", 0, g),
        lambda xs, me: np.split(_reduce(xs, "sum"), len(xs), axis=0)[me],
        lambda me, n: (2 * n, 3),
    ),
    "reduce_scatter_dim1": Case(
        lambda x, g, me, n: fc.reduce_scatter_tensor_autograd(x, "sum", 1, g),
        lambda xs, me: np.split(_reduce(xs, "sum"), len(xs), axis=1)[me],
        lambda me, n: (3, n),
    ),
    "reduce_scatter_avg_dim1": Case(
        lambda x, g, me, n: fc.reduce_scatter_tensor(x, "avg", 1, g),
        lambda xs, me: np.split(_reduce(xs, "avg"), len(xs), axis=1)[me],
        lambda me, n: (2, 2 * n),
    ),
    "all_to_all_even": Case(
        lambda x, g, me, n: fc.all_to_all_single(x, None, None, g),
        lambda xs, me: np.concatenate([np.split(x, len(xs))[me] for x in xs]),
        lambda me, n: (n, 2),
    ),
    "all_to_all_uneven": Case(
        lambda x, g, me, n: fc.all_to_all_single_autograd(
            x, [a2a_split(j, me) for j in range(n)], [a2a_split(me, j) for j in range(n)], g
        ),
        _a2a_ref,
        lambda me, n: (sum(a2a_split(me, j) for j in range(n)), 2),
    ),
    "broadcast_from_last_group_rank": Case(
        lambda x, g, me, n: fc.broadcast(x, n - 1, g),
        lambda xs, me: xs[-1],
        lambda me, n: (2, 2),
    ),
}


def _group(kind: str, rank: int) -> tuple[Any, list[int]]:
    """The group argument of a kind, and its members (global ranks, in group order)."""
    ws = dist.get_world_size()
    if kind == "world":
        return dist.group.WORLD, list(range(ws))
    mesh = init_device_mesh("cpu", (2, ws // 2), mesh_dim_names=("dp", "tp"))
    if kind == "mesh_dim":
        return (mesh, "tp"), mesh["tp"].mesh.tolist()
    if kind == "sub_mesh":
        return mesh["dp"], mesh["dp"].mesh.tolist()
    if kind == "mesh_1d":
        return init_device_mesh("cpu", (ws,)), list(range(ws))
    assert kind == "rank_list"
    members = mesh["tp"].mesh.tolist()
    return members, members


def _loss(case: Case, members: list[int], xs: list[np.ndarray]) -> float:
    """The sum over the group of sum(w_k * y_k), from the reference."""
    n = len(members)
    return float(
        sum(np.sum(w_of(g, case.ref(xs, k).shape) * case.ref(xs, k)) for k, g in enumerate(members))
        if n
        else 0.0
    )


def check(name: str, kind: str, rank: int) -> None:
    """Run case ``name`` on group ``kind`` on this rank; check values and gradient."""
    case = CASES[name]
    group, members = _group(kind, rank)
    n, me = len(members), members.index(rank)
    xs = [x_of(g, case.shape(k, n)) for k, g in enumerate(members)]
    x = Tensor(xs[me].copy(), requires_grad=case.grad)
    y = case.call(x, group, me, n)
    expected = case.ref(xs, me)
    np.testing.assert_allclose(np.asarray(y), expected, rtol=1e-12, atol=1e-12)
    np.testing.assert_array_equal(x.data, xs[me])  # the input is untouched
    if not case.grad:
        assert not x.requires_grad or y.requires_grad
        return
    (y * w_of(rank, expected.shape)).sum().backward()
    # finite differences of the whole group's loss in the input of this rank
    fd = np.zeros_like(xs[me])
    eps = 1e-6
    for i in np.ndindex(*xs[me].shape):
        plus = [a.copy() for a in xs]
        minus = [a.copy() for a in xs]
        plus[me][i] += eps
        minus[me][i] -= eps
        fd[i] = (_loss(case, members, plus) - _loss(case, members, minus)) / (2 * eps)
    assert x.grad is not None
    np.testing.assert_allclose(x.grad.data, fd, rtol=1e-6, atol=1e-6)


GROUPS = ["world", "mesh_dim", "sub_mesh", "mesh_1d", "rank_list"]


@pytest.mark.parametrize("kind", GROUPS)
@pytest.mark.parametrize("name", sorted(CASES))
def test_values_and_gradients_on_four_threads(name: str, kind: str) -> None:
    spawn_threads(lambda rank, ws: check(name, kind, rank), 4)


@pytest.mark.mpdist(world_size=4)
def test_every_op_on_four_tcp_processes(rank, world_size) -> None:
    for name in sorted(CASES):
        for kind in ("world", "mesh_dim", "sub_mesh"):
            check(name, kind, rank)


@pytest.mark.mpdist(world_size=2)
def test_every_op_on_two_tcp_processes(rank, world_size) -> None:
    for name in sorted(CASES):
        for kind in ("world", "rank_list", "sub_mesh"):
            check(name, kind, rank)


def test_max_has_no_backward_as_in_torch() -> None:
    def body(rank: int, ws: int) -> None:
        x = Tensor(x_of(rank, (2,)), requires_grad=True)
        y = fc.all_reduce(x, "max", dist.group.WORLD)
        with pytest.raises(RuntimeError, match="only supports 'sum' reduction, got 'max'"):
            y.sum().backward()
        z = fc.reduce_scatter_tensor(Tensor(x_of(rank, (2,)), requires_grad=True), "min", 0, [0, 1])
        with pytest.raises(RuntimeError, match="only supports 'sum' reduction, got 'min'"):
            z.sum().backward()

    spawn_threads(body, 2)


# -- the lazy wait and the modes --------------------------------------------------------------


class Recorder:
    """A collective mode that writes down what it sees and runs it."""

    def __init__(self) -> None:
        self.seen: list[str] = []

    def __collective__(self, func, types, args=(), kwargs=None):  # type: ignore[no-untyped-def]
        self.seen.append(str(func))
        # a mode may print its arguments: reading an AsyncCollectiveTensor here must not loop
        repr(args)
        return func(*args, **(kwargs or {}))

    def __enter__(self) -> Recorder:
        dispatch.push(self)
        return self

    def __exit__(self, *exc: Any) -> None:
        dispatch.pop(self)


def test_the_wait_comes_on_first_use_once() -> None:
    def body(rank: int, ws: int) -> list[Any]:
        x = np.full((3,), float(rank + 1))
        y = fc.all_reduce(x, "sum", dist.group.WORLD)
        assert isinstance(y, fc.AsyncCollectiveTensor) and not y.completed
        # metadata needs no wait
        assert y.shape == (3,) and y.ndim == 1 and y.dtype == np.float64 and len(y) == 3
        assert y.size() == (3,) and y.numel() == 3 and not y.completed
        with Recorder() as r:
            z = y + 1  # first use: the wait
            w = y * 2  # no second wait
        assert y.completed and r.seen == ["_c10d_functional.wait_tensor.default"]
        np.testing.assert_array_equal(z.data, 4.0)
        np.testing.assert_array_equal(w.data, 6.0)
        plain = y.wait()
        assert type(plain) is Tensor and plain.tolist() == [3.0, 3.0, 3.0]
        assert repr(fc.all_reduce(x, "sum", dist.group.WORLD)).startswith(
            "AsyncCollectiveTensor(tensor([3., 3., 3.]"
        )
        v = fc.wait_tensor(fc.all_gather_tensor(x, 0, dist.group.WORLD))
        assert type(v) is Tensor and v.shape == (6,)
        assert fc.wait_tensor(v) is v  # nothing in flight
        return [np.asarray(fc.broadcast(x, 0, dist.group.WORLD)).tolist()]

    assert spawn_threads(body, 2) == [[[1.0, 1.0, 1.0]]] * 2


def test_a_mode_sees_each_functional_op_once_and_no_c10d_op() -> None:
    """Forward and backward of a chain of functional collectives, as a mode sees them: each
    op once (not also the module API's collective inside it), each wait before the data is
    read, the backward's adjoints in reverse order."""

    def body(rank: int, ws: int) -> list[str]:
        mesh = init_device_mesh("cpu", (2, 2), mesh_dim_names=("dp", "tp"))
        x = Tensor(x_of(rank, (16, 2)), requires_grad=True)
        with Recorder() as r:
            a = fc.all_reduce(x, "sum", (mesh, "tp"))
            b = fc.all_gather_tensor(a, 1, mesh["dp"])  # gather_dim 1 waits at once (torch)
            c = fc.reduce_scatter_tensor(b, "sum", 0, dist.group.WORLD)
            d = fc.all_to_all_single(c, None, None, [0, 1, 2, 3])
            e = fc.broadcast(d, 0, (mesh, 0))
            loss = (e * 1.0).sum()
            r.seen.append("backward")
            loss.backward()
            dist.all_reduce(np.zeros(1))  # the module API shows as c10d
        return r.seen

    F, W = "_c10d_functional.", "_c10d_functional.wait_tensor.default"
    expected = [
        F + "all_reduce.default",
        W,  # a, read by the gather
        F + "all_gather_into_tensor.default",
        W,  # rearranging the gather along dim 1 needs its data
        F + "reduce_scatter_tensor.default",
        W,
        F + "all_to_all_single.default",
        W,
        F + "broadcast.default",
        W,  # e * 1.0
        "backward",
        "c10d.reduce_.default",  # broadcast's adjoint (torch has none: it passes the gradient)
        F + "all_to_all_single.default",
        W,
        F + "all_gather_into_tensor.default",  # reduce_scatter's adjoint
        W,
        F + "reduce_scatter_tensor.default",  # all_gather's adjoint
        W,
        F + "all_reduce.default",
        W,
        "c10d.allreduce_.default",
    ]
    for seen in spawn_threads(body, 4):
        assert seen == expected


# -- errors ------------------------------------------------------------------------------------


def test_errors() -> None:
    def body(rank: int, ws: int) -> None:
        x = np.ones((4, 2))
        w = dist.group.WORLD
        mesh = init_device_mesh("cpu", (2, 2), mesh_dim_names=("dp", "tp"))
        with pytest.raises(RuntimeError, match="Unrecognized reduce_op: bogus"):
            fc.all_reduce(x, "bogus", w)
        with pytest.raises(AssertionError, match="Only 1D mesh is supported"):
            fc.all_reduce(x, "sum", mesh)
        with pytest.raises(ValueError, match="Invalid tuple for group must be"):
            fc.all_reduce(x, "sum", (w, 0))
        with pytest.raises(ValueError, match="Unsupported group type"):
            fc.all_reduce(x, "sum", 5)
        with pytest.raises(ValueError, match=r"no process group has exactly the ranks \[0, 3\]"):
            fc.all_reduce(x, "sum", [0, 3])
        with pytest.raises(RuntimeError, match="Could not resolve the process group"):
            fc.all_reduce(x, "sum", "nonsense")
        with pytest.raises(AssertionError, match="must be a multiple of group_size 4"):
            fc.reduce_scatter_tensor(np.ones((3, 5)), "sum", 1, w)
        with pytest.raises(AssertionError, match="specified together or both set to None"):
            fc.all_to_all_single(x, [1, 1, 1, 1], None, w)
        with pytest.raises(AssertionError, match="must be int or SymInt"):
            fc.all_to_all_single(x, [1.0, 1, 1, 1], [1, 1, 1, 1], w)
        with pytest.raises(ValueError, match="does not split evenly among 4 ranks"):
            fc.all_to_all_single(np.ones((3, 2)), None, None, w)
        with pytest.raises(ValueError, match=r"src must be a rank of the group \(0..1\)"):
            fc.broadcast(x, 2, (mesh, "tp"))
        with pytest.raises(IndexError, match="gather_dim 2 is out of range"):
            fc.all_gather_tensor(x, 2, w)
        # every rank raised before sending: the group still works
        np.testing.assert_array_equal(np.asarray(fc.all_reduce(x, "sum", w)), 4.0)

    spawn_threads(body, 4)


def test_fake_backend_gives_shapes() -> None:
    """World size 4 in one process: the results have the right shapes (no values)."""
    dist.init_process_group("fake", rank=2, world_size=4)
    try:
        mesh = init_device_mesh("cpu", (2, 2), mesh_dim_names=("dp", "tp"))
        x = np.ones((4, 6))
        assert fc.all_gather_tensor(x, 1, (mesh, "tp")).shape == (4, 12)
        assert fc.reduce_scatter_tensor(x, "sum", 0, mesh["dp"]).shape == (2, 6)
        assert fc.all_to_all_single(x, [1, 2, 3, 4], [1, 1, 1, 1], dist.group.WORLD).shape == (
            10,
            6,
        )
        y = fc.all_reduce(x, "sum", dist.group.WORLD)
        assert np.asarray(y).shape == (4, 6) and y.completed
    finally:
        dist.destroy_process_group()


def test_a_device_mesh_is_only_accepted_when_1d_and_the_thread_sees_its_own_groups() -> None:
    ids: list[int] = []

    def body(rank: int, ws: int) -> list[float]:
        ids.append(threading.get_ident())
        m = DeviceMesh("cpu", [1, 0])
        return np.asarray(fc.all_gather_tensor(np.array([float(rank)]), 0, m)).tolist()

    # the group of the mesh [1, 0] orders its members by global rank (torch's new_group too)
    assert spawn_threads(body, 2) == [[0.0, 1.0], [0.0, 1.0]]
    assert len(set(ids)) == 2


SHAPE_CASES: list[tuple[str, tuple[int, ...], Callable[[Any, Any, Any], Any]]] = [
    ("all_reduce", (4, 6), lambda f, x, g: f.all_reduce(x, "avg", g)),
    ("gather_dim0", (4, 6), lambda f, x, g: f.all_gather_tensor(x, 0, g)),
    ("gather_dim1", (4, 6), lambda f, x, g: f.all_gather_tensor(x, 1, g)),
    ("gather_dim_minus1", (2, 3, 5), lambda f, x, g: f.all_gather_tensor(x, -1, g)),
    ("gather_0d", (), lambda f, x, g: f.all_gather_tensor(x, 0, g)),
    ("scatter_dim0", (8, 3), lambda f, x, g: f.reduce_scatter_tensor(x, "sum", 0, g)),
    ("scatter_dim1", (3, 8), lambda f, x, g: f.reduce_scatter_tensor(x, "sum", 1, g)),
    ("a2a_even", (8, 3), lambda f, x, g: f.all_to_all_single(x, None, None, g)),
    ("a2a_uneven", (4, 3), lambda f, x, g: f.all_to_all_single(x, [2, 0, 3, 1], [1] * 4, g)),
    ("broadcast", (2, 5), lambda f, x, g: f.broadcast(x, 3, g)),
]


def test_result_shapes_equal_torchs_on_the_fake_backend() -> None:
    pytest.importorskip("torch")
    import warnings

    import torch
    import torch.distributed as tdist
    import torch.distributed._functional_collectives as tfc
    from torch.testing._internal.distributed.fake_pg import FakeStore as TFakeStore

    if tdist.is_initialized():
        pytest.skip("a torch default group is up in this process")
    tdist.init_process_group("fake", store=TFakeStore(), rank=2, world_size=4)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", FutureWarning)  # torch deprecates the *_tensor names
            results = [
                call(tfc, torch.ones(shape), tdist.group.WORLD) for _, shape, call in SHAPE_CASES
            ]
            theirs = [tuple(tfc.wait_tensor(r).shape) for r in results]  # none left in flight
    finally:
        tdist.destroy_process_group()
    dist.init_process_group("fake", rank=2, world_size=4)
    try:
        ours = [
            tuple(call(fc, np.ones(shape), dist.group.WORLD).shape)
            for _, shape, call in SHAPE_CASES
        ]
    finally:
        dist.destroy_process_group()
    assert ours == theirs
