"""One ``fully_shard`` unit's parameters: their ``Shard(0)`` pieces, the unsharded storage
gathered for forward and backward, and the unit's collectives (an all-gather and a
reduce-scatter per evenly split parameter, straight between its piece and its place in the
storage; one packed pair for the unevenly split rest).

The unsharded parameters are plain Tensors whose arrays are views into one ``Storage`` per
unit (``_storage``: its pages are given back on ``reshard`` and refilled by ``unshard``
before backward), so a unit's unsharded bytes are resident only between its ``unshard`` and
``reshard``; ``_storage``'s meter counts them.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from mpdist import distributed as dist
from mpdist.autograd import Tensor
from mpdist.fsdp._storage import Storage, count
from mpdist.fsdp._tp import dp_tp_spec
from mpdist.nn.module import Module
from mpdist.nn.parameter import Parameter
from mpdist.process_group import ProcessGroup, ReduceOp
from mpdist.tensor._api import DTensor, DTensorParameter
from mpdist.tensor._redistribute import Spec
from mpdist.tensor.placement_types import Replicate, Shard, chunk_bounds


@dataclass
class FSDPParam:
    """One managed parameter: where it is registered, its piece, its unsharded Tensor."""

    module: Module
    name: str
    sharded: DTensorParameter  # what the module holds outside forward
    full_shape: tuple[int, ...]  # the shape gathered (a TP parameter: its TP piece's)
    inner: Spec | None  # a TP parameter's own spec (the unsharded one is a DTensor on it)
    rows: int  # length of dim 0 of ``full_shape``
    start: int  # this rank's first row
    stop: int
    padded_rows: int  # ceil(rows / shard size): every rank's piece padded to it
    offset: int = 0  # in the unit's packed piece buffer (elements)
    full_offset: int = 0  # in the unit's unsharded storage (elements)
    unsharded: Tensor | None = None
    hooks: list[Any] = field(default_factory=list)
    guard: Any = None  # the OutsideForward its module shows while the root's forward runs

    @property
    def row_numel(self) -> int:
        return int(np.prod(self.full_shape[1:], dtype=np.int64))

    @property
    def padded_numel(self) -> int:
        return self.padded_rows * self.row_numel

    @property
    def numel(self) -> int:
        return self.rows * self.row_numel


@dataclass
class _Pending:
    """A collective in flight and what to do with its result once it is waited for."""

    works: list[Any]
    finish: Callable[[], None]


def _nothing() -> None:
    pass


def _wait(pending: _Pending) -> None:
    for work in pending.works:
        if work is not None:
            work.wait()
    pending.finish()


class FSDPParamGroup:
    """The unit of communication of one ``fully_shard`` call."""

    def __init__(
        self,
        params: list[FSDPParam],
        shard_group: ProcessGroup,
        replicate_group: ProcessGroup | None,
        param_dtype: np.dtype,
        reduce_dtype: np.dtype,
    ) -> None:
        self.params = params
        self.shard_group = shard_group
        self.replicate_group = replicate_group
        self.shard_size = dist.get_world_size(shard_group)
        self.dp_size = self.shard_size * (
            dist.get_world_size(replicate_group) if replicate_group is not None else 1
        )
        self.param_dtype = param_dtype
        self.reduce_dtype = reduce_dtype
        # A parameter whose rows split evenly is gathered straight into its storage view
        # and reduce-scattered straight from its unsharded gradient: chunk r of the full
        # tensor is rank r's piece, so no packing, temporary or copy-out is needed. The
        # others (uneven rows: padded pieces) share one packed all-gather / reduce-scatter.
        self.direct = [p for p in params if p.rows % self.shard_size == 0]
        self.padded = [p for p in params if p.rows % self.shard_size != 0]
        off = full = 0
        for p in params:
            p.full_offset = full
            full += p.numel
        for p in self.padded:
            p.offset = off
            off += p.padded_numel
        self.packed = off
        self.storage = Storage(full, param_dtype) if params else None
        self._make_unsharded()
        self.unsharded = True  # the storage is fresh; reshard() frees it
        self._gather: _Pending | None = None
        self._reduce: _Pending | None = None

    @property
    def nbytes(self) -> int:
        """Bytes of the unit's unsharded parameters."""
        return self.storage.nbytes if self.storage is not None else 0

    def _make_unsharded(self) -> None:
        assert self.storage is not None or not self.params
        for p in self.params:
            assert self.storage is not None
            view = self.storage.array[p.full_offset : p.full_offset + p.numel]
            arr = view.reshape(p.full_shape)
            t: Tensor
            if p.inner is not None:
                t = DTensorParameter(arr, p.inner, requires_grad=p.sharded.requires_grad)
            else:
                t = Parameter(arr, requires_grad=p.sharded.requires_grad)
            p.unsharded = t

    # ------------------------------------------------------------------ all-gather
    def _piece(self, p: FSDPParam, dtype: np.dtype) -> np.ndarray:
        """``p``'s piece as a flat contiguous array of ``dtype`` (no copy when it is one)."""
        local = np.ascontiguousarray(p.sharded.data).reshape(-1)
        return local if local.dtype == dtype else local.astype(dtype)

    def start_unshard(self, async_op: bool) -> None:
        """Issue the all-gather (if the parameters are not gathered or on their way)."""
        if self.unsharded or self._gather is not None or self.storage is None:
            return
        storage = self.storage
        storage.materialize()  # the gather writes into it
        works = [
            dist.all_gather_into_tensor(
                storage.array[p.full_offset : p.full_offset + p.numel],
                self._piece(p, self.param_dtype),
                group=self.shard_group,
                async_op=async_op,
            )
            for p in self.direct
        ]
        finish: Callable[[], None] = _nothing
        if self.padded:
            send = np.zeros(self.packed, dtype=self.param_dtype)
            for p in self.padded:
                local = self._piece(p, self.param_dtype)
                send[p.offset : p.offset + local.size] = local
            out = np.empty(self.shard_size * self.packed, dtype=self.param_dtype)
            count(out.nbytes)
            works.append(
                dist.all_gather_into_tensor(out, send, group=self.shard_group, async_op=async_op)
            )

            def finish() -> None:
                blocks = out.reshape(self.shard_size, self.packed)
                # each rank's rows straight into place: one copy, no gathered temporary
                for p in self.padded:
                    for r in range(self.shard_size):
                        a, b = chunk_bounds(p.rows, self.shard_size, r)
                        n = (b - a) * p.row_numel
                        dst = p.full_offset + a * p.row_numel
                        storage.array[dst : dst + n] = blocks[r, p.offset : p.offset + n]
                count(-out.nbytes)

        self._gather = _Pending(works, finish)

    def wait_unshard(self) -> None:
        """Finish the all-gather: the unsharded parameters hold the full values."""
        if self._gather is None:
            return
        pending, self._gather = self._gather, None
        _wait(pending)
        self.unsharded = True

    def unshard(self, async_op: bool = False) -> None:
        """Gather the parameters (``async_op``: only issue; ``wait_unshard`` finishes)."""
        self.start_unshard(async_op)
        if not async_op:
            self.wait_unshard()

    def use_unsharded(self) -> None:
        """Register the unsharded parameters on their modules (for forward)."""
        for p in self.params:
            assert p.unsharded is not None
            p.module._parameters[p.name] = p.unsharded

    def use_sharded(self) -> None:
        """Register the sharded DTensor parameters on their modules (outside forward)."""
        for p in self.params:
            p.module._parameters[p.name] = p.sharded

    def reshard(self) -> None:
        """Free the unsharded parameters' memory (an in-flight all-gather is finished first)."""
        self.wait_unshard()
        self.use_sharded()
        if self.unsharded and self.storage is not None:
            self.storage.free()
        self.unsharded = False

    # ------------------------------------------------------------------ reduce-scatter
    def has_grads(self) -> bool:
        """Whether some unsharded parameter holds a gradient."""
        return any(p.unsharded is not None and p.unsharded.grad is not None for p in self.params)

    def start_reduce(self, async_op: bool) -> None:
        """Reduce-scatter the unsharded gradients (averaged over the data-parallel ranks)
        into the pieces' ``.grad``; the unsharded gradients are dropped."""
        self.wait_reduce()
        n, dtype = self.shard_size, self.reduce_dtype
        outs: list[tuple[FSDPParam, np.ndarray]] = []  # a piece's summed gradient
        works: list[Any] = []
        padded: list[tuple[FSDPParam, np.ndarray]] = []
        sent: list[np.ndarray] = []  # kept alive until the collectives are done
        for p in self.params:
            assert p.unsharded is not None
            g = p.unsharded.grad
            if g is None:
                continue
            p.unsharded.grad = None
            full = np.ascontiguousarray(g.data, dtype=dtype).reshape(-1)
            if p.rows % n:
                padded.append((p, full))
                continue
            out = np.empty(full.size // n, dtype=dtype)
            sent.append(full)
            works.append(
                dist.reduce_scatter_tensor(
                    out, full, ReduceOp.SUM, group=self.shard_group, async_op=async_op
                )
            )
            outs.append((p, out))
        if padded:
            send = np.zeros((n, self.packed), dtype=dtype)
            for p, full in padded:
                rows = full.reshape((p.rows, -1))
                for r in range(n):
                    a, b = chunk_bounds(p.rows, n, r)
                    send[r, p.offset : p.offset + (b - a) * p.row_numel] = rows[a:b].reshape(-1)
            packed = np.empty(self.packed, dtype=dtype)
            works.append(
                dist.reduce_scatter_tensor(
                    packed,
                    send.reshape(-1),
                    ReduceOp.SUM,
                    group=self.shard_group,
                    async_op=async_op,
                )
            )
            for p, _ in padded:
                outs.append((p, packed[p.offset : p.offset + (p.stop - p.start) * p.row_numel]))
        if not works:
            return

        def finish() -> None:
            sent.clear()
            for p, out in outs:
                if self.replicate_group is not None:
                    dist.all_reduce(out, group=self.replicate_group)
                np.divide(out, self.dp_size, out=out)
                local = p.sharded.data
                piece = out.reshape(local.shape)
                grad = p.sharded.grad
                if isinstance(grad, DTensor):
                    np.add(grad.data, piece, out=grad.data)
                else:
                    p.sharded.grad = DTensor(piece.astype(local.dtype, copy=False), p.sharded._spec)

        self._reduce = _Pending(works, finish)
        if not async_op:
            self.wait_reduce()

    def wait_reduce(self) -> None:
        """Finish a reduce-scatter in flight."""
        if self._reduce is None:
            return
        pending, self._reduce = self._reduce, None
        _wait(pending)


def shard_param(
    module: Module,
    name: str,
    param: Parameter,
    mesh: Any,
) -> FSDPParam:
    """``param`` cut into ``Shard(0)`` pieces on ``mesh``'s last dimension (replicated on a
    2-D mesh's first): the piece is this rank's ``torch.chunk`` of the rows. A tensor-parallel
    parameter (a DTensor) has its TP piece cut so, on the 2-D (dp, tp) mesh (``_tp``)."""
    shard_dim = mesh.ndim - 1
    n = int(mesh.size(shard_dim))
    me = int(mesh.get_local_rank(shard_dim))
    inner: Spec | None = None
    if isinstance(param, DTensor):
        inner = param._spec
        spec_of = dp_tp_spec(mesh, inner.mesh, inner.placements, inner.shape)
    full = np.asarray(param.data)  # a DTensor's: its TP piece
    if full.ndim == 0:
        raise ValueError(f"fully_shard: parameter {name!r} is 0-d; Shard(0) needs a dimension")
    rows = int(full.shape[0])
    start, stop = chunk_bounds(rows, n, me)
    piece = np.array(full[start:stop], copy=True)
    if inner is None:
        placements = (Replicate(), Shard(0)) if mesh.ndim == 2 else (Shard(0),)
        spec_of = Spec(mesh, placements, tuple(full.shape))
    sharded = DTensorParameter(piece, spec_of, requires_grad=param.requires_grad)
    return FSDPParam(
        module=module,
        name=name,
        sharded=sharded,
        full_shape=tuple(int(s) for s in full.shape),
        inner=inner,
        rows=rows,
        start=start,
        stop=stop,
        padded_rows=-(-rows // n),
    )
