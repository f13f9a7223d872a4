"""``fully_shard`` over tensor parallelism on a 2 x 2 (dp, tp) mesh: a tensor-parallel
parameter's TP piece is cut again over dp (``_StridedShard`` inside a TP ``Shard(0)``),
training equals one process on the full batch, and placements, local shapes and values
equal torch's ``fully_shard(parallelize_module(...), mesh=mesh["dp"])`` on gloo.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest
from fsdp_helpers import (
    STEPS,
    N,
    assert_matches,
    data,
    mlp,
    optimizer,
    reference,
    train_on_rows,
)

from mpdist.device_mesh import init_device_mesh
from mpdist.fsdp import fully_shard
from mpdist.nn import Linear
from mpdist.nn import functional as F
from mpdist.tensor import DTensor, Replicate, Shard, distribute_tensor
from mpdist.tensor.parallel import ColwiseParallel, RowwiseParallel, parallelize_module
from mpdist.tensor.placement_types import _StridedShard
from mpdist.testing import spawn_threads

PLAN = {"0": ColwiseParallel(), "2": RowwiseParallel()}  # layer "4" stays a plain Linear


def fsdp_tp(kind: str, **kwargs: Any) -> tuple[Any, Any, Any]:
    """fully_shard(parallelize_module(m, mesh["tp"], plan), mesh=mesh["dp"]), each Linear
    a unit, then the root."""
    mesh = init_device_mesh("cpu", (2, 2), mesh_dim_names=("dp", "tp"))
    model = parallelize_module(mlp(), mesh["tp"], PLAN)
    for layer in model:
        if isinstance(layer, Linear):
            fully_shard(layer, mesh=mesh["dp"], **kwargs)
    fully_shard(model, mesh=mesh["dp"], **kwargs)
    return model, optimizer(kind, model.parameters()), mesh


def train(rank: int, ws: int, kind: str, reshard: bool = True) -> dict[str, np.ndarray]:
    model, opt, mesh = fsdp_tp(kind, reshard_after_forward=reshard)
    # the two tp ranks of a dp rank see the same rows
    train_on_rows(model, opt, mesh["dp"].get_local_rank(), 2)
    return {k: v.full_tensor().data for k, v in model.state_dict().items()}


@pytest.mark.mpdist(world_size=4)
@pytest.mark.parametrize("kind", ["sgd", "adam"])
def test_processes_fully_shard_over_tp_trains_like_one_process(rank, world_size, kind) -> None:
    assert_matches(train(rank, world_size, kind), reference(kind))


@pytest.mark.parametrize("reshard", [True, False])
def test_threads_fully_shard_over_tp_trains_like_one_process(reshard: bool) -> None:
    want = reference("adam")
    for got in spawn_threads(train, 4, "adam", reshard):
        assert_matches(got, want)


def _pieces_by_rule(rank: int, ws: int) -> dict[str, tuple[tuple, tuple]]:
    model, _, mesh = fsdp_tp("sgd")
    out = {}
    for name, p in model.named_parameters():
        assert isinstance(p, DTensor)
        out[name] = (tuple(p.placements), tuple(p.to_local().shape))
        whole = mlp().state_dict()[name].data
        np.testing.assert_array_equal(p.full_tensor().data, whole, err_msg=name)
        # the piece is the one its placements name: distribute_tensor cuts the same
        again = distribute_tensor(whole, p.device_mesh, p.placements)
        np.testing.assert_array_equal(again.to_local().data, p.to_local().data, err_msg=name)
    assert model[0].weight.device_mesh.mesh_dim_names == ("dp", "tp")
    return out


def test_tp_parameters_are_cut_again_over_dp() -> None:
    for dp_tp, placed in zip(
        [(0, 0), (0, 1), (1, 0), (1, 1)], spawn_threads(_pieces_by_rule, 4), strict=True
    ):
        # 24 rows: tp cuts 12 / 12, dp cuts each 6 / 6; rank (d, t) holds chunk d of chunk t
        assert placed["0.weight"] == ((_StridedShard(0, 2), Shard(0)), (6, 6)), dp_tp
        assert placed["0.bias"] == ((_StridedShard(0, 2), Shard(0)), (6,))
        assert placed["2.weight"] == ((Shard(0), Shard(1)), (12, 12))
        assert placed["2.bias"] == ((Shard(0), Replicate()), (12,))
        assert placed["4.weight"] == ((Shard(0),), ((2, 1)[dp_tp[0]], 24))  # 3 rows over dp


def _strided_redistribute(rank: int, ws: int) -> None:
    mesh = init_device_mesh("cpu", (2, 2), mesh_dim_names=("dp", "tp"))
    x = np.arange(11 * 3, dtype=np.float64).reshape(11, 3)  # uneven: tp 6 / 5, dp 3 / 3, 3 / 2
    d, t = mesh.get_coordinate()
    tp_rows = [(0, 6), (6, 11)][t]
    mine = x[tp_rows[0] : tp_rows[1]][[(0, 3), (3, 6)][d][0] : [(0, 3), (3, 6)][d][1]]
    strided = (_StridedShard(0, 2), Shard(0))
    a = distribute_tensor(x, mesh, strided)
    np.testing.assert_array_equal(a.to_local().data, mine)
    assert a.full_tensor().shape == (11, 3)
    np.testing.assert_array_equal(a.full_tensor().data, x)
    for target in [
        (Replicate(), Shard(0)),
        (Shard(0), Shard(0)),
        (Shard(1), Replicate()),
        (Shard(0), Shard(1)),
        (Replicate(), Replicate()),
    ]:
        b = a.redistribute(mesh, target)
        want = distribute_tensor(x, mesh, target).to_local().data
        np.testing.assert_array_equal(b.to_local().data, want, err_msg=str(target))
        np.testing.assert_array_equal(b.redistribute(mesh, strided).to_local().data, mine)
    made = DTensor.from_local(mine, mesh, strided, shape=x.shape, stride=(3, 1))
    np.testing.assert_array_equal(made.full_tensor().data, x)


def test_strided_shard_redistributes_both_ways() -> None:
    spawn_threads(_strided_redistribute, 4)


@pytest.mark.mpdist(world_size=4)
def test_fully_shard_over_tp_equals_torch(rank, world_size, tmp_path) -> None:
    torch = pytest.importorskip("torch")
    from torch.distributed.device_mesh import init_device_mesh as t_mesh
    from torch.distributed.fsdp import fully_shard as t_fully_shard
    from torch.distributed.tensor import distribute_tensor as t_distribute
    from torch.distributed.tensor.parallel import ColwiseParallel as TColwise
    from torch.distributed.tensor.parallel import RowwiseParallel as TRowwise
    from torch.distributed.tensor.parallel import parallelize_module as t_parallelize
    from torch.distributed.tensor.placement_types import _StridedShard as TStrided

    # torch's gloo group meets through a file in the ranks' shared tmp_path
    torch.distributed.init_process_group(
        "gloo", init_method=f"file://{tmp_path / 'gloo'}", rank=rank, world_size=world_size
    )
    try:
        tmesh = t_mesh("cpu", (2, 2), mesh_dim_names=("dp", "tp"))
        theirs = torch.nn.Sequential(
            torch.nn.Linear(6, 24),
            torch.nn.ReLU(),
            torch.nn.Linear(24, 24),
            torch.nn.ReLU(),
            torch.nn.Linear(24, 3),
        ).double()
        with torch.no_grad():
            for tp, p in zip(theirs.parameters(), mlp().parameters(), strict=True):
                tp.copy_(torch.from_numpy(p.data))
        t_parallelize(theirs, tmesh["tp"], {"0": TColwise(), "2": TRowwise()})
        for layer in theirs:
            if isinstance(layer, torch.nn.Linear):
                t_fully_shard(layer, mesh=tmesh["dp"])
        t_fully_shard(theirs, mesh=tmesh["dp"])
        ours, opt, mesh = fsdp_tp("sgd")
        t_opt = torch.optim.SGD(theirs.parameters(), lr=0.1, momentum=0.9)

        def same_pieces(a: dict[str, Any], b: dict[str, Any]) -> None:
            assert list(a) == list(b)
            for k, v in a.items():
                w = b[k]
                assert str(tuple(v.placements)) == str(tuple(w.placements)), k
                assert tuple(v.to_local().shape) == tuple(w.to_local().shape), k
                np.testing.assert_allclose(
                    v.to_local().data, w.to_local().detach().numpy(), rtol=1e-9, atol=1e-12
                )

        same_pieces(dict(ours.named_parameters()), dict(theirs.named_parameters()))
        dp = mesh["dp"].get_local_rank()
        per = N // 2
        for step in range(STEPS):
            x, y = data(step)
            rows = slice(dp * per, (dp + 1) * per)
            opt.zero_grad()
            F.mse_loss(ours(x[rows]), y[rows]).backward()
            t_opt.zero_grad()
            tx, ty = torch.from_numpy(x[rows]), torch.from_numpy(y[rows])
            torch.nn.functional.mse_loss(theirs(tx), ty).backward()
            same_pieces(
                {n: p.grad for n, p in ours.named_parameters()},
                {n: p.grad for n, p in theirs.named_parameters()},
            )
            opt.step()
            t_opt.step()
        same_pieces(dict(ours.named_parameters()), dict(theirs.named_parameters()))
        same_pieces(ours.state_dict(), theirs.state_dict())
        # distribute_tensor with the strided placement cuts as torch's does (uneven rows:
        # tp 6 / 5, then dp 3 / 3 and 3 / 2)
        x = np.arange(11 * 3, dtype=np.float64).reshape(11, 3)
        ours_x = distribute_tensor(x, mesh, (_StridedShard(0, 2), Shard(0)))
        from torch.distributed.tensor import Shard as TShard

        theirs_x = t_distribute(
            torch.from_numpy(x),
            tmesh,
            (TStrided(0, split_factor=2), TShard(0)),
            src_data_rank=None,  # torch's scatter path asserts on uneven strided pieces
        )
        np.testing.assert_array_equal(ours_x.to_local().data, theirs_x.to_local().numpy())
    finally:
        torch.distributed.destroy_process_group()


def _unrelated_meshes(rank: int, ws: int) -> list[str]:
    mesh = init_device_mesh("cpu", (2, 2), mesh_dim_names=("dp", "tp"))
    other = init_device_mesh("cpu", (2, 2), mesh_dim_names=("dp", "tp"))
    errors = []
    for dp_mesh in (other["dp"], init_device_mesh("cpu", (4,))):
        model = parallelize_module(mlp(), mesh["tp"], PLAN)
        with pytest.raises(RuntimeError) as e:
            fully_shard(model, mesh=dp_mesh)
        errors.append(str(e.value))
    return errors


def test_tp_mesh_and_dp_mesh_must_share_a_parent() -> None:
    for errors in spawn_threads(_unrelated_meshes, 4):
        assert all("same parent mesh" in e for e in errors), errors
