"""Run under mpiexec: DDP trains the same on the mpi backend as on tcp; mpi:// rendezvous.

argv[1] selects the part:
  ddp      default group "mpi" (bare init): a DDP model on it and a DDP model on a tcp
           group, same seed and data, end with equal parameters (to 1e-12) and equal to
           one-process training on the whole batch (to 1e-9)
  bare     init_process_group() with nothing: tcp over the mpi:// rendezvous
  explicit init_process_group("tcp", init_method="mpi://") and the checks of given values
Prints ``ok <rank>``.
"""

from __future__ import annotations

import sys

import numpy as np
from _out import report
from mpi4py import MPI

import mpdist
import mpdist as dist
from mpdist import nn, optim
from mpdist.parallel import DistributedDataParallel as DDP

part = sys.argv[1]
W = MPI.COMM_WORLD
R, P = W.Get_rank(), W.Get_size()


def model() -> nn.Module:
    mpdist.manual_seed(3)
    return nn.Sequential(
        nn.Linear(4, 8, dtype=np.float64), nn.ReLU(), nn.Linear(8, 2, dtype=np.float64)
    )


def train(m: nn.Module, xs: np.ndarray, ys: np.ndarray, steps: int = 4) -> list[np.ndarray]:
    opt = optim.SGD(m.parameters(), lr=0.1)
    for _ in range(steps):
        opt.zero_grad()
        out = m(mpdist.autograd.tensor(xs))
        loss = ((out - mpdist.autograd.tensor(ys)) ** 2).mean()
        loss.backward()
        opt.step()
    return [p.data.copy() for p in m.parameters()]


if part == "ddp":
    dist.init_process_group("mpi")
    tcp = dist.new_group(backend="tcp")
    rng = np.random.default_rng(0)
    X, Y = rng.standard_normal((8 * P, 4)), rng.standard_normal((8 * P, 2))
    mine = slice(8 * R, 8 * (R + 1))
    on_mpi = train(DDP(model()), X[mine], Y[mine])
    on_tcp = train(DDP(model(), process_group=tcp), X[mine], Y[mine])
    whole = train(model(), X, Y)
    for a, b, c in zip(on_mpi, on_tcp, whole, strict=True):
        np.testing.assert_allclose(a, b, rtol=1e-12, atol=1e-12)
        np.testing.assert_allclose(a, c, rtol=1e-9, atol=1e-9)
    # replicas identical across ranks
    first = np.concatenate([a.reshape(-1) for a in on_mpi])
    every = np.zeros((P, first.size))
    dist.all_gather_into_tensor(every, first)
    assert (every == first).all()
elif part == "bare":
    dist.init_process_group()
    assert dist.get_backend() in ("tcp", "gloo"), dist.get_backend()
    assert (dist.get_rank(), dist.get_world_size()) == (R, P)
    x = np.full(3, R + 1.0)
    dist.all_reduce(x)
    assert (x == P * (P + 1) / 2).all(), x
elif part == "explicit":
    for bad in (dict(rank=(R + 1) % (P + 1)), dict(world_size=P + 1)):
        try:
            dist.init_process_group("tcp", init_method="mpi://", **bad)  # type: ignore[arg-type]
        except ValueError as e:
            assert "MPI.COMM_WORLD says" in str(e), e
        else:
            raise AssertionError(f"{bad} accepted")
    try:  # the backend's own check, with a store given
        dist.init_process_group("mpi", store=dist.HashStore(), world_size=P + 1, rank=R)
    except ValueError as e:
        assert f"world_size {P + 1} was given but MPI.COMM_WORLD has {P}" in str(e), e
    else:
        raise AssertionError("wrong world_size accepted by mpi backend")
    dist.init_process_group("tcp", init_method="mpi://", rank=R, world_size=P)
    objs: list = [None] * P
    dist.all_gather_object(objs, R * 10)
    assert objs == [r * 10 for r in range(P)], objs
dist.destroy_process_group()
report(R, f"ok {R}")
