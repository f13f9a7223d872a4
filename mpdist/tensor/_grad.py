"""The gradient of a DTensor in the backward pass: this rank's piece, tagged with its placements.

The graph (``mpdist.autograd.graph``) moves gradients as ndarrays. A DTensor's gradient need
not be placed like the DTensor itself (torch's rule: a replicated input of a column-wise
matmul gets a ``Partial`` gradient, reduced only where it is needed), so it travels as a
``PlacedGrad``: an ndarray subclass that carries its ``Spec``. When two contributions
placed differently meet, the sum converts one of them: ``Replicate`` joins ``Partial`` by a
local split (the first rank of the mesh dimension keeps the value, the others add zeros, so
the sum is exact), anything else by redistribution.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from mpdist.tensor._redistribute import Spec, _coordinate, redistribute_local
from mpdist.tensor.placement_types import Partial, Placement, Replicate, Shard


class PlacedGrad(np.ndarray):
    """This rank's piece of a gradient; ``spec`` says how the pieces make the whole."""

    spec: Spec | None

    def __array_finalize__(self, obj: Any) -> None:
        self.spec = getattr(obj, "spec", None)

    def __add__(self, other: Any) -> Any:
        return add_grads(self, other)

    def __radd__(self, other: Any) -> Any:
        return add_grads(other, self)


def placed(arr: Any, spec: Spec) -> PlacedGrad:
    """``arr`` (not copied) as a gradient placed by ``spec``."""
    out = np.asarray(arr).view(PlacedGrad)
    out.spec = spec
    return out


def plain(g: Any) -> np.ndarray:
    """The array under a gradient (a base-class view, so no tag leaks into local ops)."""
    return np.asarray(g).view(np.ndarray)


def _meeting(a: Placement, b: Placement) -> Placement:
    """The placement two differently placed contributions are summed in."""
    if isinstance(a, Shard):
        return a
    if isinstance(b, Shard):
        return b
    if isinstance(a, Partial) and isinstance(b, Replicate):
        return a
    if isinstance(b, Partial) and isinstance(a, Replicate):
        return b
    return Replicate()  # two different Partials: reduce both


def to_placements(g: np.ndarray, spec: Spec, placements: tuple[Placement, ...]) -> np.ndarray:
    """A gradient's piece under ``placements``; ``Replicate -> Partial`` is the exact local
    split (the first rank of the mesh dimension keeps the value), not a division."""
    src = list(spec.placements)
    coord = None
    for d, (s, t) in enumerate(zip(src, placements, strict=True)):
        if isinstance(s, Replicate) and isinstance(t, Partial):
            coord = coord or _coordinate(spec.mesh)
            if coord[d] != 0:
                g = np.zeros_like(g)
            src[d] = t
    return redistribute_local(g, spec.with_placements(src), placements)


def add_grads(a: Any, b: Any) -> Any:
    """The sum of two contributions to one gradient (the graph's accumulation)."""
    sa, sb = getattr(a, "spec", None), getattr(b, "spec", None)
    if sa is None or sb is None:
        # A plain contribution: only zeros reach here (a DTensor op's output that received
        # no gradient), which is zero under any placement.
        spec = sa if sa is not None else sb
        total = plain(a) + plain(b)
        return total if spec is None else placed(total, spec)
    if sa.placements != sb.placements:
        target = tuple(_meeting(x, y) for x, y in zip(sa.placements, sb.placements, strict=True))
        a = to_placements(plain(a), sa, target)
        b = to_placements(plain(b), sb, target)
        sa = sa.with_placements(target)
    return placed(plain(a) + plain(b), sa)
