"""parallelize_module's plans and the styles one by one, on rank threads and on the fake backend.

Rank threads (threaded backend) check values against the whole computation; the fake
backend runs a world of 4 in one process, where collectives move nothing, so only shapes
and placements are checked there.
"""

from __future__ import annotations

import numpy as np
import pytest
from test_tp_mlp import MLP, batch, sequence, whole

import mpdist
from mpdist import distributed as dist
from mpdist import nn
from mpdist.autograd import Tensor
from mpdist.device_mesh import init_device_mesh
from mpdist.optim import SGD
from mpdist.tensor import DTensor, Replicate, Shard
from mpdist.tensor.debug import CommDebugMode
from mpdist.tensor.parallel import (
    ColwiseParallel,
    PrepareModuleInput,
    PrepareModuleInputOutput,
    PrepareModuleOutput,
    RowwiseParallel,
    SequenceParallel,
    parallelize_module,
)
from mpdist.testing import MLPStacked, spawn_threads


def test_wildcard_keys_reach_every_match() -> None:
    def body(rank, ws):
        mesh = init_device_mesh("cpu", (ws,))
        model = parallelize_module(
            MLPStacked(n_layers=3),
            mesh,
            {"layers.*.net1": ColwiseParallel(), "layers.*.net2": RowwiseParallel()},
        )
        ref = MLPStacked(n_layers=3)
        for layer in model.layers:
            assert layer.net1.weight.placements == (Shard(0),)
            assert layer.net2.weight.placements == (Shard(1),)
        x = np.random.default_rng(1).standard_normal((4, 10)).astype(np.float32)
        with CommDebugMode() as cm:
            out = model(Tensor(x))
        assert cm.get_total_counts() == 3  # one all-reduce per Rowwise layer
        np.testing.assert_allclose(out.data, ref(Tensor(x)).data, rtol=1e-5, atol=1e-6)
        # a character class, and "" for the module itself
        other = parallelize_module(
            MLPStacked(n_layers=3), mesh, {"layers.[02].net1": ColwiseParallel()}
        )
        assert [isinstance(layer.net1.weight, DTensor) for layer in other.layers] == [
            True,
            False,
            True,
        ]
        lone = parallelize_module(nn.Linear(4, 6), mesh, {"": ColwiseParallel()})
        assert lone.weight.placements == (Shard(0),)
        return True

    assert all(spawn_threads(body, 2))


def test_plan_errors_and_warnings() -> None:
    def body(rank, ws):
        mesh = init_device_mesh("cpu", (ws,))
        model = MLP()
        with pytest.warns(UserWarning, match="could not be resolved: no submodule matching"):
            parallelize_module(model, mesh, {"net9": ColwiseParallel()})
        assert not isinstance(model.net1.weight, DTensor)
        with pytest.warns(UserWarning, match="No parallelize_plan is provided"):
            assert parallelize_module(model, mesh) is model
        with pytest.raises(TypeError, match="Expect Union"):
            parallelize_module(model, mesh, ["net1"])
        with pytest.raises(NotImplementedError, match="only support nn.Linear"):
            parallelize_module(model, mesh, {"relu": ColwiseParallel()})
        with pytest.raises(NotImplementedError, match="nn.Embedding"):
            parallelize_module(nn.Embedding(4, 4), mesh, RowwiseParallel())
        with pytest.raises(RuntimeError, match="needs a device_mesh"):
            parallelize_module(model, None, ColwiseParallel())
        with pytest.raises(AssertionError, match="same length"):
            PrepareModuleInput(input_layouts=(Shard(0), None), desired_input_layouts=Replicate())
        with pytest.raises(AssertionError, match="should not be None"):
            PrepareModuleInput(input_layouts=Shard(0))
        two_d = init_device_mesh("cpu", (1, ws))
        with pytest.raises(ValueError, match="same length as `device_mesh.ndim`"):
            parallelize_module(MLP(), two_d, {"net1": ColwiseParallel()})
        return True

    assert all(spawn_threads(body, 2))


def test_styles_print_as_torch() -> None:
    assert repr(ColwiseParallel()) == (
        "ColwiseParallel(input_layouts=(Replicate(),), output_layouts=(Shard(dim=-1),), "
        "use_local_output=True)"
    )
    assert repr(RowwiseParallel(output_layouts=Shard(0), use_local_output=False)) == (
        "RowwiseParallel(input_layouts=(Shard(dim=-1),), output_layouts=(Shard(dim=0),), "
        "use_local_output=False)"
    )
    assert repr(SequenceParallel()) == "SequenceParallel(sequence_dim=1, use_local_output=False)"


class Block(nn.Module):
    """LayerNorm over features, then the MLP: the sequence-parallel layout of a transformer
    block (norm on a slice of the sequence, the MLP tensor-parallel)."""

    def __init__(self) -> None:
        super().__init__()
        mpdist.manual_seed(7)
        self.norm = nn.LayerNorm(8, dtype="float64")
        self.norm.weight.data[...] = np.linspace(0.5, 1.5, 8)
        self.norm.bias.data[...] = np.linspace(-0.2, 0.2, 8)
        self.mlp = MLP()

    def forward(self, x):
        return self.mlp(self.norm(x))


def test_sequence_parallel_layer_norm_then_tp_mlp() -> None:
    """x (batch 2, sequence 4, features 8) sharded on the sequence: LayerNorm runs on the
    slice, net1 all-gathers the sequence, net2 reduce-scatters it back."""

    def plan():
        return {
            "norm": SequenceParallel(),
            "mlp.net1": ColwiseParallel(input_layouts=Shard(1)),
            "mlp.net2": RowwiseParallel(output_layouts=Shard(1)),
        }

    def body(rank, ws):
        mesh = init_device_mesh("cpu", (ws,))
        model, ref = parallelize_module(Block(), mesh, plan()), Block()
        assert model.norm.weight.placements == (Replicate(),)
        opt, ref_opt = SGD(model.parameters(), lr=0.1), SGD(ref.parameters(), lr=0.1)
        k = 4 // ws
        for step in range(3):
            xa = np.random.default_rng(step).standard_normal((2, 4, 8))
            x = Tensor(xa[:, rank * k : (rank + 1) * k].copy(), requires_grad=True)
            rx = Tensor(xa, requires_grad=True)
            with CommDebugMode() as cm:
                out = model(x)
            assert {str(c): n for c, n in cm.get_comm_counts().items()} == {
                "c10d_functional.all_gather_into_tensor": 1,
                "c10d_functional.reduce_scatter_tensor": 1,
            }
            rout = ref(rx)
            np.testing.assert_allclose(out.data, rout.data[:, rank * k : (rank + 1) * k], 1e-10)
            opt.zero_grad()
            ref_opt.zero_grad()
            (out * out).sum().backward()
            (rout * rout).sum().backward()
            np.testing.assert_allclose(
                x.grad.data, rx.grad.data[:, rank * k : (rank + 1) * k], 1e-9
            )
            opt.step()
            ref_opt.step()
            for p, q in zip(model.parameters(), ref.parameters(), strict=True):
                np.testing.assert_allclose(whole(p), q.data, rtol=1e-10, atol=1e-12)
        return True

    assert all(spawn_threads(body, 2))


def test_prepare_module_input_and_output() -> None:
    class Two(nn.Module):
        def forward(self, a, b, *, c):
            return a, b + c

    def body(rank, ws):
        mesh = init_device_mesh("cpu", (ws,))
        mod = parallelize_module(
            Two(),
            mesh,
            PrepareModuleInputOutput(
                input_layouts=(Shard(0), None),
                desired_input_layouts=(Replicate(), None),
                input_kwarg_layouts={"c": Shard(0)},
                desired_input_kwarg_layouts={"c": Replicate()},
                use_local_input=False,
                output_layouts=(Replicate(), None),
                desired_output_layouts=(Shard(0), None),
            ),
        )
        piece = np.full((2, 3), float(rank))
        a, bc = mod(Tensor(piece), 1.0, c=Tensor(piece))
        # a: gathered to Replicate inside, handed out as this rank's Shard(0) piece again
        assert type(a) is Tensor
        np.testing.assert_array_equal(a.data, piece)
        assert isinstance(bc, DTensor) and bc.placements == (Replicate(),)
        np.testing.assert_array_equal(bc.to_local().data[:, 0], np.repeat(np.arange(ws), 2) + 1.0)
        out = parallelize_module(
            nn.Identity(),
            mesh,
            PrepareModuleOutput(output_layouts=Shard(0), desired_output_layouts=Replicate()),
        )(Tensor(piece))
        assert type(out) is Tensor and out.shape == (2 * ws, 3)
        with pytest.raises(ValueError, match="module inputs and input_layouts"):
            parallelize_module(
                Two(),
                mesh,
                PrepareModuleInput(input_layouts=Shard(0), desired_input_layouts=Replicate()),
            )(Tensor(piece), 1.0, c=1.0)
        return True

    assert all(spawn_threads(body, 2))


@pytest.mark.parametrize("plan", ["pairwise", "sequence"])
def test_fake_backend_world_of_four_runs_the_plans(plan) -> None:
    """World size 4 in one process (rank 2), a 2 x 2 mesh, TP on "tp": shapes only."""
    dist.init_process_group("fake", rank=2, world_size=4)
    try:
        mesh = init_device_mesh("cpu", (2, 2), mesh_dim_names=("dp", "tp"))
        plans = {"pairwise": {"net1": ColwiseParallel(), "net2": RowwiseParallel()}}
        plans["sequence"] = sequence()
        model = parallelize_module(MLP(), mesh["tp"], plans[plan])
        assert model.net1.weight.to_local().shape == (8, 8)
        assert model.net2.weight.to_local().shape == (6, 8)
        opt = SGD(model.parameters(), lr=0.1)
        rows = 4 if plan == "sequence" else 8
        for step in range(2):
            x = Tensor(batch(step)[:rows], requires_grad=True)
            out = model(x)
            assert out.shape == (rows, 6)
            opt.zero_grad()
            (out * out).sum().backward()
            assert x.grad.shape == x.shape
            assert model.net1.weight.grad.to_local().shape == (8, 8)
            assert model.net2.bias.grad.placements == (Replicate(),)
            opt.step()
    finally:
        dist.destroy_process_group()
