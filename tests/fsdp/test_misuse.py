"""Misuse both FSDP1 and fully_shard name: a parameter used outside its unit's forward, and
parameters that differ across ranks when they are sharded."""

from __future__ import annotations

import numpy as np
import pytest

import mpdist
from mpdist import nn
from mpdist.device_mesh import init_device_mesh
from mpdist.fsdp import FullyShardedDataParallel as FSDP
from mpdist.fsdp import fully_shard
from mpdist.fsdp.wrap import ModuleWrapPolicy
from mpdist.testing import spawn_threads


class Tied(nn.Module):
    """``b``'s output plus a product with ``a``'s weight, read in the parent's forward."""

    def __init__(self, tie: bool = True) -> None:
        super().__init__()
        mpdist.manual_seed(0)
        self.a = nn.Linear(4, 4, dtype=np.float64)
        self.b = nn.Linear(4, 4, dtype=np.float64)
        self.tie = tie

    def forward(self, x):
        h = self.a(x)
        out = self.b(h)
        if self.tie:
            a = self.a.module if isinstance(self.a, FSDP) else self.a
            out = out + h @ a.weight
        return out


def _wrap(kind: str, tie: bool = True) -> nn.Module:
    m = Tied(tie)
    if kind == "fully_shard":
        fully_shard(m.a)
        fully_shard(m.b)
        return fully_shard(m)
    policy = ModuleWrapPolicy({nn.Linear})
    return FSDP(m, auto_wrap_policy=policy, use_orig_params=kind == "fsdp1 orig")


def _outside(rank: int, ws: int, kind: str) -> tuple[str, bool]:
    model = _wrap(kind)
    with pytest.raises(RuntimeError) as err:
        model(np.ones((2, 4)))
    # the guard is gone once the forward is over (even a failed one)
    inner = model.module if isinstance(model, FSDP) else model
    a = inner.a.module if isinstance(inner.a, FSDP) else inner.a
    return str(err.value), "weight" not in a.__dict__


@pytest.mark.parametrize("kind", ["fsdp1", "fsdp1 orig", "fully_shard"])
def test_parameter_used_outside_its_units_forward_is_named(kind: str) -> None:
    api = "fully_shard" if kind == "fully_shard" else "FSDP"
    for message, guard_gone in spawn_threads(_outside, 2, kind):
        assert message.startswith(f"{api}: parameter 'a.weight' was used outside the forward")
        assert guard_gone


def _legal(rank: int, ws: int, kind: str) -> float:
    model = _wrap(kind, tie=False)
    out = model(np.ones((2, 4)))
    out.sum().backward()  # guards do not touch the units' own forwards and backwards
    return float(out.data.sum())


@pytest.mark.parametrize("kind", ["fsdp1", "fully_shard"])
def test_units_own_forwards_are_unaffected(kind: str) -> None:
    want = float(Tied(tie=False)(np.ones((2, 4))).data.sum())
    for got in spawn_threads(_legal, 2, kind):
        assert got == pytest.approx(want, rel=1e-12)


def _differing(rank: int, ws: int, mesh_shape: tuple[int, ...]) -> None:
    mesh = init_device_mesh("cpu", mesh_shape)
    mpdist.manual_seed(0)
    m = nn.Sequential(nn.Linear(2, 3), nn.Linear(3, 3))
    if rank == ws - 1:
        m[1].bias.data[0] += 1.0  # one rank's one parameter differs
    fully_shard(m, mesh=mesh)


@pytest.mark.parametrize("mesh_shape", [(2,), (2, 2)])
def test_fully_shard_names_parameters_differing_across_ranks(mesh_shape) -> None:
    ws = int(np.prod(mesh_shape))
    with pytest.raises(Exception, match=r"fully_shard expects .* but 1\.bias differ across ranks"):
        spawn_threads(_differing, ws, mesh_shape)
