"""``fully_shard`` (FSDP2): a module's parameters become ``Shard(0)`` DTensors, gathered
around its forward and backward by hooks; the module's class becomes ``FSDP<Class>``.

Each call makes one unit of communication (``_fsdp_param.FSDPParamGroup``) over the
module's parameters that no ``fully_shard`` call on a submodule took already, so users call
it on the submodules first and on the root last. The hooks:

- forward pre-hook: gather the unit (wait for its prefetch), put the unsharded parameters
  on the modules, and prefetch the unit that ran next in the previous forward;
- forward hook: free the unit again (``reshard_after_forward``; never the root's, which
  backward needs first) and hook the outputs' gradients;
- an output's gradient hook (pre-backward): gather the unit again and prefetch the unit
  that ran before it in forward;
- the unsharded parameters' post-accumulate-grad hooks: once the unit's gradients are all
  in, reduce-scatter them into the DTensor pieces' ``.grad`` and free the unit;
- a callback when the whole backward is done: finish what is in flight, free every unit.

Prefetching is the overlap of item 3 and follows DDP's one measured choice
(``parallel.reducer.communication_thread_pays``): with a spare core the next unit's
all-gather and each reduce-scatter run on the backend's communication thread while this
one computes; without one they run on the compute thread when needed.
"""

from __future__ import annotations

import contextlib
from collections import OrderedDict
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np

from mpdist import distributed as dist
from mpdist.autograd import Tensor
from mpdist.autograd.dtypes import get_default_dtype
from mpdist.autograd.grad_mode import is_grad_enabled
from mpdist.autograd.graph import queue_outer_callback
from mpdist.fsdp._fsdp_param import FSDPParam, FSDPParamGroup, shard_param
from mpdist.fsdp._misuse import OutsideForward, check_same_across_ranks, show_guard
from mpdist.nn.module import Module
from mpdist.parallel.reducer import communication_thread_pays
from mpdist.tensor._api import DTensor

__all__ = ["CPUOffloadPolicy", "FSDPModule", "MixedPrecisionPolicy", "OffloadPolicy", "fully_shard"]


@dataclass(frozen=True)
class MixedPrecisionPolicy:
    """Dtypes of ``fully_shard``: ``param_dtype`` for the gathered parameters (and forward),
    ``reduce_dtype`` for the gradient reduce-scatter (default: ``param_dtype``),
    ``output_dtype`` for forward outputs; ``cast_forward_inputs`` casts floating inputs to
    ``param_dtype``. ``None`` keeps the parameters' dtype."""

    param_dtype: Any = None
    reduce_dtype: Any = None
    output_dtype: Any = None
    cast_forward_inputs: bool = True


@dataclass
class OffloadPolicy:
    """No offloading (torch's default)."""


@dataclass
class CPUOffloadPolicy(OffloadPolicy):
    """Accepted for torch's signature: parameters live on the CPU already, so it changes nothing."""

    pin_memory: bool = True


def _dtype(d: Any) -> np.dtype | None:
    return None if d is None else np.dtype(d)


class _FSDPState:
    """What ``fully_shard`` keeps for one module."""

    def __init__(
        self,
        module: Module,
        group: FSDPParamGroup,
        mesh: Any,
        reshard_after_forward: bool,
        mp_policy: MixedPrecisionPolicy,
    ) -> None:
        self.module = module
        self.group = group
        self.mesh = mesh
        self.reshard_after_forward = reshard_after_forward
        self.mp_policy = mp_policy
        self.requires_gradient_sync = True
        self.is_root: bool | None = None
        self.root: _FSDPState = self
        self.overlap = communication_thread_pays(dist.get_world_size())
        # Root only: every state of the tree, the order units ran in, per-backward flags.
        self.states: list[_FSDPState] = []
        self.order: list[_FSDPState] = []
        self.prev_order: list[_FSDPState] = []
        self.callback_queued = False
        self.backward_started = False
        self.guarding = False  # root: its forward is running, resharded units show guards
        self.arrived = 0
        for p in group.params:
            assert p.unsharded is not None
            if p.unsharded.requires_grad:
                p.hooks.append(p.unsharded.register_post_accumulate_grad_hook(self._grad_in))

    # ------------------------------------------------------------------ lazy init
    def _lazy_init(self) -> None:
        if self.is_root is not None:
            return
        self.is_root = True
        self.states = [s for m in self.module.modules() if (s := _state(m)) is not None]
        for s in self.states:
            if s is not self:
                s.is_root = False
                s.root = self

    def _neighbour(self, step: int) -> _FSDPState | None:
        """The unit that ran ``step`` places after this one in forward: the previous
        forward's order while running forward, this one's in backward."""
        order = self.root.order if step < 0 else self.root.prev_order
        if self not in order:
            return None
        i = order.index(self) + step
        return order[i] if 0 <= i < len(order) else None

    def _prefetch(self, step: int) -> None:
        if not self.overlap:
            return  # no spare core: the all-gather runs when the unit needs it
        nxt = self._neighbour(step)
        if nxt is not None:
            nxt.group.start_unshard(async_op=True)

    # ------------------------------------------------------------------ forward
    def pre_forward(self, module: Module, args: tuple, kwargs: dict) -> tuple[tuple, dict]:
        self._lazy_init()
        root = self.root
        if self.is_root:
            root.prev_order = root.order or root.prev_order
            root.order = []
            for s in root.states:
                s.group.wait_reduce()  # a no-sync step never waited
        root.order.append(self)
        self.group.unshard()
        self.group.use_unsharded()
        self._show_guards(False)
        self._prefetch(+1)
        mp = self.mp_policy
        if mp.cast_forward_inputs and mp.param_dtype is not None:
            dtype = np.dtype(mp.param_dtype)
            args, kwargs = _cast((args, kwargs), dtype)
        return args, kwargs

    def post_forward(self, module: Module, args: tuple, output: Any) -> Any:
        if self.reshard_after_forward and not self.is_root:
            self.group.reshard()
            self._show_guards(self.root.guarding)
        if self.mp_policy.output_dtype is not None:
            output = _cast(output, np.dtype(self.mp_policy.output_dtype))
        if is_grad_enabled():
            for t in _tensors(output):
                if t.requires_grad:
                    t.register_hook(self._pre_backward)
        return output

    # ------------------------------------------------------------------ misuse
    def guard_all(self, on: bool) -> None:
        """Root only: while its forward runs, every resharded unit's parameters show a guard
        (``_misuse``) on their modules; ``on=False`` takes the guards away."""
        self.guarding = on
        names = {id(m): n for n, m in self.module.named_modules()} if on else {}
        for s in self.states:
            for p in s.group.params:
                fqn = f"{names.get(id(p.module), '?')}.{p.name}".lstrip(".")
                p.guard = OutsideForward(fqn, "fully_shard", _REMEDY) if on else None
            s._show_guards(on and not s.group.unsharded)

    def _show_guards(self, on: bool) -> None:
        for p in self.group.params:
            show_guard(p.module, p.name, p.guard if on else None)

    # ------------------------------------------------------------------ backward
    def _pre_backward(self, grad: Any) -> None:
        root = self.root
        if not root.callback_queued:
            root.callback_queued = True
            queue_outer_callback(root._finish_backward)
        if self.backward_started:
            return
        self.backward_started = True
        self.group.unshard()
        self.group.use_unsharded()
        self._prefetch(-1)

    def _grad_in(self, param: Tensor) -> None:
        self.arrived += 1
        needed = sum(
            1 for p in self.group.params if p.unsharded is not None and p.unsharded.requires_grad
        )
        if self.arrived == needed:
            self._post_backward()

    def _post_backward(self) -> None:
        self.arrived = 0
        if self.requires_gradient_sync and self.group.has_grads():
            self.group.start_reduce(async_op=self.overlap)
        self.group.reshard()

    def _finish_backward(self) -> None:
        for s in self.states:
            if s.arrived:  # some of its parameters got no gradient
                s._post_backward()
            s.group.wait_reduce()
            s.group.reshard()
            s.backward_started = False
        self.callback_queued = False


def _state(module: Module) -> _FSDPState | None:
    return module.__dict__.get("_fsdp_state")


def _tensors(out: Any) -> Iterator[Tensor]:
    if isinstance(out, Tensor):
        yield out
    elif isinstance(out, (list, tuple)):
        for o in out:
            yield from _tensors(o)
    elif isinstance(out, dict):
        for o in out.values():
            yield from _tensors(o)


def _cast(x: Any, dtype: np.dtype) -> Any:
    if isinstance(x, Tensor) and not isinstance(x, DTensor):
        return x.astype(dtype) if np.issubdtype(x.dtype, np.floating) else x
    if isinstance(x, tuple):
        return tuple(_cast(o, dtype) for o in x)
    if isinstance(x, list):
        return [_cast(o, dtype) for o in x]
    if isinstance(x, dict):
        return {k: _cast(v, dtype) for k, v in x.items()}
    return x


class FSDPModule:
    """The mixin of every module ``fully_shard`` was applied to (its class becomes
    ``FSDP<Class>``, a subclass of this and of the old class)."""

    def _fsdp(self) -> _FSDPState:
        state = _state(self)  # type: ignore[arg-type]
        assert state is not None
        return state

    def _subtree(self, recurse: bool) -> list[_FSDPState]:
        if not recurse:
            return [self._fsdp()]
        mods: Iterable[Module] = self.modules()  # type: ignore[attr-defined]
        return [s for m in mods if (s := _state(m)) is not None]

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        state = self._fsdp()
        state._lazy_init()
        if not state.is_root:
            return super().__call__(*args, **kwargs)  # type: ignore[misc]
        state.guard_all(True)
        try:
            return super().__call__(*args, **kwargs)  # type: ignore[misc]
        finally:
            state.guard_all(False)

    def unshard(self, async_op: bool = False) -> UnshardHandle | None:
        """Gather this unit's parameters now (``async_op``: return a handle to wait on).
        The module's parameters become the unsharded ones until ``reshard``."""
        group = self._fsdp().group
        group.start_unshard(async_op)
        handle = UnshardHandle(group)
        if not async_op:
            handle.wait()
            return None
        return handle

    def reshard(self) -> None:
        """Free this unit's unsharded parameters; the module holds the DTensor pieces."""
        self._fsdp().group.reshard()

    def set_requires_gradient_sync(
        self, requires_gradient_sync: bool, *, recurse: bool = True
    ) -> None:
        """Off: backward keeps each unit's gradients unsharded and accumulating on this rank
        (no communication); the first backward with it on again reduce-scatters the total."""
        for s in self._subtree(recurse):
            s.requires_gradient_sync = requires_gradient_sync

    def set_reshard_after_forward(self, reshard_after_forward: bool, recurse: bool = True) -> None:
        """Whether the units free their parameters after forward (and gather again in backward)."""
        if not isinstance(reshard_after_forward, bool):
            raise ValueError(
                f"reshard_after_forward should be a bool, got {type(reshard_after_forward)}"
            )
        for s in self._subtree(recurse):
            s.reshard_after_forward = reshard_after_forward

    def state_dict(
        self,
        *args: Any,
        destination: dict[str, Any] | None = None,
        prefix: str = "",
        keep_vars: bool = False,
    ) -> dict[str, Any]:
        """As ``Module.state_dict``, with the sharded parameters as DTensors (detached,
        sharing the pieces' memory, as torch's ``fully_shard`` state dict):
        ``full_tensor()`` gives the values. A unit still gathered (the root between forward
        and backward) shows its sharded parameters too."""
        with self._sharded_registered():
            return super().state_dict(  # type: ignore[misc]
                *args, destination=destination, prefix=prefix, keep_vars=keep_vars
            )

    @contextlib.contextmanager
    def _sharded_registered(self) -> Iterator[None]:
        """Inside, every unit of the subtree has its sharded DTensor parameters registered
        (a gathered unit's unsharded ones come back after)."""
        registered = [
            (p.module._parameters, p.name, p.module._parameters[p.name])
            for s in self._subtree(True)
            for p in s.group.params
        ]
        for s in self._subtree(True):
            s.group.use_sharded()
        try:
            yield
        finally:
            for store, name, value in registered:
                store[name] = value

    def load_state_dict(
        self, state_dict: Mapping[str, Any], strict: bool = True, assign: bool = False
    ) -> Any:
        """Load DTensor pieces placed like the parameters, or full values (each rank keeps
        its ``Shard(0)`` piece of them), in place."""
        if assign:
            raise NotImplementedError(
                "load_state_dict(assign=True) of a fully_shard module: the units keep their "
                "sharded parameters; load in place (assign=False)"
            )
        with self._sharded_registered():
            own = Module.state_dict(self, keep_vars=True)  # type: ignore[arg-type]
            local: dict[str, Any] = OrderedDict()
            for k, v in state_dict.items():
                target = own.get(k)
                if isinstance(target, DTensor):
                    local[k] = DTensor(_piece_for(k, target, v), target._spec)
                else:
                    local[k] = v
            return super().load_state_dict(local, strict)  # type: ignore[misc]


def _piece_for(key: str, target: DTensor, value: Any) -> np.ndarray:
    """This rank's piece of ``value`` for the DTensor parameter ``target``."""
    if isinstance(value, DTensor):
        if value.placements != target.placements or value.shape != target.shape:
            raise RuntimeError(
                f"load_state_dict: {key} is a DTensor of shape {value.shape} placed "
                f"{value.placements}; the parameter is {target.shape} placed {target.placements}"
            )
        return value.data
    full = np.asarray(value.data if isinstance(value, Tensor) else value)
    if full.shape != target.shape:
        raise RuntimeError(
            f"size mismatch for {key}: copying a param with shape {full.shape} from "
            f"checkpoint, the shape in current model is {target.shape}."
        )
    layout = target._spec.layout()
    index = tuple(slice(o, o + n) for o, n in zip(layout.offset, layout.shape, strict=True))
    return full[index]


class UnshardHandle:
    """What ``FSDPModule.unshard(async_op=True)`` returns: ``wait()`` finishes the gather."""

    def __init__(self, group: FSDPParamGroup) -> None:
        self._group = group

    def wait(self) -> None:
        """Wait for the all-gather and put the unsharded parameters on the modules."""
        self._group.wait_unshard()
        self._group.use_unsharded()


_CLASSES: dict[type, type] = {}
_REMEDY = (
    "Call fully_shard on a module that contains every use of it (their common parent), or "
    "unshard() its unit first."
)


def _fsdp_class(cls: type) -> type:
    if issubclass(cls, FSDPModule):
        return cls
    if cls not in _CLASSES:
        _CLASSES[cls] = type(f"FSDP{cls.__name__}", (FSDPModule, cls), {})
    return _CLASSES[cls]


def _check_mesh(mesh: Any) -> Any:
    from mpdist.device_mesh import DeviceMesh, init_device_mesh

    if mesh is None:
        return init_device_mesh("cpu", (dist.get_world_size(),))
    if not isinstance(mesh, DeviceMesh):
        raise ValueError(f"fully_shard expects a DeviceMesh but got {type(mesh).__name__}")
    if mesh.ndim not in (1, 2):
        raise ValueError(f"fully_shard expects a 1D or 2D DeviceMesh but got {mesh}")
    if mesh.get_coordinate() is None:
        raise ValueError(f"fully_shard: this rank ({dist.get_rank()}) is not in the mesh {mesh}")
    return mesh


def _managed(module: Module, out: list[tuple[Module, str, Any]], seen: set[int], top: bool) -> None:
    """The parameters of ``module``'s tree that no earlier ``fully_shard`` call took."""
    if not top and _state(module) is not None:
        return
    for name, p in module._parameters.items():
        if p is not None and id(p) not in seen:
            seen.add(id(p))
            out.append((module, name, p))
    for child in module._modules.values():
        if child is not None:
            _managed(child, out, seen, False)


def fully_shard(
    module: Module,
    *,
    mesh: Any = None,
    reshard_after_forward: bool = True,
    mp_policy: MixedPrecisionPolicy | None = None,
    offload_policy: OffloadPolicy | None = None,
) -> Module:
    """Shard ``module``'s parameters (those no earlier call on a submodule took) as
    ``Shard(0)`` DTensors over ``mesh`` (default: a 1-D mesh over the world; a 2-D mesh is
    HSDP: shard on the last dimension, replicate on the first) and make the module one unit
    of communication: all-gathered before its forward, gradients reduce-scattered after its
    backward. A tensor-parallel parameter (a DTensor on ``mesh``'s sibling ``tp`` mesh) has
    its TP piece cut so, a DTensor on the (dp, tp) mesh (``_tp``). Returns ``module``, whose
    class is now ``FSDP<Class>``."""
    if not isinstance(module, Module):
        raise ValueError(f"fully_shard expects an mpdist.nn.Module, got {type(module).__name__}")
    if _state(module) is not None:
        raise RuntimeError(
            "Each distinct composable distributed API can only be applied to a module once. "
            f"fully_shard has already been applied to {type(module).__name__}."
        )
    if not isinstance(reshard_after_forward, bool):
        raise ValueError(
            f"reshard_after_forward should be a bool, got {type(reshard_after_forward)}"
        )
    if offload_policy is not None and not isinstance(offload_policy, OffloadPolicy):
        raise ValueError(f"offload_policy must be an OffloadPolicy, got {type(offload_policy)}")
    mp = mp_policy if mp_policy is not None else MixedPrecisionPolicy()
    mesh = _check_mesh(mesh)
    found: list[tuple[Module, str, Any]] = []
    _managed(module, found, set(), True)
    names = {id(m): n for n, m in module.named_modules()}
    # placements first: a tensor-parallel parameter on an unrelated mesh is the error to name
    params: list[FSDPParam] = [shard_param(m, n, p, mesh) for m, n, p in found]
    for d in range(mesh.ndim):  # every data-parallel rank must start from the same values
        check_same_across_ranks(
            [(f"{names[id(m)]}.{n}".lstrip("."), np.asarray(p.data)) for m, n, p in found],
            mesh.get_group(d),
            "fully_shard",
        )
    dtypes = {p.sharded.data.dtype for p in params}
    param_dtype = _dtype(mp.param_dtype)
    if param_dtype is None:
        if len(dtypes) > 1:
            raise ValueError(
                "fully_shard: one unit's parameters must share a dtype (or set "
                f"MixedPrecisionPolicy(param_dtype=...)), got {sorted(str(d) for d in dtypes)}"
            )
        param_dtype = dtypes.pop() if dtypes else np.dtype(get_default_dtype())
    reduce_dtype = _dtype(mp.reduce_dtype) or param_dtype
    shard_group = mesh.get_group(mesh.ndim - 1)
    replicate_group = mesh.get_group(0) if mesh.ndim == 2 else None
    group = FSDPParamGroup(params, shard_group, replicate_group, param_dtype, reduce_dtype)
    state = _FSDPState(module, group, mesh, reshard_after_forward, mp)
    module.__dict__["_fsdp_state"] = state
    # The fresh storage has no values yet; outside forward the module holds the pieces.
    group.use_sharded()
    if group.storage is not None:
        group.storage.free()
    group.unsharded = False
    module.register_forward_pre_hook(state.pre_forward, with_kwargs=True)
    module.register_forward_hook(state.post_forward)
    module.__class__ = _fsdp_class(type(module))
    return module
