"""State dicts of a ``FullyShardedDataParallel`` model, under the unwrapped model's keys."""

from __future__ import annotations

from typing import Any

import numpy as np

from mpdist import distributed as dist
from mpdist.autograd import Tensor
from mpdist.fsdp import FullStateDictConfig, StateDictConfig
from mpdist.fsdp._tp import dp_tp_spec
from mpdist.nn import Module

WRAPPED = "_fsdp_wrapped_module."


def clean(key: str) -> str:
    """A key without FSDP's wrapper levels."""
    return key.replace(WRAPPED, "")


def _units(root: Module) -> list[tuple[str, Any]]:
    from mpdist.fsdp.fully_sharded_data_parallel import FullyShardedDataParallel

    return [
        (clean(n + "." if n else ""), m)
        for n, m in root.named_modules()
        if isinstance(m, FullyShardedDataParallel)
    ]


def _buffers(root: Module) -> dict[str, Tensor]:
    out: dict[str, Tensor] = {}
    for owner_name, owner in root.named_modules():
        for name, b in owner._buffers.items():
            if b is not None and name not in owner._non_persistent_buffers:
                key = clean((owner_name + "." if owner_name else "") + name)
                out[key] = Tensor(b.data.copy())
    return out


def _gathered(unit: Any) -> np.ndarray:
    h = unit._handle
    full = h.gather()
    if not h.armed:
        full = full.copy()  # free() gives the storage's pages back: they would read zeros
        h.free()
    return full


def full_state_dict(root: Module, config: StateDictConfig) -> dict[str, Any]:
    """Every parameter whole (``rank0_only``: only rank 0 gets anything)."""
    out: dict[str, Any] = {}
    for prefix, u in _units(root):
        full = _gathered(u)
        for e in u._handle.entries:
            a: Tensor = Tensor(full[e.offset : e.offset + e.numel].reshape(e.shape).copy())
            if e.dtensor is not None:
                from mpdist.tensor import DTensor

                mesh, placements, gshape = e.dtensor
                from mpdist.fsdp._flat import _contiguous_stride

                a = DTensor.from_local(
                    a.data, mesh, placements, shape=gshape, stride=_contiguous_stride(gshape)
                )
            out[prefix + e.fqn] = a
    out.update(_buffers(root))
    rank0_only = isinstance(config, FullStateDictConfig) and config.rank0_only
    if rank0_only and dist.get_rank(root._groups.shard) != 0:
        return {}
    return out


def sharded_state_dict(root: Module) -> dict[str, Any]:
    """Every parameter as a DTensor placed ``Shard(0)`` over the unit's ranks; a
    tensor-parallel parameter's TP piece cut so too, a DTensor on the (dp, tp) mesh
    (``_tp.dp_tp_spec``: ``_StridedShard`` inside a TP ``Shard(0)``)."""
    from mpdist.device_mesh import DeviceMesh
    from mpdist.tensor import DTensor, Shard

    out: dict[str, Any] = {}
    meshes: dict[int, Any] = {}  # one mesh per shard group, made (collectively) on first use
    for prefix, u in _units(root):
        h = u._handle
        pg = h.groups.shard
        if h.groups.mesh is None:
            if id(pg) not in meshes:
                ranks = [dist.get_global_rank(pg, r) for r in range(dist.get_world_size(pg))]
                meshes[id(pg)] = DeviceMesh("cpu", ranks)
            h.groups.mesh = meshes[id(pg)]
        mesh = h.groups.mesh
        full = _gathered(u)
        for e in h.entries:
            whole = full[e.offset : e.offset + e.numel].reshape(e.shape)
            if not e.shape:
                raise NotImplementedError("SHARDED_STATE_DICT of a 0-d parameter")
            size = -(-e.shape[0] // h.world)  # torch.chunk's pieces: the last may be short
            mine = whole[h.rank * size : (h.rank + 1) * size].copy()
            if e.dtensor is not None:  # the TP piece (e.shape) cut over dp
                tp_mesh, placements, gshape = e.dtensor
                spec = dp_tp_spec(mesh, tp_mesh, placements, gshape)
                out[prefix + e.fqn] = DTensor.from_local(
                    mine, spec.mesh, spec.placements, shape=gshape, stride=_stride(gshape)
                )
                continue
            out[prefix + e.fqn] = DTensor.from_local(
                mine, mesh, [Shard(0)], shape=e.shape, stride=_stride(e.shape)
            )
    out.update(_buffers(root))
    return out


def _stride(shape: tuple[int, ...]) -> tuple[int, ...]:
    from mpdist.fsdp._flat import _contiguous_stride

    return _contiguous_stride(shape)


def load_into(root: Module, state_dict: dict[str, Any], strict: bool) -> Any:
    """Write full arrays or DTensors (gathered whole) into the shards and the buffers."""
    from mpdist.nn.module import _IncompatibleKeys
    from mpdist.tensor import Replicate

    expected: set[str] = set()
    for prefix, u in _units(root):
        h = u._handle
        lo = h.rank * h.shard_size
        full = np.zeros(h.padded, dtype=h.flat_param.data.dtype)
        for e in h.entries:
            key = prefix + e.fqn
            expected.add(key)
            if key not in state_dict:
                full[e.offset : e.offset + e.numel] = 0
                continue
            v = state_dict[key]
            if hasattr(v, "full_tensor") and e.dtensor is None:
                v = v.full_tensor()
            elif hasattr(v, "to_local"):
                if v.device_mesh.ndim > 1:  # cut over dp too (a sharded state dict): join
                    whole_dp = [Replicate()] * (v.device_mesh.ndim - 1) + [v.placements[-1]]
                    v = v.redistribute(v.device_mesh, whole_dp)
                v = v.to_local()
            arr = np.asarray(v.data if hasattr(v, "data") else v)
            if arr.size != e.numel:
                raise RuntimeError(
                    f"Error(s) in loading state_dict: size mismatch for {key}: copying a param "
                    f"with shape {arr.shape}, the shape in current model is {e.shape}."
                )
            full[e.offset : e.offset + e.numel] = arr.reshape(-1)
        h.flat_param.data[...] = full[lo : lo + h.shard_size]
    buffers = {}
    for owner_name, owner in root.named_modules():
        for name, b in owner._buffers.items():
            if b is not None and name not in owner._non_persistent_buffers:
                buffers[clean((owner_name + "." if owner_name else "") + name)] = b
    for key, b in buffers.items():
        expected.add(key)
        if key in state_dict:
            v = state_dict[key]
            b.data[...] = np.asarray(v.data if hasattr(v, "data") else v)
    missing = sorted(expected - set(state_dict))
    unexpected = sorted(set(state_dict) - expected)
    if strict and (missing or unexpected):
        raise RuntimeError(
            "Error(s) in loading state_dict for FullyShardedDataParallel: "
            f"Missing key(s): {missing}. Unexpected key(s): {unexpected}."
        )
    return _IncompatibleKeys(missing, unexpected)
