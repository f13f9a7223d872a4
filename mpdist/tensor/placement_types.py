"""Placements (``Shard``, ``Replicate``, ``Partial``) and the sharding arithmetic behind them.

A placement says how a DTensor's global value relates to the local arrays along one mesh
dimension: ``Shard(dim)`` cuts tensor dimension ``dim`` into one piece per rank with
``torch.chunk``'s sizes (pieces of ceil(n / k); the last ones may be smaller or empty),
``Replicate()`` keeps the whole value on every rank, ``Partial(op)`` keeps one term per rank
and the value is their reduction. Placements on several mesh dimensions compose from the
first mesh dimension to the last: a second ``Shard`` of the same tensor dimension cuts the
piece the first one left (``_StridedShard``, FSDP over tensor parallelism, cuts inside the
pieces of the mesh dimensions to its right instead).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import NamedTuple

import numpy as np

__all__ = [
    "Partial",
    "Placement",
    "Replicate",
    "Shard",
    "ShardedLayout",
    "chunk_bounds",
    "cut_order",
    "local_layout",
]

_PARTIAL_OPS = ("sum", "avg", "max", "min")


class Placement:
    """Base class of the placements; the ``is_*`` tests say which one a placement is."""

    def is_shard(self, dim: int | None = None) -> bool:
        """True for ``Shard`` (of ``dim``, when given)."""
        return False

    def is_replicate(self) -> bool:
        """True for ``Replicate``."""
        return False

    def is_partial(self, reduce_op: str | None = None) -> bool:
        """True for ``Partial`` (with ``reduce_op``, when given)."""
        return False


class Shard(Placement):
    """Tensor dimension ``dim`` is cut into one piece per rank of the mesh dimension.

    The pieces follow ``torch.chunk``: ceil(n / k) elements each, so with an uneven length
    the last ranks hold fewer, or none (5 over 4 ranks: 2, 2, 1, 0).
    """

    __slots__ = ("dim",)

    def __init__(self, dim: int) -> None:
        if not isinstance(dim, (int, np.integer)) or isinstance(dim, bool):
            raise TypeError(f"Shard(dim): dim must be an int, got {type(dim).__name__}")
        self.dim = int(dim)

    def is_shard(self, dim: int | None = None) -> bool:
        """True (for ``dim`` too when it is this placement's dimension)."""
        return dim is None or dim == self.dim

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Shard) and other.dim == self.dim

    def __hash__(self) -> int:
        return hash(("Shard", self.dim))

    def __repr__(self) -> str:
        return f"Shard(dim={self.dim})"

    def __str__(self) -> str:
        return f"S({self.dim})"

    @staticmethod
    def local_shard_size_and_offset(size: int, num_chunks: int, rank: int) -> tuple[int, int]:
        """The length and start of piece ``rank`` when ``size`` elements are cut into
        ``num_chunks`` pieces the way ``torch.chunk`` cuts them."""
        start, stop = chunk_bounds(size, num_chunks, rank)
        return stop - start, start


class _StridedShard(Placement):
    """Tensor dimension ``dim`` cut on this mesh dimension *inside* the pieces that the
    mesh dimensions to its right cut it into (``split_factor`` of them): the opposite of
    the default left-to-right nesting. It is how FSDP shards a tensor-parallel parameter
    over the data-parallel ranks (mesh ``(dp, tp)``, tensor-parallel ``Shard(0)``:
    ``(_StridedShard(0, split_factor=tp), Shard(0))``; rank ``(d, t)`` holds chunk ``d``
    of chunk ``t``), torch's ``_StridedShard``. Not a ``Shard``: operators have no rule
    for it; ``redistribute`` and ``full_tensor`` do."""

    __slots__ = ("dim", "split_factor")

    def __init__(self, dim: int, split_factor: int) -> None:
        if not isinstance(dim, (int, np.integer)) or isinstance(dim, bool):
            raise TypeError(f"_StridedShard(dim): dim must be an int, got {type(dim).__name__}")
        if not isinstance(split_factor, (int, np.integer)) or split_factor < 1:
            raise ValueError(f"_StridedShard: split_factor must be >= 1, got {split_factor!r}")
        self.dim = int(dim)
        self.split_factor = int(split_factor)

    def __eq__(self, other: object) -> bool:
        return (
            isinstance(other, _StridedShard)
            and other.dim == self.dim
            and other.split_factor == self.split_factor
        )

    def __hash__(self) -> int:
        return hash(("_StridedShard", self.dim, self.split_factor))

    def __repr__(self) -> str:
        return f"_StridedShard(dim={self.dim}, sf={self.split_factor})"

    def __str__(self) -> str:
        return f"_S({self.dim}, {self.split_factor})"


def cut_order(placements: Sequence[Placement]) -> list[int]:
    """The mesh dimensions in the order their cuts apply: the ``Shard`` ones first to last,
    then the ``_StridedShard`` ones last to first (each cuts inside the cuts to its right)."""
    n = len(placements)
    strided = [d for d in range(n) if isinstance(placements[d], _StridedShard)]
    return [d for d in range(n) if d not in strided] + strided[::-1]


class Replicate(Placement):
    """Every rank of the mesh dimension holds the whole value."""

    __slots__ = ()

    def is_replicate(self) -> bool:
        """True."""
        return True

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Replicate)

    def __hash__(self) -> int:
        return hash("Replicate")

    def __repr__(self) -> str:
        return "Replicate()"

    def __str__(self) -> str:
        return "R"


class Partial(Placement):
    """Every rank holds one term; the value is their reduction by ``reduce_op``
    (``"sum"``, ``"avg"``, ``"max"`` or ``"min"``)."""

    __slots__ = ("reduce_op",)

    def __init__(self, reduce_op: str = "sum") -> None:
        if reduce_op not in _PARTIAL_OPS:
            raise ValueError(
                f"Partial(reduce_op): reduce_op must be one of {', '.join(_PARTIAL_OPS)}, "
                f"got {reduce_op!r}"
            )
        self.reduce_op = reduce_op

    def is_partial(self, reduce_op: str | None = None) -> bool:
        """True (for ``reduce_op`` too when it is this placement's)."""
        return reduce_op is None or reduce_op == self.reduce_op

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Partial) and other.reduce_op == self.reduce_op

    def __hash__(self) -> int:
        return hash(("Partial", self.reduce_op))

    def __repr__(self) -> str:
        return f"Partial({self.reduce_op})"

    def __str__(self) -> str:
        return f"P({self.reduce_op})"


def chunk_bounds(size: int, num_chunks: int, index: int) -> tuple[int, int]:
    """``[start, stop)`` of piece ``index`` of ``size`` elements cut as ``torch.chunk`` cuts
    them into ``num_chunks`` (pieces past the end are empty and start at ``size``)."""
    step = -(-size // num_chunks)
    return min(index * step, size), min((index + 1) * step, size)


class ShardedLayout(NamedTuple):
    """One rank's piece of a global shape: its shape and where it starts."""

    shape: tuple[int, ...]
    offset: tuple[int, ...]


def local_layout(
    global_shape: Sequence[int],
    mesh_shape: Sequence[int],
    coordinate: Sequence[int],
    placements: Sequence[Placement],
) -> ShardedLayout:
    """The local shape and global offset of the rank at ``coordinate`` of a mesh of
    ``mesh_shape``, for a tensor of ``global_shape`` placed by ``placements`` (one per mesh
    dimension, applied in ``cut_order``)."""
    shape = list(global_shape)
    offset = [0] * len(shape)
    if len(mesh_shape) != len(placements) or len(coordinate) != len(placements):
        raise ValueError("local_layout: one mesh size, coordinate and placement per dimension")
    for d in cut_order(placements):
        p, size, coord = placements[d], mesh_shape[d], coordinate[d]
        if isinstance(p, (Shard, _StridedShard)):
            start, stop = chunk_bounds(shape[p.dim], size, coord)
            offset[p.dim] += start
            shape[p.dim] = stop - start
    return ShardedLayout(tuple(shape), tuple(offset))
