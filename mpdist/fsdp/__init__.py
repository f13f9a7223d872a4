"""Fully sharded data parallelism: ``FullyShardedDataParallel`` (FSDP1) and its options.

``mpdist.fsdp`` is ``torch.distributed.fsdp``'s counterpart. The enums and option records
below are shared by ``FullyShardedDataParallel`` and ``fully_shard``.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass
from typing import Any


class ShardingStrategy(enum.Enum):
    """How a unit's parameters, gradients and optimizer state are split across ranks."""

    FULL_SHARD = enum.auto()  # parameters gathered for forward and again for backward
    SHARD_GRAD_OP = enum.auto()  # parameters kept gathered from forward until backward
    NO_SHARD = enum.auto()  # every rank keeps everything; gradients all-reduced (DDP)
    HYBRID_SHARD = enum.auto()  # FULL_SHARD within a group, replicated across groups
    _HYBRID_SHARD_ZERO2 = enum.auto()  # SHARD_GRAD_OP within, replicated across


class StateDictType(enum.Enum):
    """What ``state_dict()`` of a ``FullyShardedDataParallel`` model returns."""

    FULL_STATE_DICT = enum.auto()
    LOCAL_STATE_DICT = enum.auto()
    SHARDED_STATE_DICT = enum.auto()


class BackwardPrefetch(enum.Enum):
    """When the next unit's parameters are gathered during backward."""

    BACKWARD_PRE = enum.auto()
    BACKWARD_POST = enum.auto()


@dataclass
class MixedPrecision:
    """Dtypes for parameters, gradient reduction and buffers (``None``: keep the parameter's)."""

    param_dtype: Any = None
    reduce_dtype: Any = None
    buffer_dtype: Any = None
    keep_low_precision_grads: bool = False
    cast_forward_inputs: bool = False
    cast_root_forward_inputs: bool = True


@dataclass
class CPUOffload:
    """Accepted for torch's signature; parameters already live on the CPU, so it changes nothing."""

    offload_params: bool = False


@dataclass
class StateDictConfig:
    """Options of a state-dict type (``offload_to_cpu`` is accepted and changes nothing)."""

    offload_to_cpu: bool = False


@dataclass
class FullStateDictConfig(StateDictConfig):
    """FULL_STATE_DICT options: ``rank0_only`` gives the full tensors to rank 0 only."""

    rank0_only: bool = False


@dataclass
class ShardedStateDictConfig(StateDictConfig):
    """SHARDED_STATE_DICT options."""


@dataclass
class LocalStateDictConfig(StateDictConfig):
    """LOCAL_STATE_DICT options."""


# the classes below import the enums above
from mpdist.fsdp._fully_shard import (  # noqa: E402
    CPUOffloadPolicy,
    FSDPModule,
    MixedPrecisionPolicy,
    OffloadPolicy,
    fully_shard,
)
from mpdist.fsdp._storage import live_unsharded_bytes, peak_unsharded_bytes  # noqa: E402
from mpdist.fsdp.fully_sharded_data_parallel import FullyShardedDataParallel  # noqa: E402

__all__ = [
    "BackwardPrefetch",
    "FullyShardedDataParallel",
    "live_unsharded_bytes",
    "peak_unsharded_bytes",
    "CPUOffload",
    "CPUOffloadPolicy",
    "FSDPModule",
    "MixedPrecisionPolicy",
    "OffloadPolicy",
    "fully_shard",
    "FullStateDictConfig",
    "LocalStateDictConfig",
    "MixedPrecision",
    "ShardedStateDictConfig",
    "ShardingStrategy",
    "StateDictConfig",
    "StateDictType",
]
