"""One FSDP unit's flat parameter: flattening, sharding, gathering, and reducing its gradient.

A unit's parameters (those of its module not owned by a nested unit) are laid end to end in
one flat array, padded with zeros to a multiple of the shard group's size; each rank keeps
only its contiguous chunk (``flat_param``, the Parameter the optimizer steps on). Before the
unit runs, ``unshard`` all-gathers the chunks into the full flat array and hands the module
one leaf Tensor per original parameter, a view into it (a ``DTensor`` over that view for a
tensor-parallel parameter). After backward, the leaves' gradients are packed into a flat
gradient, reduce-scattered (summed, divided by the number of ranks) into ``flat_param.grad``
(NO_SHARD: all-reduced; hybrid: reduce-scattered within the shard group, then all-reduced
across the replicas).

A sharded unit's full array is a ``Storage`` (``_storage``, shared with ``fully_shard``):
``free`` gives its pages back to the kernel while the forward's graph keeps its views, and
the gather before backward refills the same array, so the unit's unsharded bytes are
resident (and counted by ``_storage``'s meter) only from its all-gather to its reshard.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np

from mpdist import distributed as dist
from mpdist.autograd import Tensor, is_grad_enabled
from mpdist.fsdp._storage import Storage
from mpdist.nn import Module, Parameter
from mpdist.parallel.reducer import communication_thread_pays
from mpdist.process_group import ProcessGroup, ReduceOp


@dataclass
class FlatEntry:
    """One original parameter inside a unit's flat array."""

    module: Module  # the module that owns it
    name: str  # its attribute name there
    fqn: str  # its dotted name relative to the unit's module
    shape: tuple[int, ...]  # the local shape (a DTensor's local piece)
    offset: int
    numel: int
    dtensor: Any  # None, or (mesh, placements, global shape) of a tensor-parallel parameter
    guard: Any = None  # the OutsideForward the owner shows while the root's forward runs


@dataclass
class ShardGroups:
    """Where a unit shards (``shard``) and, for hybrid strategies, replicates (``replicate``)."""

    shard: ProcessGroup
    replicate: ProcessGroup | None
    sharded: bool  # False for NO_SHARD: every rank holds the whole flat array
    mesh: Any = None  # a 1-D DeviceMesh over ``shard`` (given, or made for a sharded state dict)


class FlatParamHandle:
    """The flat parameter of one unit and its gather / reduce steps."""

    def __init__(
        self,
        entries: list[FlatEntry],
        arrays: list[np.ndarray],
        groups: ShardGroups,
        use_orig_params: bool,
    ) -> None:
        self.entries = entries
        self.groups = groups
        self.use_orig_params = use_orig_params
        self.world = dist.get_world_size(groups.shard) if groups.sharded else 1
        self.rank = dist.get_rank(groups.shard) if groups.sharded else 0
        self.replicas = dist.get_world_size(groups.replicate) if groups.replicate else 1
        # gradients are averaged over every rank that computed one
        self.divisor = dist.get_world_size(groups.shard) * self.replicas
        self.numel = sum(e.numel for e in entries)
        self.padded = -(-self.numel // self.world) * self.world
        self.shard_size = self.padded // self.world
        dtype = arrays[0].dtype if arrays else np.dtype(np.float32)
        full = np.zeros(self.padded, dtype=dtype)
        for e, a in zip(entries, arrays, strict=True):
            full[e.offset : e.offset + e.numel] = a.reshape(-1)
        lo = self.rank * self.shard_size
        self.flat_param = Parameter(full[lo : lo + self.shard_size].copy())
        # the unsharded flat array, its pages resident only while gathered (sharded units)
        self.storage = Storage(self.padded, dtype, resident=False) if groups.sharded else None
        self.full: np.ndarray | None = None  # the storage's array while it is gathered
        self.leaves: list[Tensor] = []
        self.pending = 0  # leaves whose gradient has not arrived in this backward
        self.armed = False  # a forward with grad ran; its gradient reduction is due
        self.unsharded_grad: np.ndarray | None = None  # accumulated under no_sync
        self.sync_grads = True
        self.orig_params: list[Parameter] = []
        self.async_reduce = groups.sharded and communication_thread_pays(
            dist.get_world_size(groups.shard)
        )
        self._work: Any = None
        self._reduced: np.ndarray | None = None
        if use_orig_params:
            self._expose_orig_params()

    # ------------------------------------------------------------ original parameters
    def local_slice(self, e: FlatEntry) -> tuple[int, int]:
        """The part of ``e`` in this rank's shard, as [start, stop) offsets into the shard."""
        lo = self.rank * self.shard_size
        start = min(max(e.offset, lo), lo + self.shard_size)
        stop = max(min(e.offset + e.numel, lo + self.shard_size), start)
        return start - lo, stop - lo

    def _expose_orig_params(self) -> None:
        """use_orig_params: each original name holds a 1-D Parameter viewing its part of the
        shard (possibly empty), so the optimizer updates the shard in place."""
        self.orig_params = []
        for e in self.entries:
            a, b = self.local_slice(e)
            p = Parameter(self.flat_param.data[a:b])
            e.module._parameters[e.name] = p
            self.orig_params.append(p)

    def sync_orig_grads(self) -> None:
        """Point each original parameter's ``.grad`` at its slice of the shard's gradient."""
        g = self.flat_param.grad
        for e, p in zip(self.entries, self.orig_params, strict=True):
            a, b = self.local_slice(e)
            p.grad = None if g is None else Tensor(g.data[a:b])

    # ------------------------------------------------------------ gather / free
    def gather(self) -> np.ndarray:
        """The full flat array, all-gathered from the shards into the unit's storage (the
        array every earlier view of it sees); counted live until ``free``."""
        if self.storage is None:
            return self.flat_param.data  # NO_SHARD: the parameter is the full array
        if self.full is not None:
            return self.full
        self.storage.materialize()
        full = self.storage.array
        dist.all_gather_into_tensor(full, self.flat_param.data, group=self.groups.shard)
        self.full = full
        return full

    def refill(self) -> None:
        """Gather again before backward: the forward's graph views the same storage."""
        if self.leaves:
            self.gather()

    def free(self) -> None:
        """Give the unsharded array's pages back (a sharded unit only); it reads zeros until
        the next gather."""
        if self.storage is not None and self.full is not None:
            self.full = None
            self.storage.free()

    def views(self, requires_grad: bool) -> list[Any]:
        """One leaf per original parameter over the gathered array, what the module computes
        with; their gradients come back to ``on_grad``."""
        full = self.gather()
        out: list[Any] = []
        self.leaves = []
        for e in self.entries:
            leaf = Tensor(full[e.offset : e.offset + e.numel].reshape(e.shape))
            if requires_grad:
                leaf.requires_grad_(True)
            self.leaves.append(leaf)
            if e.dtensor is not None:
                from mpdist.tensor import DTensor

                mesh, placements, gshape = e.dtensor
                stride = _contiguous_stride(gshape)
                out.append(DTensor.from_local(leaf, mesh, placements, shape=gshape, stride=stride))
            else:
                out.append(leaf)
        return out

    # ------------------------------------------------------------ gradients
    def arm(self, on_leaf_grad: Callable[[FlatParamHandle], None]) -> None:
        """Expect one gradient per leaf in the coming backward."""
        self.armed = True
        self.pending = len(self.leaves)
        for leaf in self.leaves:
            leaf.register_post_accumulate_grad_hook(lambda _t: on_leaf_grad(self))

    def flat_grad(self) -> np.ndarray:
        """The leaves' gradients laid out like the flat array (zeros where none arrived)."""
        g = np.zeros(self.padded, dtype=self.flat_param.data.dtype)
        for e, leaf in zip(self.entries, self.leaves, strict=True):
            if leaf.grad is not None:
                g[e.offset : e.offset + e.numel] = leaf.grad.data.reshape(-1)
        return g

    def reduce_grad(self) -> None:
        """Reduce this backward's gradient into ``flat_param.grad`` (or keep it unsharded
        under ``no_sync``); then the leaves are done."""
        self.armed = False
        g = self.flat_grad()
        self.leaves = []
        if self.unsharded_grad is not None:
            g += self.unsharded_grad
        if not self.sync_grads:
            self.unsharded_grad = g
            return
        self.unsharded_grad = None
        g /= self.divisor
        if not self.groups.sharded:
            dist.all_reduce(g, group=self.groups.shard)
            self._accumulate(g)
            return
        out = np.empty(self.shard_size, dtype=g.dtype)
        if self.async_reduce and self.replicas == 1:
            self._work = dist.reduce_scatter_tensor(
                out, g, op=ReduceOp.SUM, group=self.groups.shard, async_op=True
            )
            self._reduced = out
            return
        dist.reduce_scatter_tensor(out, g, op=ReduceOp.SUM, group=self.groups.shard)
        if self.groups.replicate is not None:
            dist.all_reduce(out, group=self.groups.replicate)
        self._accumulate(out)

    def wait_reduce(self) -> None:
        """Finish an asynchronous reduce-scatter (end of backward)."""
        if self._work is not None:
            self._work.wait()
            self._work = None
            assert self._reduced is not None
            self._accumulate(self._reduced)
            self._reduced = None

    def _accumulate(self, shard_grad: np.ndarray) -> None:
        p = self.flat_param
        if self.use_orig_params and all(q.grad is None for q in self.orig_params):
            p.grad = None  # the optimizer set the original gradients to None: start afresh
        if p.grad is None:
            p.grad = Tensor(shard_grad)
        else:
            p.grad.data[...] += shard_grad
        if self.use_orig_params:
            self.sync_orig_grads()

    def set_requires_grad(self) -> bool:
        """Whether the unit's leaves need gradients in this forward."""
        return is_grad_enabled() and self.flat_param.requires_grad


def _contiguous_stride(shape: tuple[int, ...]) -> tuple[int, ...]:
    stride, acc = [], 1
    for n in reversed(shape):
        stride.append(acc)
        acc *= n
    return tuple(reversed(stride))
