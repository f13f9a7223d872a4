"""mpdist.tensor.parallel: tensor parallelism on DTensor, torch.distributed.tensor.parallel's counterpart.

``parallelize_module(module, mesh, plan)`` with the styles ``ColwiseParallel``,
``RowwiseParallel``, ``SequenceParallel``, ``PrepareModuleInput``, ``PrepareModuleOutput``
and ``PrepareModuleInputOutput``. Layout: ``style`` (the styles), ``api``
(``parallelize_module``: plans and their wildcard paths).
"""

from __future__ import annotations

from mpdist.tensor.parallel.api import parallelize_module
from mpdist.tensor.parallel.style import (
    ColwiseParallel,
    ParallelStyle,
    PrepareModuleInput,
    PrepareModuleInputOutput,
    PrepareModuleOutput,
    RowwiseParallel,
    SequenceParallel,
)

__all__ = [
    "ColwiseParallel",
    "ParallelStyle",
    "PrepareModuleInput",
    "PrepareModuleInputOutput",
    "PrepareModuleOutput",
    "RowwiseParallel",
    "SequenceParallel",
    "parallelize_module",
]
