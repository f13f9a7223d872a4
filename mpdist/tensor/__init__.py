"""mpdist.tensor: distributed tensors (DTensor) over a DeviceMesh, torch.distributed.tensor's counterpart.

``DTensor`` (an ``mpdist.autograd.Tensor`` whose data is this rank's piece),
``distribute_tensor``, ``distribute_module``, the placements ``Shard``, ``Replicate`` and
``Partial``, and ``DeviceMesh`` / ``init_device_mesh`` re-exported from ``mpdist.device_mesh``.
Layout: ``placement_types`` (placements and the sharding arithmetic), ``_redistribute``
(pieces from one placement to another, with the collectives), ``_grad`` (a DTensor's
gradient in the backward pass), ``_api`` (DTensor, from_local / to_local / redistribute,
distribute_*), ``_ops`` (the operators' sharding rules).
"""

from __future__ import annotations

import importlib
from typing import Any

from mpdist.tensor import _ops as _ops  # registers the sharding rules
from mpdist.tensor._api import DTensor, distribute_module, distribute_tensor
from mpdist.tensor.placement_types import Partial, Placement, Replicate, Shard

__all__ = [
    "DTensor",
    "DeviceMesh",
    "Partial",
    "Placement",
    "Replicate",
    "Shard",
    "distribute_module",
    "distribute_tensor",
    "init_device_mesh",
]


def __getattr__(name: str) -> Any:
    # DeviceMesh and init_device_mesh are mpdist.device_mesh's, looked up when first asked
    # for (torch.distributed.tensor re-exports them too).
    if name in ("DeviceMesh", "init_device_mesh"):
        return getattr(importlib.import_module("mpdist.device_mesh"), name)
    raise AttributeError(f"module 'mpdist.tensor' has no attribute {name!r}")
