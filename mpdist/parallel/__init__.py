"""Data parallelism on mpdist: ``DistributedDataParallel``, composable ``replicate``,
communication hooks (``mpdist.parallel.hooks``) and differentiable collectives
(``mpdist.parallel.functional``)."""

from __future__ import annotations

from mpdist.parallel import functional, hooks
from mpdist.parallel.ddp import DistributedDataParallel
from mpdist.parallel.reducer import GradBucket
from mpdist.parallel.replicate import replicate

__all__ = ["DistributedDataParallel", "GradBucket", "functional", "hooks", "replicate"]
