"""Redistribution of one rank's piece from one set of placements to another, with the collectives.

On each mesh dimension (its process group is ``mesh.get_group(dim)``):

* ``Shard(i) -> Replicate()``: all-gather (pieces padded to one length, trimmed after);
* ``Shard(i) -> Shard(j)``: all-to-all;
* ``Replicate() -> Shard(i)``: this rank's chunk, no communication;
* ``Partial() -> Replicate()``: all-reduce;
* ``Partial() -> Shard(i)``: reduce-scatter;
* ``Replicate() -> Partial()``: a local split of the value (``sum``: value / n; ``avg``,
  ``max``, ``min``: the value itself), no communication;
* ``Shard -> Partial`` goes through ``Replicate``, and so does ``Partial(a) -> Partial(b)``.

On a mesh of several dimensions shards nest (the first mesh dimension cuts first), so the
plan has two passes: from the last mesh dimension to the first, it gathers every shard that
changes, and every shard nested inside a mesh dimension that changes the same tensor
dimension; then, from the first mesh dimension to the last, it makes the target placements.

The collectives are ``mpdist._functional_collectives`` (waited for at once), so collective
modes and ``CommDebugMode`` see them under torch's names (``c10d_functional.all_gather_into_tensor``,
``all_reduce``, ``reduce_scatter_tensor``), as torch's DTensor issues them. ``Shard(i) ->
Shard(j)`` is one operator, ``_dtensor.shard_dim_alltoall`` (torch's name for it), carried
by an all-to-all: torch's gloo CPU path gathers everything and keeps a chunk instead (and
counts an all-gather); mpdist's CPU groups have a real all-to-all, as torch's accelerators do.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, NamedTuple

import numpy as np

from mpdist import _functional_collectives as funcol
from mpdist import distributed as dist
from mpdist.autograd import Tensor
from mpdist.distributed import dispatch
from mpdist.tensor.placement_types import (
    Partial,
    Placement,
    Replicate,
    Shard,
    ShardedLayout,
    _StridedShard,
    chunk_bounds,
    local_layout,
)


class Spec(NamedTuple):
    """Where a DTensor's pieces are: its mesh, one placement per mesh dimension, and the
    global shape."""

    mesh: Any
    placements: tuple[Placement, ...]
    shape: tuple[int, ...]

    def layout(self) -> ShardedLayout:
        """This rank's piece: its shape and global offset."""
        return local_layout(
            self.shape, tuple(self.mesh.shape), _coordinate(self.mesh), self.placements
        )

    def with_placements(self, placements: Sequence[Placement]) -> Spec:
        """The same tensor on the same mesh, placed otherwise."""
        return Spec(self.mesh, tuple(placements), self.shape)


def _coordinate(mesh: Any) -> tuple[int, ...]:
    """This rank's coordinate in ``mesh`` (it must be a member)."""
    coord = mesh.get_coordinate()
    if coord is None:
        raise RuntimeError("this rank is not part of the DTensor's device mesh")
    return tuple(int(c) for c in coord)


def _shard_dims(p: Placement) -> set[int]:
    return {p.dim} if isinstance(p, Shard) else set()


def _group_size_rank(mesh: Any, d: int) -> tuple[Any, int, int]:
    return mesh.get_group(d), int(mesh.size(d)), int(mesh.get_local_rank(d))


def _pad(arr: np.ndarray, axis: int, length: int) -> np.ndarray:
    """``arr`` with zeros appended along ``axis`` up to ``length``."""
    extra = length - arr.shape[axis]
    if extra == 0:
        return arr
    widths = [(0, 0)] * arr.ndim
    widths[axis] = (0, extra)
    return np.pad(arr, widths)


def _all_gather(arr: np.ndarray, axis: int, full: int, mesh: Any, d: int) -> np.ndarray:
    """Join the pieces of ``full`` elements along ``axis`` held by mesh dimension ``d``."""
    group, n, _ = _group_size_rank(mesh, d)
    step = -(-full // n)
    inp = np.ascontiguousarray(np.moveaxis(_pad(arr, axis, step), axis, 0))
    out = funcol.wait_tensor(funcol.all_gather_tensor(Tensor(inp), 0, group)).data
    pieces = []
    for r in range(n):
        start, stop = chunk_bounds(full, n, r)
        pieces.append(out[r * step : r * step + stop - start])
    return np.moveaxis(np.concatenate(pieces, axis=0), 0, axis)


def _reduce_scatter(arr: np.ndarray, axis: int, op: str, mesh: Any, d: int) -> np.ndarray:
    """This rank's piece along ``axis`` of the reduction of every rank's ``arr``."""
    group, n, me = _group_size_rank(mesh, d)
    full = arr.shape[axis]
    step = -(-full // n)
    inp = np.ascontiguousarray(np.moveaxis(_pad(arr, axis, n * step), axis, 0))
    out = funcol.wait_tensor(funcol.reduce_scatter_tensor(Tensor(inp), op, 0, group)).data
    start, stop = chunk_bounds(full, n, me)
    return np.moveaxis(out[: stop - start], 0, axis)


def _all_reduce(arr: np.ndarray, op: str, mesh: Any, d: int) -> np.ndarray:
    res = funcol.all_reduce(Tensor(arr), op, mesh.get_group(d))  # it copies
    return funcol.wait_tensor(res).data


def _local_chunk(arr: np.ndarray, axis: int, mesh: Any, d: int) -> np.ndarray:
    """This rank's chunk along ``axis`` (a copy: the result must not alias the input)."""
    _, n, me = _group_size_rank(mesh, d)
    start, stop = chunk_bounds(arr.shape[axis], n, me)
    index = (slice(None),) * axis + (slice(start, stop),)
    return arr[index].copy()


def _all_to_all(
    arr: np.ndarray, src: int, dst: int, dst_full: int, src_full: int, mesh: Any, d: int
) -> np.ndarray:
    """``Shard(src) -> Shard(dst)``: cut ``arr`` along ``dst`` into one piece per rank, swap
    the pieces, and join what arrives along ``src``. Pieces are padded to one shape, so a
    single even all-to-all carries them."""
    group, n, me = _group_size_rank(mesh, d)
    dstep, sstep = -(-dst_full // n), -(-src_full // n)
    x = _pad(_pad(arr, dst, n * dstep), src, sstep)
    # Put dst first and split it into n rows of blocks: block r goes to rank r.
    x = np.moveaxis(x, dst, 0)
    send = np.ascontiguousarray(x.reshape((n, dstep) + x.shape[1:]))
    recv = _call_shard_dim_alltoall(send, src, dst, group.group_name)
    src_after = src if src < dst else src - 1  # src's axis in x (dst moved out of the way)
    mine = chunk_bounds(dst_full, n, me)
    pieces = []
    for r in range(n):
        start, stop = chunk_bounds(src_full, n, r)
        block = recv[r][: mine[1] - mine[0]]  # axis 0: dst, trimmed to this rank's piece
        idx = [slice(None)] * block.ndim
        idx[src_after + 1] = slice(0, stop - start)
        pieces.append(block[tuple(idx)])
    joined = np.concatenate(pieces, axis=src_after + 1)
    return np.moveaxis(joined, 0, dst)


def _exchange_blocks(send: np.ndarray, gather_dim: int, shard_dim: int, group_name: str) -> Any:
    """``_dtensor.shard_dim_alltoall``: block ``r`` of ``send`` (axis 0) goes to group rank
    ``r``; the blocks that arrive, in rank order (torch's arguments: the dims are for modes
    to read, the blocks are already cut)."""
    recv = np.empty_like(send)
    dist.all_to_all_single(recv, send, group=dist._resolve_process_group(group_name))
    return recv


_OP_SHARD_DIM_ALLTOALL = dispatch.CollectiveOp(
    "_dtensor.shard_dim_alltoall.default", _exchange_blocks
)


def _call_shard_dim_alltoall(
    send: np.ndarray, gather_dim: int, shard_dim: int, group_name: str
) -> np.ndarray:
    args = (send, gather_dim, shard_dim, group_name)
    if dispatch.active and dispatch.intercepting():
        return np.asarray(dispatch.run(_OP_SHARD_DIM_ALLTOALL, args))
    return _exchange_blocks(*args)


def partition_value(arr: np.ndarray, p: Partial, mesh: Any, d: int) -> np.ndarray:
    """``Replicate() -> Partial(op)`` on mesh dimension ``d``: each rank's term."""
    if p.reduce_op == "sum":
        return arr / np.asarray(mesh.size(d), dtype=arr.dtype)
    return arr.copy()


def _changing_dims(src: Sequence[Placement], dst: Sequence[Placement]) -> set[int]:
    """Tensor dimensions some changing mesh dimension shards before or after."""
    return {
        k for s, t in zip(src, dst, strict=True) if s != t for k in _shard_dims(s) | _shard_dims(t)
    }


def _direct_all_to_all(src: Sequence[Placement], dst: Sequence[Placement], d: int) -> bool:
    """Whether ``Shard(i) -> Shard(j)`` on mesh dimension ``d`` can be one all-to-all: no
    other mesh dimension shards ``i`` or ``j`` (no nesting to respect)."""
    s, t = src[d], dst[d]
    if not (isinstance(s, Shard) and isinstance(t, Shard) and s.dim != t.dim):
        return False
    dims = {s.dim, t.dim}
    return not any(
        _shard_dims(src[e]) & dims or _shard_dims(dst[e]) & dims for e in range(len(src)) if e != d
    )


def redistribute_local(arr: np.ndarray, spec: Spec, placements: Sequence[Placement]) -> np.ndarray:
    """This rank's piece under ``placements`` of the DTensor whose piece under ``spec`` is
    ``arr``. Every rank of the mesh must call it with the same arguments. The result never
    aliases ``arr`` unless nothing changes."""
    src, dst = list(spec.placements), list(placements)
    if src == dst:
        return arr
    mesh, shape = spec.mesh, spec.shape
    coord = _coordinate(mesh)
    mesh_shape = tuple(mesh.shape)
    ndim = len(src)
    # _StridedShard cuts are the innermost: gather them first (first mesh dimension first,
    # the reverse of their cut order), make the target's last; the rest nests left to right.
    moving = {
        p.dim
        for a, b in zip(src, dst, strict=True)
        if a != b
        for p in (a, b)
        if isinstance(p, (Shard, _StridedShard))
    }
    for d in range(ndim):
        s = src[d]
        if isinstance(s, _StridedShard) and (s != dst[d] or s.dim in moving):
            src[d] = Replicate()
            full = local_layout(shape, mesh_shape, coord, src).shape[s.dim]
            arr = _all_gather(arr, s.dim, full, mesh, d)
    strided = [d for d in reversed(range(ndim)) if isinstance(dst[d], _StridedShard)]
    if strided and src != dst:
        arr = redistribute_local(
            arr,
            spec.with_placements(src),
            [Replicate() if d in strided and src[d] != dst[d] else p for d, p in enumerate(dst)],
        )
        for d in strided:
            if src[d] != dst[d]:
                arr = _local_chunk(arr, dst[d].dim, mesh, d)  # type: ignore[attr-defined]
        return arr
    # Pass 1, last mesh dimension first: gather every shard that changes or sits inside a
    # changing mesh dimension's cut of the same tensor dimension.
    for d in reversed(range(ndim)):
        s = src[d]
        if not isinstance(s, Shard) or _direct_all_to_all(src, dst, d):
            continue
        outer = _changing_dims(src[:d], dst[:d])
        if s == dst[d] and s.dim not in outer:
            continue
        full = local_layout(shape, mesh_shape[:d], coord[:d], src[:d]).shape[s.dim]
        arr = _all_gather(arr, s.dim, full, mesh, d)
        src[d] = Replicate()
    # Pass 2, first mesh dimension first: make each target placement.
    for d in range(ndim):
        s, t = src[d], dst[d]
        if s == t:
            continue
        if isinstance(s, Shard):  # only a direct Shard(i) -> Shard(j) is left here
            assert isinstance(t, Shard)
            before = local_layout(shape, mesh_shape[:d], coord[:d], src[:d]).shape
            arr = _all_to_all(arr, s.dim, t.dim, before[t.dim], before[s.dim], mesh, d)
        elif isinstance(s, Partial):
            if isinstance(t, Shard):
                arr = _reduce_scatter(arr, t.dim, s.reduce_op, mesh, d)
            else:
                arr = _all_reduce(arr, s.reduce_op, mesh, d)
                if isinstance(t, Partial):
                    arr = partition_value(arr, t, mesh, d)
        elif isinstance(t, Shard):  # from Replicate
            arr = _local_chunk(arr, t.dim, mesh, d)
        elif isinstance(t, Partial):
            arr = partition_value(arr, t, mesh, d)
        src[d] = t
    return arr


def backward_placements(
    grad: Sequence[Placement], forward: Sequence[Placement]
) -> tuple[Placement, ...]:
    """Where a gradient arriving with placements ``grad`` goes for a forward input placed
    by ``forward`` (torch's rule): the input's placements, except that a gradient of a
    ``Partial`` input stays ``Replicate`` when it arrives so (it would only be reduced again
    later), and arrives ``Replicate`` from a shard."""
    out: list[Placement] = []
    for g, f in zip(grad, forward, strict=True):
        if isinstance(f, Partial) and not isinstance(g, Partial):
            out.append(Replicate())
        else:
            out.append(f)
    return tuple(out)
