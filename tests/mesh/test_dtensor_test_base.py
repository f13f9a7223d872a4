"""DTensorTestBase, with_comms and MLPModule, the helpers torch's DTensor/TP tests build on:
the class runs each test on 4 rank processes with a "gloo" (tcp) group on the CPU,
build_device_mesh is the 1-D world mesh, with_comms takes torch's spellings, init_pg /
destroy_pg work by hand, run_subtests runs every combination, and MLPModule has torch's layers
and starts from the same weights on every rank."""

from __future__ import annotations

import numpy as np
import pytest

import mpdist.distributed as dist
from mpdist.autograd import randn
from mpdist.testing import DTensorTestBase, MLPModule, MLPStacked, with_comms


class TestDTensorBase(DTensorTestBase):
    @with_comms
    def test_the_world_and_its_mesh(self) -> None:
        assert self.world_size == 4 and self.device_type == "cpu" and self.backend == "gloo"
        assert dist.get_world_size() == 4 and dist.get_rank() == self.rank
        assert dist.get_backend() in ("gloo", "tcp")
        mesh = self.build_device_mesh()
        assert mesh.shape == (4,) and mesh.get_group() is dist.group.WORLD
        assert mesh.get_coordinate() == (self.rank,)
        x = np.array([float(self.rank)])
        dist.all_reduce(x, group=mesh.get_group())
        assert x[0] == 6.0

    @with_comms(eager_init=True)
    def test_with_comms_takes_torchs_eager_init(self) -> None:
        assert dist.is_initialized() and not self.is_local_tensor_enabled

    @with_comms(True)
    def test_with_comms_takes_a_positional_bool(self) -> None:
        assert dist.is_initialized()

    def test_init_pg_and_destroy_pg_by_hand(self) -> None:
        assert not dist.is_initialized()
        self.init_pg(eager_init=False)
        mesh = self.build_device_mesh()
        assert mesh.size() == 4
        self.destroy_pg()
        assert not dist.is_initialized()

    @with_comms
    def test_run_subtests_runs_every_combination(self) -> None:
        seen: list[tuple[int, str]] = []
        self.run_subtests({"a": [1, 2], "b": ["x", "y", "z"]}, lambda a, b: seen.append((a, b)))
        assert seen == [(a, b) for a in (1, 2) for b in ("x", "y", "z")]

    @with_comms
    def test_mlp_module_starts_alike_on_every_rank(self) -> None:
        self.init_manual_seed_for_rank()  # ranks' generators differ from here on
        mine = [p.data.copy() for p in MLPModule("cpu").parameters()]
        everyone: list = [None] * self.world_size
        dist.all_gather_object(everyone, mine)
        for theirs in everyone:
            for a, b in zip(mine, theirs, strict=True):
                np.testing.assert_array_equal(a, b)
        # while init_manual_seed_for_rank made the ranks draw differently
        self.init_manual_seed_for_rank()
        draws: list = [None] * self.world_size
        dist.all_gather_object(draws, randn(3).data)
        assert not np.array_equal(draws[0], draws[1])


def test_mlp_module_layers_are_torchs() -> None:
    m = MLPModule("cpu")
    shapes = {k: tuple(v.shape) for k, v in m.state_dict().items()}
    assert shapes == {
        "net1.weight": (16, 10),
        "net1.bias": (16,),
        "net2.weight": (10, 16),
        "net2.bias": (10,),
    }
    x = np.random.default_rng(0).standard_normal((5, 10)).astype(np.float32)
    w1, b1, w2, b2 = (p.data for p in m.parameters())
    expected = np.maximum(x @ w1.T + b1, 0) @ w2.T + b2
    np.testing.assert_allclose(m(x).data, expected, rtol=1e-5, atol=1e-6)
    assert [k for k in MLPModule("cpu", bias=False).state_dict()] == ["net1.weight", "net2.weight"]
    # seeded: another instance is the same, reset_parameters draws afresh
    again = MLPModule("cpu")
    np.testing.assert_array_equal(again.net1.weight.data, m.net1.weight.data)
    again.reset_parameters()
    assert not np.array_equal(again.net1.weight.data, m.net1.weight.data)
    stacked = MLPStacked("cpu", n_layers=3)
    assert len(stacked.layers) == 3 and stacked(x).shape == (5, 10)
    with pytest.raises(ValueError, match="CPU"):
        MLPModule("cuda")

    torch = pytest.importorskip("torch")
    from torch.testing._internal.distributed._tensor.common_dtensor import (
        MLPModule as TorchMLP,
    )

    theirs = {k: tuple(v.shape) for k, v in TorchMLP("cpu").state_dict().items()}
    assert shapes == theirs
    assert [type(c).__name__ for c in m.children()] == [
        type(c).__name__ for c in TorchMLP("cpu").children()
    ]
    assert torch.nn.Linear.__name__ == "Linear"
