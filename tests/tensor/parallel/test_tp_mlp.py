"""Tensor parallelism on real rank processes: sharded MLPs train exactly like the unsharded one.

Each test builds the same float64 MLP twice from one seed: one copy is parallelized by a
plan, the other stays whole in this process and sees the whole batch. Over several
optimizer steps the sharded copy's outputs, losses, input gradients and (gathered)
parameters must equal the whole copy's. A torch oracle (where torch is installed) runs
torch's own TP on the same weights in a gloo group and must agree on values and on the
collectives each plan issues.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np
import pytest

import mpdist
from mpdist import distributed as dist
from mpdist import nn
from mpdist.autograd import Tensor
from mpdist.device_mesh import init_device_mesh
from mpdist.optim import SGD, Adam
from mpdist.tensor import DTensor, Replicate, Shard
from mpdist.tensor.debug import CommDebugMode
from mpdist.tensor.parallel import ColwiseParallel, RowwiseParallel, parallelize_module
from mpdist.testing import CollectiveMode

STEPS = 3


class MLP(nn.Module):
    """net1 (8 -> 16), ReLU, net2 (16 -> 6), float64, from seed 5 (the same on every rank)."""

    def __init__(self) -> None:
        super().__init__()
        mpdist.manual_seed(5)
        self.net1 = nn.Linear(8, 16, dtype="float64")
        self.relu = nn.ReLU()
        self.net2 = nn.Linear(16, 6, dtype="float64")

    def forward(self, x: Any) -> Any:
        return self.net2(self.relu(self.net1(x)))


def pairwise() -> dict[str, Any]:
    return {"net1": ColwiseParallel(), "net2": RowwiseParallel()}


def sequence() -> dict[str, Any]:
    # the batch (dim 0) arrives and leaves sharded: all-gather in, reduce-scatter out
    return {
        "net1": ColwiseParallel(input_layouts=Shard(0)),
        "net2": RowwiseParallel(output_layouts=Shard(0)),
    }


PLANS: dict[str, Callable[[], dict[str, Any]]] = {"pairwise": pairwise, "sequence": sequence}


def batch(step: int, rows: int = 8) -> np.ndarray:
    return np.random.default_rng(100 + step).standard_normal((rows, 8))


def rows_of(rank: int, world_size: int, rows: int = 8) -> slice:
    n = rows // world_size
    return slice(rank * n, (rank + 1) * n)


def whole(p: Any) -> np.ndarray:
    return p.full_tensor().data if isinstance(p, DTensor) else p.data


def train_and_compare(
    rank: int, world_size: int, plan: str, make_opt: Callable[[Any], Any], mesh: Any = None
) -> None:
    """``STEPS`` steps of the plan's model against the whole model on the whole batch."""
    mesh = mesh if mesh is not None else init_device_mesh("cpu", (world_size,))
    n = mesh.size()
    me = mesh.get_local_rank()
    model = parallelize_module(MLP(), mesh, PLANS[plan]())
    ref = MLP()
    opt, ref_opt = make_opt(model.parameters()), make_opt(ref.parameters())
    for step in range(STEPS):
        xa = batch(step)
        mine = xa[rows_of(me, n)] if plan == "sequence" else xa
        x, rx = Tensor(mine.copy(), requires_grad=True), Tensor(xa.copy(), requires_grad=True)
        out, rout = model(x), ref(rx)
        expect = rout.data[rows_of(me, n)] if plan == "sequence" else rout.data
        assert type(out) is Tensor  # use_local_output: the layer hands on a plain Tensor
        np.testing.assert_allclose(out.data, expect, rtol=1e-10, atol=1e-12)
        # the loss is over the whole batch: the sequence plan's local sums are added up
        loss, rloss = (out * out).sum(), (rout * rout).sum()
        total = loss.data.copy()
        if plan == "sequence":
            dist.all_reduce(total, group=mesh.get_group())
        assert abs(float(total) - float(rloss.data)) < 1e-9
        opt.zero_grad()
        ref_opt.zero_grad()
        loss.backward()
        rloss.backward()
        gx = rx.grad.data[rows_of(me, n)] if plan == "sequence" else rx.grad.data
        np.testing.assert_allclose(x.grad.data, gx, rtol=1e-10, atol=1e-12)
        for (name, p), q in zip(model.named_parameters(), ref.parameters(), strict=True):
            assert isinstance(p, DTensor) and isinstance(p.grad, DTensor), name
            np.testing.assert_allclose(whole(p.grad), q.grad.data, rtol=1e-10, atol=1e-12)
        opt.step()
        ref_opt.step()
    for p, q in zip(model.parameters(), ref.parameters(), strict=True):
        np.testing.assert_allclose(whole(p), q.data, rtol=1e-10, atol=1e-12)


@pytest.mark.world_size(2, 4)
@pytest.mark.mpdist
@pytest.mark.parametrize("plan", ["pairwise", "sequence"])
def test_plans_train_like_the_whole_model(rank, world_size, plan) -> None:
    assert dist.get_backend() in ("tcp", "gloo")
    train_and_compare(rank, world_size, plan, lambda ps: SGD(ps, lr=0.05, momentum=0.9))
    train_and_compare(rank, world_size, plan, lambda ps: Adam(ps, lr=0.01))


@pytest.mark.world_size(2, 4)
@pytest.mark.mpdist
def test_parameters_are_cut_as_torch_cuts_them(rank, world_size) -> None:
    mesh = init_device_mesh("cpu", (world_size,))
    model = parallelize_module(MLP(), mesh, pairwise())
    ref = MLP()
    w1, b1, w2, b2 = model.net1.weight, model.net1.bias, model.net2.weight, model.net2.bias
    assert [p.placements for p in (w1, b1, w2, b2)] == [
        (Shard(0),),
        (Shard(0),),
        (Shard(1),),
        (Replicate(),),
    ]
    assert isinstance(w1, nn.Parameter) and w1.requires_grad and w1.shape == (16, 8)
    k = 16 // world_size
    mine = slice(rank * k, (rank + 1) * k)
    np.testing.assert_array_equal(w1.to_local().data, ref.net1.weight.data[mine])
    np.testing.assert_array_equal(b1.to_local().data, ref.net1.bias.data[mine])
    np.testing.assert_array_equal(w2.to_local().data, ref.net2.weight.data[:, mine])
    np.testing.assert_array_equal(b2.to_local().data, ref.net2.bias.data)


def _names(trace: list[str]) -> list[str]:
    return [name.split(".")[1] for name in trace]


class _Order(CollectiveMode):
    def __init__(self) -> None:
        self.seen: list[str] = []

    def __collective__(self, func, types, args=(), kwargs=None):
        self.seen.append(str(func))
        return func(*args, **(kwargs or {}))


# forward, backward (the input requires grad), in order, waits left out
EXPECTED_ORDER = {
    "pairwise": (["all_reduce"], ["all_reduce"]),
    "sequence": (
        ["all_gather_into_tensor", "reduce_scatter_tensor"],
        ["all_gather_into_tensor", "reduce_scatter_tensor"],
    ),
}


@pytest.mark.world_size(2)
@pytest.mark.mpdist
@pytest.mark.parametrize("plan", ["pairwise", "sequence"])
def test_collectives_of_a_step_in_order(rank, world_size, plan) -> None:
    mesh = init_device_mesh("cpu", (world_size,))
    model = parallelize_module(MLP(), mesh, PLANS[plan]())
    x = Tensor(batch(0)[: 8 // world_size if plan == "sequence" else 8], requires_grad=True)
    with _Order() as fwd, CommDebugMode() as counts:
        out = model(x)
    with _Order() as bwd:
        (out * out).sum().backward()
    seen = [_names([s for s in m.seen if "wait_tensor" not in s]) for m in (fwd, bwd)]
    assert tuple(seen) == EXPECTED_ORDER[plan]
    assert all(s.startswith("_c10d_functional.") for s in fwd.seen + bwd.seen)
    assert counts.get_total_counts() == len(EXPECTED_ORDER[plan][0])
    # every collective is waited for before its result is used
    for m in (fwd, bwd):
        for i, s in enumerate(m.seen):
            if "wait_tensor" not in s:
                assert m.seen[i + 1] == "_c10d_functional.wait_tensor.default"


@pytest.mark.world_size(4)
@pytest.mark.mpdist
@pytest.mark.parametrize("plan", ["pairwise", "sequence"])
def test_2d_mesh_tp_inside_data_parallel(rank, world_size, plan) -> None:
    """A 2 x 2 ("dp", "tp") mesh: TP within each tp pair, each dp row its own half of the
    batch, gradients averaged over dp (as DDP does); equal to the whole model on the whole
    batch with the loss averaged over the dp replicas."""
    mesh2 = init_device_mesh("cpu", (2, 2), mesh_dim_names=("dp", "tp"))
    tp, dp = mesh2["tp"], mesh2["dp"]
    model = parallelize_module(MLP(), tp, PLANS[plan]())
    ref = MLP()
    opt, ref_opt = SGD(model.parameters(), lr=0.05), SGD(ref.parameters(), lr=0.05)
    me_dp, me_tp = dp.get_local_rank(), tp.get_local_rank()
    for step in range(STEPS):
        xa = batch(step, rows=16)
        half = xa[rows_of(me_dp, 2, 16)]
        mine = half[rows_of(me_tp, 2)] if plan == "sequence" else half
        loss = (lambda o: (o * o).sum())(model(Tensor(mine.copy())))
        opt.zero_grad()
        loss.backward()
        for p in model.parameters():
            dist.all_reduce(p.grad.to_local().data, group=dp.get_group())
            p.grad.to_local().data[...] /= 2
        opt.step()
        rout = ref(Tensor(xa))
        rloss = (rout * rout).sum() / 2
        ref_opt.zero_grad()
        rloss.backward()
        ref_opt.step()
        for p, q in zip(model.parameters(), ref.parameters(), strict=True):
            np.testing.assert_allclose(whole(p), q.data, rtol=1e-10, atol=1e-12)
