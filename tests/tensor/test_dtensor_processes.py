"""DTensor on real rank processes (tcp): round trips, every redistribution pair with its
gradient, and a column- then row-sharded MLP equal to the unsharded one."""

from __future__ import annotations

import itertools

import numpy as np
import pytest
from dtensor_helpers import arr, check_sharded, leaf, mesh

from mpdist import distributed as dist
from mpdist.autograd import Tensor
from mpdist.nn import functional as F
from mpdist.tensor import DTensor, Partial, Replicate, Shard, distribute_tensor
from mpdist.tensor._api import redistribute_recorded

R, S0, S1, P = Replicate(), Shard(0), Shard(1), Partial()


@pytest.mark.world_size(2, 4)
@pytest.mark.mpdist
def test_round_trips_and_every_pair(rank, world_size) -> None:
    assert dist.get_backend() in ("tcp", "gloo")
    meshes = [mesh(world_size)] + ([mesh(2, 2)] if world_size == 4 else [])
    a, w = arr(0, 5, 7), arr(1, 5, 7)
    for m in meshes:
        opts = list(itertools.product([R, P, S0, S1], repeat=m.ndim))
        for src in opts:
            np.testing.assert_allclose(distribute_tensor(a, m, src).full_tensor().data, a)
            for dst in opts:
                x = distribute_tensor(leaf(a), m, list(src))
                full = redistribute_recorded(x, tuple(dst)).full_tensor()
                np.testing.assert_allclose(full.data, a, rtol=1e-12, err_msg=f"{src}->{dst}")
                (full * Tensor(w)).sum().backward()
                np.testing.assert_allclose(x.grad.full_tensor().data, w, err_msg=f"{src}->{dst}")


@pytest.mark.world_size(2, 4)
@pytest.mark.mpdist
def test_column_then_row_sharded_linears(rank, world_size) -> None:
    x, w1, b1, w2, b2 = arr(2, 3, 6), arr(3, 9, 6), arr(4, 9), arr(5, 4, 9), arr(6, 4)

    def mlp(x, w1, b1, w2, b2):
        h = F.gelu(F.linear(x, w1, b1))
        return F.softmax(F.linear(h, w2, b2), -1)

    m = mesh(world_size)
    out = check_sharded(mlp, [x, w1, b1, w2, b2], m, [[R], [S0], [S0], [S1], [R]])
    assert out.placements == (R,)
    local = DTensor.from_local(leaf(x), m, [R])
    assert F.linear(local, distribute_tensor(w1, m, [S0])).placements == (Shard(1),)
