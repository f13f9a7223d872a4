"""FSDP over tensor parallelism: where a tensor-parallel parameter's pieces go when FSDP cuts
its TP piece again over the data-parallel ranks (one rule for both FSDPs, torch's).

``parallelize_module(model, mesh["tp"], plan)`` leaves DTensor parameters on ``mesh["tp"]``;
FSDP on ``mesh["dp"]`` cuts each rank's TP piece along dim 0 over dp. The result is a DTensor
on the 2-D mesh ``(dp, tp)`` of the two meshes' common root: a TP ``Shard(0)`` is cut again
inside its own pieces (``_StridedShard(0, split_factor=tp)``, ``Shard(0)``); any other TP
placement keeps its meaning under a plain ``Shard(0)`` over dp.
"""

from __future__ import annotations

from typing import Any

from mpdist.tensor._redistribute import Spec
from mpdist.tensor.placement_types import Placement, Shard, _StridedShard


def _root(mesh: Any) -> Any:
    root = getattr(mesh, "_root", None)
    return mesh if root is None else root


def dp_tp_spec(
    dp_mesh: Any, tp_mesh: Any, tp_placements: tuple[Placement, ...], shape: tuple[int, ...]
) -> Spec:
    """The spec of a tensor-parallel parameter (global ``shape``, placed ``tp_placements``
    on ``tp_mesh``) once FSDP cuts its TP piece's dim 0 over ``dp_mesh``."""
    if dp_mesh.ndim != 1 or tp_mesh.ndim != 1:
        raise NotImplementedError(
            f"FSDP over tensor parallelism needs a 1-D data-parallel mesh and a 1-D tensor-"
            f"parallel mesh, got {dp_mesh.ndim}-D and {tp_mesh.ndim}-D"
        )
    if _root(dp_mesh) is not _root(tp_mesh):
        raise RuntimeError(
            "FSDP requires the DP and TP mesh to have the same parent mesh (slice both from "
            f"one init_device_mesh): dp {dp_mesh}, tp {tp_mesh}"
        )
    if dp_mesh.mesh_dim_names is None or tp_mesh.mesh_dim_names is None:
        raise RuntimeError("FSDP requires named DeviceMesh dims for ND parallelism")
    names = tuple(dp_mesh.mesh_dim_names) + tuple(tp_mesh.mesh_dim_names)
    try:
        mesh = _root(dp_mesh)[names]
    except KeyError as e:
        raise RuntimeError(
            f"FSDP over tensor parallelism needs the dp dimension before the tp dimension in "
            f"their parent mesh, got {names}"
        ) from e
    (tp,) = tp_placements
    if not shape:
        raise ValueError("FSDP cannot shard a 0-d tensor-parallel parameter over dim 0")
    dp: Placement = Shard(0)
    if tp == Shard(0) and int(tp_mesh.size()) > 1:
        dp = _StridedShard(0, split_factor=int(tp_mesh.size()))
    return Spec(mesh, (dp, tp), tuple(shape))
