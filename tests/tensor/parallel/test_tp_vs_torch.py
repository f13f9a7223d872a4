"""The same plans under torch's tensor parallelism (gloo, CPU) and under mpdist's, side by side.

Each rank process of the test joins a torch gloo group as well as its mpdist group; both
libraries parallelize an MLP with the same float64 weights by the same plan, and must
agree on the outputs, the input and parameter gradients, and on which collectives the
forward and the backward issue (``CommDebugMode``'s counts, by torch's key names).
"""

from __future__ import annotations

import numpy as np
import pytest
from test_tp_mlp import MLP, batch, rows_of, whole

from mpdist.autograd import Tensor
from mpdist.device_mesh import init_device_mesh
from mpdist.tensor import Shard
from mpdist.tensor.debug import CommDebugMode
from mpdist.tensor.parallel import ColwiseParallel, RowwiseParallel, parallelize_module


def _counts(mode) -> dict[str, int]:
    return {str(k): v for k, v in mode.get_comm_counts().items() if v}


@pytest.mark.world_size(2, 4)
@pytest.mark.mpdist
@pytest.mark.parametrize("plan", ["pairwise", "sequence"])
def test_mpdist_tp_equals_torch_tp(rank, world_size, plan, tmp_path) -> None:
    torch = pytest.importorskip("torch")
    from torch.distributed.device_mesh import init_device_mesh as t_init_device_mesh
    from torch.distributed.tensor import Shard as TShard
    from torch.distributed.tensor.debug import CommDebugMode as TCommDebugMode
    from torch.distributed.tensor.parallel import (
        ColwiseParallel as TColwise,
    )
    from torch.distributed.tensor.parallel import (
        RowwiseParallel as TRowwise,
    )
    from torch.distributed.tensor.parallel import (
        parallelize_module as t_parallelize,
    )

    # torch's gloo group meets through a file in the ranks' shared tmp_path
    torch.distributed.init_process_group(
        "gloo", init_method=f"file://{tmp_path / 'gloo'}", rank=rank, world_size=world_size
    )
    try:
        ours = MLP()
        theirs = torch.nn.Sequential()
        theirs.add_module("net1", torch.nn.Linear(8, 16).double())
        theirs.add_module("relu", torch.nn.ReLU())
        theirs.add_module("net2", torch.nn.Linear(16, 6).double())
        with torch.no_grad():
            for tp, p in zip(theirs.parameters(), ours.parameters(), strict=True):
                tp.copy_(torch.from_numpy(p.data))
        if plan == "pairwise":
            ours_plan = {"net1": ColwiseParallel(), "net2": RowwiseParallel()}
            their_plan = {"net1": TColwise(), "net2": TRowwise()}
        else:
            ours_plan = {
                "net1": ColwiseParallel(input_layouts=Shard(0)),
                "net2": RowwiseParallel(output_layouts=Shard(0)),
            }
            their_plan = {
                "net1": TColwise(input_layouts=TShard(0)),
                "net2": TRowwise(output_layouts=TShard(0)),
            }
        parallelize_module(ours, init_device_mesh("cpu", (world_size,)), ours_plan)
        t_parallelize(theirs, t_init_device_mesh("cpu", (world_size,)), their_plan)

        xa = batch(0)
        mine = xa[rows_of(rank, world_size)] if plan == "sequence" else xa
        x = Tensor(mine.copy(), requires_grad=True)
        tx = torch.tensor(mine, requires_grad=True)
        with CommDebugMode() as f, TCommDebugMode() as tf:
            out, tout = ours(x), theirs(tx)
        np.testing.assert_allclose(out.data, tout.detach().numpy(), rtol=1e-12, atol=1e-13)
        with CommDebugMode() as b:
            (out * out).sum().backward()
        with TCommDebugMode() as tb:
            (tout * tout).sum().backward()
        assert _counts(f) and _counts(b)  # each plan communicates both ways
        assert _counts(f) == _counts(tf) and _counts(b) == _counts(tb), (
            (_counts(f), _counts(b)),
            (_counts(tf), _counts(tb)),
        )
        np.testing.assert_allclose(x.grad.data, tx.grad.numpy(), rtol=1e-12, atol=1e-13)
        for p, tp in zip(ours.parameters(), theirs.parameters(), strict=True):
            assert [str(q) for q in p.placements] == [str(q) for q in tp.placements]
            np.testing.assert_allclose(
                whole(p.grad), tp.grad.full_tensor().numpy(), rtol=1e-12, atol=1e-13
            )
    finally:
        torch.distributed.destroy_process_group()
