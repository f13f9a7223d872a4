"""Auto-wrap policies: which submodules ``FullyShardedDataParallel`` makes units of their own."""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any

from mpdist.nn import Module


class ModuleWrapPolicy:
    """Wrap every submodule whose class is one of ``module_classes``."""

    def __init__(self, module_classes: Iterable[type[Module]]) -> None:
        self.module_classes = tuple(module_classes)

    def __call__(self, module: Module, recurse: bool, nonwrapped_numel: int) -> bool:
        return recurse or isinstance(module, self.module_classes)


def size_based_auto_wrap_policy(
    module: Module,
    recurse: bool,
    nonwrapped_numel: int,
    min_num_params: int = int(1e8),
    force_leaf_modules: set[type[Module]] | None = None,
    exclude_wrap_modules: set[type[Module]] | None = None,
) -> bool:
    """Wrap a submodule once the parameters not yet in a unit below it number at least
    ``min_num_params`` (pass it with ``functools.partial``)."""
    if recurse:
        return not isinstance(module, tuple(force_leaf_modules or ()))
    return nonwrapped_numel >= min_num_params and not isinstance(
        module, tuple(exclude_wrap_modules or ())
    )


def lambda_auto_wrap_policy(
    module: Module, recurse: bool, nonwrapped_numel: int, lambda_fn: Callable[[Module], bool]
) -> bool:
    """Wrap the submodules for which ``lambda_fn(module)`` is true."""
    return recurse or bool(lambda_fn(module))


def apply_policy(
    module: Module, policy: Any, wrap: Callable[[Module], Module], is_root: bool = True
) -> int:
    """Replace, bottom-up, each submodule the policy selects by ``wrap(submodule)``; return
    the number of parameters of ``module`` left outside the new units."""
    if isinstance(policy, ModuleWrapPolicy) or callable(policy):
        pass
    else:
        raise TypeError(f"auto_wrap_policy must be callable, got {type(policy).__name__}")
    from mpdist.fsdp.fully_sharded_data_parallel import FullyShardedDataParallel

    left = sum(p.data.size for p in module._parameters.values() if p is not None)
    for name, child in list(module._modules.items()):
        if child is None or isinstance(child, FullyShardedDataParallel):
            continue
        if not policy(module=child, recurse=True, nonwrapped_numel=0):
            left += sum(p.data.size for p in child.parameters())
            continue
        child_left = apply_policy(child, policy, wrap, is_root=False)
        if policy(module=child, recurse=False, nonwrapped_numel=child_left):
            module._modules[name] = wrap(child)
        else:
            left += child_left
    return left
