"""``parallelize_module``: apply a tensor-parallel plan (styles keyed by submodule path) to a module.

``torch.distributed.tensor.parallel.parallelize_module`` -> ``mpdist.tensor.parallel``. A
plan is one ``ParallelStyle`` (applied to the module itself) or a dict from paths to
styles. A path is dotted (``"layers.0.attn"``), each part matched against the names of the
children at that level with shell wildcards (``fnmatch``: ``"layers.*.mlp"``,
``"net[12]"``); ``""`` names the module itself. A key that matches nothing is a warning,
as in torch, and is skipped.
"""

from __future__ import annotations

import warnings
from collections.abc import Mapping
from fnmatch import fnmatch
from typing import Any

from mpdist.nn.module import Module
from mpdist.tensor.parallel.style import ParallelStyle

__all__ = ["parallelize_module"]


def parallelize_module(
    module: Module,
    device_mesh: Any = None,
    parallelize_plan: ParallelStyle | Mapping[str, ParallelStyle] | None = None,
    *,
    src_data_rank: int | None = 0,
) -> Module:
    """Shard ``module`` (in place; it is also returned) by ``parallelize_plan`` over
    ``device_mesh``, a 1-D mesh (slice a 2-D one: ``mesh["tp"]``).

    ``src_data_rank`` is the mesh rank whose parameter values every rank gets (scattered
    or broadcast, so the sharded model equals the one rank 0 built); ``None`` keeps each
    rank's own values. Every rank calls it with the same plan, in the same order.
    """
    if parallelize_plan is None:
        warnings.warn(
            "No parallelize_plan is provided and auto-parallel is not supported at the "
            "moment, so this parallelize_module call will do nothing.",
            stacklevel=2,
        )
        return module
    if device_mesh is None:
        raise RuntimeError(
            "parallelize_module needs a device_mesh: mpdist has no current-mesh context, pass "
            "one (init_device_mesh('cpu', (n,)))"
        )
    if isinstance(parallelize_plan, ParallelStyle):
        parallelize_plan.src_data_rank = src_data_rank
        return parallelize_plan._apply(module, device_mesh)
    if not isinstance(parallelize_plan, Mapping):
        raise TypeError(
            "Expect Union[ParallelStyle, Dict[str, ParallelStyle]] for parallelize_plan, "
            f"{type(parallelize_plan)} found!"
        )
    for path, style in parallelize_plan.items():
        if path == "":
            parallelize_module(module, device_mesh, style, src_data_rank=src_data_rank)
            continue
        head, _, rest = path.partition(".")
        matched = [child for name, child in module.named_children() if fnmatch(name, head)]
        if not matched:
            warnings.warn(
                f"Parallelize plan key '{path}' could not be resolved: no submodule matching "
                f"token '{head}' in module {module}, skipping this plan entry.",
                stacklevel=2,
            )
            continue
        for child in matched:
            plan: Any = {rest: style} if rest else style
            parallelize_module(child, device_mesh, plan, src_data_rank=src_data_rank)
    return module
