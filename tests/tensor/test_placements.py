"""Placements and the sharding arithmetic, in one process: torch.chunk's sizes, nesting on
2-D meshes, reprs and errors as torch's."""

from __future__ import annotations

import itertools

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from mpdist.tensor import Partial, Replicate, Shard
from mpdist.tensor.placement_types import chunk_bounds, local_layout


@given(st.integers(0, 40), st.integers(1, 9))
def test_pieces_tile_the_dimension_in_chunk_sizes(size: int, n: int) -> None:
    bounds = [chunk_bounds(size, n, r) for r in range(n)]
    # Contiguous, in order, covering [0, size), each ceil(size / n) or less.
    assert bounds[0][0] == 0 and bounds[-1][1] == size
    for (_, stop), (start, _) in itertools.pairwise(bounds):
        assert stop == start
    step = -(-size // n)
    assert all(stop - start <= step for start, stop in bounds)


def test_chunk_sizes_equal_torch() -> None:
    torch = pytest.importorskip("torch")
    from torch.distributed.tensor import Shard as TShard

    for size, n in itertools.product(range(12), range(1, 6)):
        for r in range(n):
            assert Shard.local_shard_size_and_offset(size, n, r) == tuple(
                TShard.local_shard_size_and_offset(size, n, r)
            )
        # torch.chunk gives the non-empty pieces in order; the rest are empty.
        sizes = [c.shape[0] for c in torch.chunk(torch.empty(size), n)] if size else []
        ours = [Shard.local_shard_size_and_offset(size, n, r)[0] for r in range(n)]
        assert ours[: len(sizes)] == sizes and not any(ours[len(sizes) :])


@pytest.mark.parametrize(
    "placements",
    [
        (Shard(0), Shard(0)),
        (Shard(0), Shard(1)),
        (Shard(1), Shard(0)),
        (Replicate(), Shard(1)),
        (Shard(1), Partial()),
        (Shard(0), Shard(1), Shard(0)),
    ],
    ids=str,
)
def test_nested_pieces_tile_the_tensor(placements) -> None:
    """Every mesh coordinate's piece, cut from the global array at its offset, and all of
    them together cover each element once per replica (the first mesh dim cuts first)."""
    mesh_shape = (2, 3, 2)[: len(placements)]
    shape = (7, 5)
    count = np.zeros(shape, dtype=int)
    for coord in itertools.product(*(range(n) for n in mesh_shape)):
        lay = local_layout(shape, mesh_shape, coord, placements)
        index = tuple(slice(o, o + n) for o, n in zip(lay.offset, lay.shape, strict=True))
        count[index] += 1
    replicas = int(
        np.prod([n for n, p in zip(mesh_shape, placements, strict=True) if not p.is_shard()])
    )
    assert (count == replicas).all()


def test_nesting_cuts_the_outer_piece() -> None:
    # 7 rows over (2, 2): mesh dim 0 gives 4 | 3, mesh dim 1 cuts those into 2, 2 | 2, 1.
    sizes = {
        c: local_layout((7,), (2, 2), c, (Shard(0), Shard(0)))
        for c in itertools.product(range(2), range(2))
    }
    assert [sizes[c].shape[0] for c in sorted(sizes)] == [2, 2, 2, 1]
    assert [sizes[c].offset[0] for c in sorted(sizes)] == [0, 2, 4, 6]


def test_reprs_equality_and_tests_like_torch() -> None:
    assert repr(Shard(1)) == "Shard(dim=1)" and str(Shard(1)) == "S(1)"
    assert repr(Replicate()) == "Replicate()" and str(Replicate()) == "R"
    assert repr(Partial()) == "Partial(sum)" and str(Partial("avg")) == "P(avg)"
    assert Shard(0) == Shard(0) != Shard(1) and Partial() == Partial("sum") != Partial("max")
    assert len({Shard(0), Shard(0), Replicate(), Replicate(), Partial()}) == 3
    assert Shard(0).is_shard() and Shard(0).is_shard(0) and not Shard(0).is_shard(1)
    assert Replicate().is_replicate() and not Replicate().is_shard()
    assert (
        Partial().is_partial() and Partial().is_partial("sum") and not Partial().is_partial("avg")
    )
    torch = pytest.importorskip("torch")
    from torch.distributed.tensor import Partial as TP
    from torch.distributed.tensor import Replicate as TR
    from torch.distributed.tensor import Shard as TS

    for ours, theirs in ((Shard(2), TS(2)), (Replicate(), TR()), (Partial("max"), TP("max"))):
        assert (repr(ours), str(ours)) == (repr(theirs), str(theirs))
    del torch


def test_bad_placements_are_refused() -> None:
    with pytest.raises(TypeError, match="dim must be an int"):
        Shard(0.5)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="reduce_op must be one of"):
        Partial("prod")
