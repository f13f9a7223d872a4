"""DTensor in and out, and every redistribution, on rank threads (threaded backend).

Each check compares with the same computation on whole tensors in one process: values
gathered with ``full_tensor`` and gradients of ``sum(full * W)``. Shapes are chosen uneven
(5 and 7 rows over 2, 3 and 4 ranks: torch.chunk's sizes leave short and empty pieces).
"""

from __future__ import annotations

import itertools

import numpy as np
import pytest
from dtensor_helpers import arr, leaf, mesh

from mpdist.autograd import Tensor
from mpdist.tensor import DTensor, Partial, Replicate, Shard, distribute_tensor
from mpdist.tensor._api import redistribute_recorded
from mpdist.tensor.debug import CommDebugMode
from mpdist.tensor.placement_types import local_layout
from mpdist.testing import spawn_threads

ALL_1D = [Replicate(), Partial(), Shard(0), Shard(1)]


def _piece(a: np.ndarray, m, placements) -> np.ndarray:
    lay = local_layout(a.shape, tuple(m.shape), tuple(m.get_coordinate()), placements)
    return a[tuple(slice(o, o + n) for o, n in zip(lay.offset, lay.shape, strict=True))]


@pytest.mark.parametrize("world_size", [2, 3, 4])
@pytest.mark.parametrize("shape", [(4, 6), (5, 3), (7, 2, 3)], ids=str)
def test_distribute_then_full_tensor_round_trips(world_size, shape) -> None:
    def body(rank, ws):
        m = mesh(ws)
        a = arr(0, *shape)
        for p in [Replicate(), Partial(), *(Shard(d) for d in range(len(shape)))]:
            d = distribute_tensor(a, m, [p])
            assert d.shape == shape and d.placements == (p,)
            if isinstance(p, Shard):
                np.testing.assert_array_equal(d.to_local().data, _piece(a, m, [p]))
            elif isinstance(p, Partial):
                np.testing.assert_allclose(d.to_local().data, a / ws)
            np.testing.assert_allclose(d.full_tensor().data, a, rtol=1e-12)
        return True

    assert all(spawn_threads(body, world_size))


def test_round_trips_on_a_2d_mesh() -> None:
    def body(rank, ws):
        m = mesh(2, 2)
        a = arr(1, 5, 7)
        opts = [Replicate(), Partial(), Shard(0), Shard(1)]
        for ps in itertools.product(opts, opts):
            d = distribute_tensor(a, m, list(ps))
            if not any(isinstance(p, Partial) for p in ps):
                np.testing.assert_array_equal(d.to_local().data, _piece(a, m, ps))
            np.testing.assert_allclose(d.full_tensor().data, a, rtol=1e-12)
        return True

    assert all(spawn_threads(body, 4))


def test_distribute_tensor_takes_the_first_ranks_values() -> None:
    def body(rank, ws):
        m = mesh(ws)
        mine = np.full((4, 2), float(rank))
        return (
            distribute_tensor(mine, m, [Replicate()]).to_local().data,
            distribute_tensor(mine, m, [Shard(0)]).to_local().data,
            distribute_tensor(mine, m, [Shard(0)], src_data_rank=None).to_local().data,
        )

    for rank, (rep, shard, own) in enumerate(spawn_threads(body, 2)):
        assert (rep == 0).all() and (shard == 0).all() and (own == rank).all()


def _pairs(opts):
    return [(s, t) for s in opts for t in opts]


def _check_pairs(m, shape, opts) -> list[str]:
    """Every (source, target) pair: values, and the gradient back to the source."""
    a, w = arr(2, *shape), arr(3, *shape)
    failures = []
    for src, dst in _pairs(opts):
        x = distribute_tensor(leaf(a), m, list(src))
        y = redistribute_recorded(x, tuple(dst))
        assert y.placements == tuple(dst) and y.shape == shape
        full = y.full_tensor()
        if not np.allclose(full.data, a, rtol=1e-12):
            failures.append(f"value {src}->{dst}")
        (full * Tensor(w)).sum().backward()
        if not np.allclose(x.grad.full_tensor().data, w, rtol=1e-12):
            failures.append(f"grad {src}->{dst}")
    return failures


@pytest.mark.parametrize("world_size", [2, 3, 4])
def test_every_pair_on_a_1d_mesh(world_size) -> None:
    def body(rank, ws):
        return _check_pairs(mesh(ws), (5, 7), [(p,) for p in ALL_1D])

    assert spawn_threads(body, world_size) == [[]] * world_size


@pytest.mark.parametrize("shape", [(4, 6), (5, 3)], ids=str)
def test_every_pair_on_a_2d_mesh(shape) -> None:
    """Including shards of one dim on both mesh dims, which nest."""

    def body(rank, ws):
        return _check_pairs(mesh(2, 2), shape, list(itertools.product(ALL_1D, ALL_1D)))

    assert spawn_threads(body, 4) == [[]] * 4


# forward collective, backward collective (gradient placed like the output)
EXPECTED_COMMS = {
    ("S0", "R"): ("c10d_functional.all_gather_into_tensor", None),
    ("S0", "S1"): ("_dtensor.shard_dim_alltoall", "_dtensor.shard_dim_alltoall"),
    ("R", "S0"): (None, "c10d_functional.all_gather_into_tensor"),
    ("P", "R"): ("c10d_functional.all_reduce", None),
    ("P", "S0"): (
        "c10d_functional.reduce_scatter_tensor",
        "c10d_functional.all_gather_into_tensor",
    ),
    ("R", "P"): (None, "c10d_functional.all_reduce"),
}
_P = {"S0": Shard(0), "S1": Shard(1), "R": Replicate(), "P": Partial()}


def test_each_pair_uses_its_collective_and_the_transpose_in_backward() -> None:
    def body(rank, ws):
        m = mesh(ws)
        seen = {}
        for (s, t), _ in EXPECTED_COMMS.items():
            x = distribute_tensor(leaf(arr(4, 6, 6)), m, [_P[s]])
            with CommDebugMode() as fwd:
                y = redistribute_recorded(x, (_P[t],))
            with CommDebugMode() as bwd:
                y.to_local().sum().backward()
            seen[(s, t)] = tuple(
                ({str(k): v for k, v in c.get_comm_counts().items()}) for c in (fwd, bwd)
            )
        return seen

    for seen in spawn_threads(body, 2):
        for key, (fwd, bwd) in EXPECTED_COMMS.items():
            assert seen[key][0] == ({fwd: 1} if fwd else {}), key
            assert seen[key][1] == ({bwd: 1} if bwd else {}), key


def test_a_partial_gradient_of_a_gather_is_reduce_scattered() -> None:
    """Shard -> Replicate forward is an all-gather; a gradient that arrives Partial (each
    rank holding a term) goes back as its transpose, a reduce-scatter."""

    def body(rank, ws):
        m = mesh(ws)
        x = distribute_tensor(leaf(arr(5, 5, 3)), m, [Shard(0)])
        full = x.redistribute(m, [Replicate()]).to_local(grad_placements=[Partial()])
        with CommDebugMode() as bwd:
            (full * float(rank + 1)).sum().backward()
        return {str(k): v for k, v in bwd.get_comm_counts().items()}, x.grad.full_tensor().data

    for counts, g in spawn_threads(body, 2):
        assert counts == {"c10d_functional.reduce_scatter_tensor": 1}
        np.testing.assert_allclose(g, np.full((5, 3), 3.0))  # 1 + 2: the ranks' terms summed


def test_from_local_and_to_local() -> None:
    def body(rank, ws):
        m = mesh(ws)
        local = leaf(np.full((2, 3), float(rank)))
        d = DTensor.from_local(local, m, [Shard(0)])
        assert d.shape == (2 * ws, 3) and d.stride() == (3, 1)
        full = d.full_tensor()
        np.testing.assert_array_equal(
            full.data, np.repeat(np.arange(ws, dtype=float), 2)[:, None] * np.ones(3)
        )
        (full * 2.0).sum().backward()
        np.testing.assert_array_equal(local.grad.data, np.full((2, 3), 2.0))
        # Uneven pieces: the global shape must be given, with a stride.
        rows = [2, 1][rank]
        u = DTensor.from_local(np.ones((rows, 2)), m, [Shard(0)], shape=(3, 2), stride=(2, 1))
        assert u.shape == (3, 2) and u.full_tensor().data.sum() == 6
        # run_check makes replicated pieces equal (the first rank's).
        r = DTensor.from_local(np.full(3, float(rank)), m, [Replicate()], run_check=True)
        np.testing.assert_array_equal(r.to_local().data, np.zeros(3))
        # A replicated input's Partial gradient (its uses were column-sharded) is all-reduced.
        x = leaf(arr(6, 4, 6))
        w = distribute_tensor(leaf(arr(7, 6, 4)), m, [Shard(1)])
        out = DTensor.from_local(x, m, [Replicate()]) @ w
        assert out.placements == (Shard(1),)
        with CommDebugMode() as cm:
            out.to_local().sum().backward()
        return x.grad.data, {str(k): v for k, v in cm.get_comm_counts().items()}

    for g, counts in spawn_threads(body, 2):
        np.testing.assert_allclose(g, np.ones((4, 4)) @ arr(7, 6, 4).T)
        assert counts == {"c10d_functional.all_reduce": 1}


def test_full_tensor_grad_placements_and_partial_loss() -> None:
    def body(rank, ws):
        m = mesh(ws)
        x = distribute_tensor(leaf(arr(8, 5, 4)), m, [Shard(0)])
        loss = x.sum()  # a Partial sum
        assert loss.placements == (Partial(),)
        loss.backward()  # seeded with a replicated 1
        return x.grad.placements, x.grad.full_tensor().data

    for placements, g in spawn_threads(body, 3):
        assert placements == (Shard(0),)
        np.testing.assert_array_equal(g, np.ones((5, 4)))


def test_errors_as_torch() -> None:
    def body(rank, ws):
        m = mesh(ws)
        a = np.ones((4, 2))
        with pytest.raises(
            ValueError,
            match="`placements` must have the same length as `device_mesh.ndim`! Found placements length: 2, and device_mesh.ndim: 1.",
        ):
            distribute_tensor(a, m, [Shard(0), Replicate()])
        with pytest.raises(
            IndexError,
            match=r"Dimension out of range \(expected to be in range of \[-2, 1\], but got 2\)",
        ):
            distribute_tensor(a, m, [Shard(2)])
        assert distribute_tensor(a, m, [Shard(-1)]).placements == (Shard(1),)
        d = distribute_tensor(a, m, [Shard(0)])
        with pytest.raises(RuntimeError, match="placements is needed for redistribute!"):
            d.redistribute(m, None)
        with pytest.raises(
            RuntimeError,
            match=r"Can not redistribute from S\(0\) to P\(sum\), redistributing to Partial is for internal use only!",
        ):
            d.redistribute(m, [Partial()])
        with pytest.raises(
            RuntimeError,
            match=r"Found shape:\(4, 2\), stride:None. Please pass both shape and stride at the same time.",
        ):
            DTensor.from_local(np.ones((2, 2)), m, [Shard(0)], shape=(4, 2))
        with pytest.raises(ValueError, match="this rank's piece has shape"):
            DTensor.from_local(np.ones((3, 2)), m, [Shard(0)], shape=(4, 2), stride=(2, 1))
        with pytest.raises(ValueError, match="already a DTensor"):
            distribute_tensor(d, m, [Replicate()])
        with pytest.raises(RuntimeError, match="got mixed Tensor and DTensor"):
            d + Tensor(a)
        with pytest.raises(
            NotImplementedError,
            match=r"no sharding rule for __getitem__ \(placements: \(Shard\(dim=0\),\)\)",
        ):
            d[0]
        with pytest.raises(NotImplementedError, match=r"no sharding rule for split"):
            d.split(1)
        return True

    assert all(spawn_threads(body, 2))
