"""``replicate``: composable DDP. The module keeps its class and its ``state_dict`` keys;
forward hooks drive a ``DistributedDataParallel`` built lazily, on the first forward, over
the parameters outside ``ignored_modules`` (and outside submodules replicated on their own).
"""

from __future__ import annotations

import weakref
from collections.abc import Iterable
from typing import Any

from mpdist.autograd.device import device
from mpdist.nn import Module, ParameterList
from mpdist.parallel.ddp import DistributedDataParallel

_STATES: weakref.WeakKeyDictionary[Module, _ReplicateState] = weakref.WeakKeyDictionary()


class _ReplicateState:
    """Per-module replicate state; ``_ddp`` is None until the first forward, which also sets
    ``_ddp_weakref`` (torch's tests read the DDP object through it)."""

    _ddp_weakref: weakref.ref[DistributedDataParallel]

    def __init__(
        self, module: Module, ignored_modules: set[Module], ddp_kwargs: dict[str, Any]
    ) -> None:
        self.module = weakref.ref(module)
        self.ignored_modules = ignored_modules
        self.ddp_kwargs = ddp_kwargs
        self._ddp: DistributedDataParallel | None = None
        self._param_list: ParameterList | None = None
        self._param_names: list[str] = []

    def _collect(
        self, module: Module, prefix: str, out: list[tuple[str, Any]], seen: set[int]
    ) -> None:
        if module in self.ignored_modules:
            return
        if module is not self.module() and module in _STATES:
            return  # replicated on its own
        if module is not self.module() and "_fsdp_state" in module.__dict__:
            return  # fully_shard manages its parameters (mpdist.fsdp._fully_shard)
        for name, p in module._parameters.items():
            if p is not None and p.requires_grad and id(p) not in seen:
                seen.add(id(p))
                out.append((prefix + name, p))
        for name, child in module._modules.items():
            if child is not None:
                self._collect(child, f"{prefix}{name}.", out, seen)

    def lazy_init(self) -> None:
        """Build the DDP instance over this module's replicated parameters (once)."""
        if self._ddp is not None:
            return
        module = self.module()
        assert module is not None
        named: list[tuple[str, Any]] = []
        self._collect(module, "", named, set())
        self._param_names = [n for n, _ in named]
        self._param_list = ParameterList([p for _, p in named])
        self._ddp = DistributedDataParallel(self._param_list, **self.ddp_kwargs)
        self._ddp_weakref = weakref.ref(self._ddp)

    def pre_forward(self, module: Module, args: tuple, kwargs: dict) -> tuple[tuple, dict]:
        self.lazy_init()
        assert self._ddp is not None
        return self._ddp._pre_forward(*args, **kwargs)

    def post_forward(self, module: Module, args: tuple, output: Any) -> Any:
        assert self._ddp is not None
        return self._ddp._post_forward(output)


def replicate(
    module: Module,
    device_id: int | device | None = None,
    ignored_modules: Iterable[Module] | None = None,
    **kwargs: Any,
) -> Module:
    """Make ``module`` data parallel in place and return it.

    ``kwargs`` go to ``DistributedDataParallel`` (``process_group``, ``bucket_cap_mb``,
    ``find_unused_parameters``, ...). ``device_id`` is None, a CPU device (both: DDP gets
    ``device_ids=None``) or an int, which DDP gets as ``device_ids=[device_id]`` and refuses at
    the first forward, as torch's does for a CPU module.
    """
    if not isinstance(module, Module):
        raise TypeError(f"replicate() expects an mpdist.nn.Module, got {type(module).__name__}")
    if module in _STATES:
        raise RuntimeError(
            "Each distinct composable distributed API can only be applied to a module once. "
            f"replicate has already been applied to {type(module).__name__}."
        )
    if device_id is not None and (
        isinstance(device_id, bool) or not isinstance(device_id, (int, device))
    ):
        # torch's text first: ported tests match it with assertRaisesRegex.
        raise RuntimeError(
            f"Expected device_id to be int or torch.device, but got {type(device_id)} "
            "(torch.device is mpdist.device here: mpdist runs on the CPU)"
        )
    if "device_ids" in kwargs:
        raise RuntimeError("replicate() takes device_id, not DistributedDataParallel's device_ids")
    ignored = set(ignored_modules or ())
    for m in ignored:
        if not isinstance(m, Module):
            raise TypeError(f"ignored_modules must contain Modules, got {type(m).__name__}")
    # Everything below an ignored module is ignored too.
    ignored = {sub for m in ignored for sub in m.modules()}
    kwargs["device_ids"] = (
        None if device_id is None or isinstance(device_id, device) else [device_id]
    )
    state = _ReplicateState(module, ignored, dict(kwargs))
    _STATES[module] = state
    module.register_forward_pre_hook(state.pre_forward, with_kwargs=True)
    module.register_forward_hook(state.post_forward)
    return module


def _state(module: Module) -> _ReplicateState | None:
    """The replicate state of ``module`` (None if ``replicate`` was not applied)."""
    return _STATES.get(module)


replicate.state = _state  # type: ignore[attr-defined]

__all__ = ["replicate"]
