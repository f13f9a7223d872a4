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

from mpdist.tensor import _ops as _ops  # registers the sharding rules
from mpdist.tensor._api import DTensor, distribute_module, distribute_tensor
from mpdist.tensor.placement_types import Partial, Placement, Replicate, Shard

__all__ = [
    "DTensor",
    "Partial",
    "Placement",
    "Replicate",
    "Shard",
    "distribute_module",
    "distribute_tensor",
]
