"""``FullyShardedDataParallel``: a module whose parameters are sharded across ranks (FSDP1).

Each instance is a unit (``_flat.FlatParamHandle``): its module's parameters, minus those of
nested instances, live as one flat shard per rank. The unit's forward all-gathers them, runs
the module on views of the full array, and (FULL_SHARD) drops the full array again; a hook
on the unit's outputs gathers them anew just before its backward; the gradients are then
reduce-scattered into the shard's ``.grad`` and the full array dropped. SHARD_GRAD_OP keeps
the full array from forward to the end of backward; NO_SHARD keeps everything and all-reduces.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Mapping
from typing import Any

import numpy as np

from mpdist import distributed as dist
from mpdist.autograd import Tensor, no_grad
from mpdist.autograd.graph import queue_outer_callback
from mpdist.fsdp import (
    CPUOffload,
    FullStateDictConfig,
    MixedPrecision,
    ShardingStrategy,
    StateDictConfig,
    StateDictType,
)
from mpdist.fsdp._flat import FlatEntry, FlatParamHandle, ShardGroups
from mpdist.fsdp._misuse import OutsideForward, check_same_across_ranks, show_guard
from mpdist.fsdp.wrap import apply_policy
from mpdist.nn import Module
from mpdist.parallel.ddp import sync_module_states as _broadcast_arrays
from mpdist.process_group import ProcessGroup, ReduceOp

_HYBRID = (ShardingStrategy.HYBRID_SHARD, ShardingStrategy._HYBRID_SHARD_ZERO2)
_KEEP_AFTER_FORWARD = (ShardingStrategy.SHARD_GRAD_OP, ShardingStrategy._HYBRID_SHARD_ZERO2)
WRAPPED = "_fsdp_wrapped_module"
_REMEDY = (
    "Wrap the modules that use it in one FullyShardedDataParallel unit (their common "
    "parent), or read it inside summon_full_params()."
)


def _resolve_groups(
    process_group: Any, device_mesh: Any, strategy: ShardingStrategy
) -> ShardGroups:
    """The shard (and replicate) groups from ``process_group`` / ``device_mesh``."""
    if process_group is not None and device_mesh is not None:
        raise ValueError(
            "Cannot pass both process_group and device_mesh at the same time. "
            "Please just pass only one of them."
        )
    if device_mesh is not None:
        if strategy in _HYBRID:
            if device_mesh.ndim != 2:
                raise ValueError(
                    f"{strategy.name} needs a 2-D device_mesh (replicate, shard), got a "
                    f"{device_mesh.ndim}-D mesh"
                )
            return ShardGroups(device_mesh.get_group(1), device_mesh.get_group(0), True)
        if device_mesh.ndim != 1:
            raise ValueError(
                f"{strategy.name} shards over a 1-D device_mesh, got a {device_mesh.ndim}-D mesh "
                '(pass one dimension of it, e.g. mesh["dp"])'
            )
        return ShardGroups(
            device_mesh.get_group(0), None, strategy != ShardingStrategy.NO_SHARD, device_mesh
        )
    if strategy in _HYBRID:
        if isinstance(process_group, tuple):
            intra, inter = process_group
            _check_member(intra, "the intra-node process_group")
            _check_member(inter, "the inter-node process_group")
            common = set(dist.get_process_group_ranks(intra)) & set(
                dist.get_process_group_ranks(inter)
            )
            if common != {dist.get_rank()}:
                raise ValueError(
                    f"{strategy.name}: the (intra-node, inter-node) process groups must share "
                    f"only this rank ({dist.get_rank()}), they share ranks {sorted(common)}"
                )
            return ShardGroups(intra, inter, True)
        raise ValueError(
            f"{strategy.name} needs a 2-D device_mesh or a (intra-node, inter-node) "
            "process_group pair"
        )
    pg = process_group if process_group is not None else dist.group.WORLD
    if pg is None:
        raise ValueError(
            "Default process group has not been initialized, please make sure to call "
            "init_process_group."
        )
    _check_member(pg, "process_group")
    return ShardGroups(pg, None, strategy != ShardingStrategy.NO_SHARD)


def _check_member(pg: ProcessGroup, what: str) -> None:
    if dist.get_rank(pg) < 0:
        raise ValueError(
            f"FSDP: this rank ({dist.get_rank()}) is not a member of {what}; every rank "
            "that wraps the module must be in its group"
        )


class FullyShardedDataParallel(Module):
    """Shard ``module``'s parameters across the ranks of ``process_group`` (default: the
    world) or of ``device_mesh``; see the module docstring for the life of a unit.

    ``auto_wrap_policy`` (``ModuleWrapPolicy({nn.Linear})``, ``size_based_auto_wrap_policy``)
    makes nested units; instances built by hand nest too. ``use_orig_params=True`` keeps the
    original parameter names, each a 1-D view of its part of this rank's shard.
    ``mixed_precision`` and ``cpu_offload`` are accepted; mpdist computes in the parameters'
    dtype on the CPU.
    """

    def __init__(
        self,
        module: Module,
        process_group: Any = None,
        sharding_strategy: ShardingStrategy | None = None,
        cpu_offload: CPUOffload | None = None,
        auto_wrap_policy: Any = None,
        backward_prefetch: Any = None,
        mixed_precision: MixedPrecision | None = None,
        ignored_modules: Any = None,
        param_init_fn: Any = None,
        device_id: Any = None,
        sync_module_states: bool = False,
        forward_prefetch: bool = False,
        limit_all_gathers: bool = True,
        use_orig_params: bool = False,
        ignored_states: Any = None,
        device_mesh: Any = None,
    ) -> None:
        super().__init__()
        if not isinstance(module, Module):
            raise TypeError(
                f"FullyShardedDataParallel wraps an mpdist.nn.Module, got {type(module).__name__}"
            )
        strategy = sharding_strategy or ShardingStrategy.FULL_SHARD
        self.sharding_strategy = strategy
        self._groups = _resolve_groups(process_group, device_mesh, strategy)
        self.process_group = self._groups.shard
        self.use_orig_params = use_orig_params
        self._state_dict_type = StateDictType.FULL_STATE_DICT
        self._state_dict_config: StateDictConfig = FullStateDictConfig()
        self._is_root: bool | None = None
        kwargs = dict(
            process_group=process_group,
            sharding_strategy=strategy,
            use_orig_params=use_orig_params,
            sync_module_states=sync_module_states,
            device_mesh=device_mesh,
        )
        if auto_wrap_policy is not None:
            apply_policy(module, auto_wrap_policy, lambda m: FullyShardedDataParallel(m, **kwargs))
        self.add_module(WRAPPED, module)
        self._handle = self._build_handle(module, sync_module_states)
        if not use_orig_params:
            self.register_parameter("_flat_param", self._handle.flat_param)

    # ---------------------------------------------------------------- construction
    def _build_handle(self, module: Module, sync: bool) -> FlatParamHandle:
        entries: list[FlatEntry] = []
        arrays: list[np.ndarray] = []
        offset = 0
        for owner, prefix in _own_modules(module, ""):
            for name, p in list(owner._parameters.items()):
                if p is None:
                    continue
                dt = None
                local = p.data
                if hasattr(p, "to_local") and hasattr(p, "placements"):
                    dt = (p.device_mesh, tuple(p.placements), tuple(p.shape))
                    local = p.to_local().data
                entries.append(
                    FlatEntry(
                        owner, name, prefix + name, tuple(local.shape), offset, local.size, dt
                    )
                )
                arrays.append(np.asarray(local))
                offset += local.size
                del owner._parameters[name]
        everyone = self._groups.shard
        if sync:
            states = arrays + [b.data for b in module.buffers()]
            _broadcast_arrays(states, everyone, dist.get_global_rank(everyone, 0))
            if self._groups.replicate is not None:
                _broadcast_arrays(
                    states, self._groups.replicate, dist.get_global_rank(self._groups.replicate, 0)
                )
        else:
            check_same_across_ranks(
                [(e.fqn, a) for e, a in zip(entries, arrays, strict=True)], everyone, "FSDP"
            )
        return FlatParamHandle(entries, arrays, self._groups, self.use_orig_params)

    @property
    def module(self) -> Module:
        """The wrapped module."""
        return self._modules[WRAPPED]

    # ---------------------------------------------------------------- forward / backward
    def _units(self) -> list[FullyShardedDataParallel]:
        return [m for m in self.modules() if isinstance(m, FullyShardedDataParallel)]

    def forward(self, *args: Any, **kwargs: Any) -> Any:
        """Gather this unit's parameters, run the module, reshard (FULL_SHARD), and arrange
        for the gradients to be gathered and reduced in backward."""
        if self._is_root is None:
            self._is_root = True
            for u in self._units():
                if u is not self:
                    u._is_root = False
        h = self._handle
        grad = h.set_requires_grad()
        if h.armed:  # a previous forward's backward never ran: start over
            h.leaves, h.armed = [], False
        if self._is_root:
            self._guard_units(True)
        tensors = h.views(grad)
        for e, t in zip(h.entries, tensors, strict=True):
            e.module.__dict__[e.name] = t
        try:
            out = self.module(*args, **kwargs)
        finally:
            for e in h.entries:
                e.module.__dict__.pop(e.name, None)
                show_guard(e.module, e.name, e.guard)
            if self._is_root:
                self._guard_units(False)
        if grad and h.entries:
            h.arm(_on_leaf_grad)
            _register_pre_backward(out, h)
        if self.sharding_strategy not in _KEEP_AFTER_FORWARD or not grad:
            h.free()
        return out

    def _guard_units(self, on: bool) -> None:
        """Root only: while its forward runs, each unit's parameters show a guard outside
        that unit's forward (``_misuse``); ``on=False`` takes the guards away."""
        from mpdist.fsdp._state_dict import clean

        for name, u in self.named_modules():
            if not isinstance(u, FullyShardedDataParallel):
                continue
            for e in u._handle.entries:
                if on:
                    fqn = clean(f"{name}.{WRAPPED}.{e.fqn}" if name else f"{WRAPPED}.{e.fqn}")
                    e.guard = OutsideForward(fqn, "FSDP", _REMEDY)
                else:
                    e.guard = None
                show_guard(e.module, e.name, e.guard)

    @contextlib.contextmanager
    def no_sync(self) -> Iterator[None]:
        """Inside, backward keeps the gradients unsharded and local; the first backward after
        it reduces their sum."""
        units = self._units()
        old = [u._handle.sync_grads for u in units]
        for u in units:
            u._handle.sync_grads = False
        try:
            yield
        finally:
            for u, o in zip(units, old, strict=True):
                u._handle.sync_grads = o

    # ---------------------------------------------------------------- full parameters
    @contextlib.contextmanager
    def summon_full_params(
        self,
        module: Module | None = None,
        recurse: bool = True,
        writeback: bool = True,
        rank0_only: bool = False,
        offload_to_cpu: bool = False,
        with_grads: bool = False,
    ) -> Iterator[None]:
        """Inside, every unit's original parameters are full Parameters under their names
        (``named_parameters()`` shows them); with ``writeback`` changes go back to the shards."""
        root = module if module is not None else self
        units = [u for u in root.modules() if isinstance(u, FullyShardedDataParallel)]
        if not recurse:
            units = units[:1]
        saved: list[tuple[FlatEntry, Any]] = []
        from mpdist.nn import Parameter

        fulls = []
        for u in units:
            h = u._handle
            full = h.gather()
            fulls.append(full)
            for e in h.entries:
                saved.append((e, e.module._parameters.get(e.name)))
                e.module._parameters[e.name] = Parameter(
                    full[e.offset : e.offset + e.numel].reshape(e.shape)
                )
        try:
            yield
        finally:
            for e, old in saved:
                if old is None:
                    del e.module._parameters[e.name]
                else:
                    e.module._parameters[e.name] = old
            for u, full in zip(units, fulls, strict=True):
                h = u._handle
                if writeback:
                    lo = h.rank * h.shard_size
                    h.flat_param.data[...] = full[lo : lo + h.shard_size]
                if not h.armed:
                    h.free()

    # ---------------------------------------------------------------- gradients
    def clip_grad_norm_(self, max_norm: float, norm_type: float = 2.0) -> Tensor:
        """Scale every gradient so that their joint norm is at most ``max_norm``; returns the
        norm before clipping (computed over the shards with one all-reduce)."""
        handles = [u._handle for u in self._units()]
        grads = [h.flat_param.grad.data for h in handles if h.flat_param.grad is not None]
        norm_type = float(norm_type)
        sharded = self._groups.sharded
        if norm_type == float("inf"):
            local = np.array([max((np.abs(g).max() for g in grads if g.size), default=0.0)])
            if sharded:
                dist.all_reduce(local, op=ReduceOp.MAX, group=self._groups.shard)
            total = float(local[0])
        else:
            local = np.array([sum(float((np.abs(g) ** norm_type).sum()) for g in grads)])
            if sharded:
                dist.all_reduce(local, group=self._groups.shard)
            total = float(local[0]) ** (1.0 / norm_type)
        coef = max_norm / (total + 1e-6)
        if coef < 1:
            for g in grads:
                g *= coef
        return Tensor(np.array(total))

    # ---------------------------------------------------------------- state dicts
    @staticmethod
    @contextlib.contextmanager
    def state_dict_type(
        module: Module,
        state_dict_type: StateDictType,
        state_dict_config: StateDictConfig | None = None,
        optim_state_dict_config: Any = None,
    ) -> Iterator[None]:
        """Inside, ``state_dict()`` / ``load_state_dict()`` of every FSDP unit in ``module``
        use ``state_dict_type``."""
        units = [m for m in module.modules() if isinstance(m, FullyShardedDataParallel)]
        old = [(u._state_dict_type, u._state_dict_config) for u in units]
        for u in units:
            u._state_dict_type = state_dict_type
            u._state_dict_config = state_dict_config or (
                FullStateDictConfig()
                if state_dict_type == StateDictType.FULL_STATE_DICT
                else StateDictConfig()
            )
        try:
            yield
        finally:
            for u, (t, c) in zip(units, old, strict=True):
                u._state_dict_type, u._state_dict_config = t, c

    def state_dict(
        self,
        *args: Any,
        destination: dict[str, Any] | None = None,
        prefix: str = "",
        keep_vars: bool = False,
    ) -> dict[str, Any]:
        """The unwrapped model's keys: whole parameters as Tensors (FULL_STATE_DICT; with
        ``rank0_only`` the other ranks get nothing), or ``Shard(0)`` DTensors of each
        parameter (SHARDED_STATE_DICT); buffers as Tensors."""
        from mpdist.fsdp._state_dict import full_state_dict, sharded_state_dict

        if args:  # torch's deprecated positional order, as Module.state_dict takes it
            destination = args[0] if destination is None else destination
            prefix = args[1] if len(args) > 1 and prefix == "" else prefix
        if self._state_dict_type == StateDictType.SHARDED_STATE_DICT:
            sd = sharded_state_dict(self)
        else:
            sd = full_state_dict(self, self._state_dict_config)
        if destination is not None:
            destination.update({prefix + k: v for k, v in sd.items()})
            return destination
        return {prefix + k: v for k, v in sd.items()} if prefix else sd

    def load_state_dict(
        self, state_dict: Mapping[str, Any], strict: bool = True, assign: bool = False
    ) -> Any:
        """Load a full or sharded state dict (keys of the unwrapped model), in place."""
        from mpdist.fsdp._state_dict import load_into

        if assign:
            raise NotImplementedError(
                "load_state_dict(assign=True) of a FullyShardedDataParallel model: its "
                "parameters live in the flat shards; load in place (assign=False)"
            )
        return load_into(self, dict(state_dict), strict)

    def extra_repr(self) -> str:
        h = self._handle
        return f"{self.sharding_strategy.name}, numel={h.numel}, shard={h.shard_size}"


def _own_modules(module: Module, prefix: str) -> Iterator[tuple[Module, str]]:
    """``module`` and its submodules, not descending into nested FSDP units."""
    yield module, prefix
    for name, child in module._modules.items():
        if child is not None and not isinstance(child, FullyShardedDataParallel):
            yield from _own_modules(child, prefix + name + ".")


def _on_leaf_grad(h: FlatParamHandle) -> None:
    if not h.armed:
        return
    if h.pending == len(h.leaves):
        queue_outer_callback(lambda: _finish(h))
    h.pending -= 1
    if h.pending == 0:
        h.reduce_grad()
        h.free()


def _finish(h: FlatParamHandle) -> None:
    """End of backward: reduce a unit some of whose parameters got no gradient, wait for the
    reductions in flight, drop the full array."""
    if h.armed:
        h.reduce_grad()
    h.wait_reduce()
    h.free()


def _register_pre_backward(out: Any, h: FlatParamHandle) -> None:
    """Gather the unit's parameters again when the gradient reaches its outputs."""
    fired = [False]

    def hook(g: Any) -> None:
        if not fired[0]:
            fired[0] = True
            with no_grad():
                h.refill()

    for t in _tensors(out):
        if t.requires_grad:
            t.register_hook(hook)


def _tensors(x: Any) -> Iterator[Tensor]:
    if isinstance(x, Tensor):
        yield x
    elif isinstance(x, dict):
        for v in x.values():
            yield from _tensors(v)
    elif isinstance(x, (list, tuple)):
        for v in x:
            yield from _tensors(v)


__all__ = ["FullyShardedDataParallel"]
