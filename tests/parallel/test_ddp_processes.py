"""DDP and replicate with real processes over the tcp backend (the mpdist pytest marker
starts one process per rank with the default group initialized)."""

from __future__ import annotations

import numpy as np
import pytest
from ddp_helpers import mlp, regression_data, shard

import mpdist
import mpdist.distributed as dist
from mpdist import nn
from mpdist.nn import functional as F
from mpdist.optim import SGD, Adam
from mpdist.parallel import DistributedDataParallel as DDP
from mpdist.parallel import functional as pfn
from mpdist.parallel import reducer, replicate

N = 12


def make_model(seed: int) -> nn.Module:
    return mlp(seed, 6, 24, 24, 3)


def data(step: int) -> tuple[np.ndarray, np.ndarray]:
    return regression_data(50 + step, N, 6, 3)


def train(model, opt, rank: int, ws: int, steps: int = 3) -> None:
    for step in range(steps):
        x, y = data(step)
        opt.zero_grad()
        F.mse_loss(model(shard(x, rank, ws)), shard(y, rank, ws)).backward()
        opt.step()


@pytest.mark.parametrize("views", [False, True])
@pytest.mark.parametrize("comm_thread", [False, True], ids=["stepped", "comm-thread"])
@pytest.mark.mpdist(world_size=2)
def test_ddp_over_tcp_equals_full_batch_training(rank, world_size, views, comm_thread) -> None:
    saved = reducer.DEFAULT_FIRST_BUCKET_BYTES, reducer.communication_thread_pays
    # several buckets, reduced stepped or on a thread (restored: ranks may be reused)
    reducer.DEFAULT_FIRST_BUCKET_BYTES = 1000
    reducer.communication_thread_pays = lambda world_size: comm_thread
    try:
        ddp = DDP(make_model(seed=rank), bucket_cap_mb=0.002, gradient_as_bucket_view=views)
    finally:
        reducer.DEFAULT_FIRST_BUCKET_BYTES, reducer.communication_thread_pays = saved
    assert len(ddp.reducer.buckets) > 1
    assert ddp.reducer.stepped is not comm_thread
    train(ddp, Adam(ddp.parameters(), lr=0.01), rank, world_size)
    ref = make_model(seed=0)
    train(ref, Adam(ref.parameters(), lr=0.01), 0, 1)
    for p, q in zip(ddp.parameters(), ref.parameters(), strict=True):
        np.testing.assert_allclose(p.data, q.data, rtol=1e-9, atol=1e-12)
    flat = np.concatenate([p.data.ravel() for p in ddp.parameters()])
    copies = [np.empty_like(flat) for _ in range(world_size)]
    dist.all_gather(copies, flat)
    assert all(np.array_equal(c, copies[0]) for c in copies)


@pytest.mark.mpdist(world_size=3)
def test_ddp_three_processes_sgd_with_no_sync(rank, world_size) -> None:
    ddp = DDP(make_model(seed=rank))
    opt = SGD(ddp.parameters(), lr=0.1, momentum=0.9)
    with ddp.no_sync():
        train(ddp, opt, rank, world_size, steps=1)
    local = [p.data.copy() for p in ddp.parameters()]
    gathered = [None] * world_size
    dist.all_gather_object(gathered, local[0])
    assert not np.array_equal(gathered[0], gathered[1])  # unsynced step diverged
    ddp2 = DDP(make_model(seed=rank))  # fresh replicas from rank 0 again
    train(ddp2, SGD(ddp2.parameters(), lr=0.1, momentum=0.9), rank, world_size)
    ref = make_model(seed=0)
    train(ref, SGD(ref.parameters(), lr=0.1, momentum=0.9), 0, 1)
    for p, q in zip(ddp2.parameters(), ref.parameters(), strict=True):
        np.testing.assert_allclose(p.data, q.data, rtol=1e-9, atol=1e-12)


@pytest.mark.mpdist(world_size=2)
def test_replicate_and_functional_over_tcp(rank, world_size) -> None:
    m = make_model(seed=rank)
    replicate(m, ignored_modules=[m[0]])
    x, y = data(rank)
    F.mse_loss(m(x), y).backward()
    g = m[2].weight.grad.data
    other = [None, None]
    dist.all_gather_object(other, (g, m[0].weight.grad.data))
    np.testing.assert_array_equal(other[0][0], other[1][0])
    assert not np.array_equal(other[0][1], other[1][1])  # ignored module: local grads
    t = mpdist.autograd.Tensor(np.full(3, rank + 1.0), requires_grad=True)
    (pfn.all_reduce(t) * (rank + 1.0)).sum().backward()
    np.testing.assert_array_equal(t.grad.data, np.full(3, 3.0))


def dies_mid_backward(rank: int, world_size: int, comm_thread: bool) -> str:
    """Rank 1 exits in the middle of backward, after the first bucket's all-reduce was
    launched; rank 0 must fail naming it (not hang), stepped or on the comm thread."""
    import os

    from mpdist.errors import DistNetworkError

    saved = reducer.DEFAULT_FIRST_BUCKET_BYTES, reducer.communication_thread_pays
    reducer.DEFAULT_FIRST_BUCKET_BYTES = 1000
    reducer.communication_thread_pays = lambda world_size: comm_thread
    try:
        ddp = DDP(make_model(seed=0), bucket_cap_mb=0.002)
    finally:
        reducer.DEFAULT_FIRST_BUCKET_BYTES, reducer.communication_thread_pays = saved
    assert len(ddp.reducer.buckets) > 1 and ddp.reducer.stepped is not comm_thread
    if rank == 1:
        first_layer = ddp.module[0].weight  # its gradient comes last
        first_layer.register_hook(lambda g: os._exit(3))
    x, y = data(0)
    try:
        F.mse_loss(ddp(x), y).backward()
    except DistNetworkError as e:
        return str(e)
    return "no error"


@pytest.mark.parametrize("comm_thread", [False, True], ids=["stepped", "comm-thread"])
def test_a_rank_dying_mid_backward_fails_the_others_naming_it(comm_thread) -> None:
    from mpdist.testing import spawn_ranks

    res = spawn_ranks(dies_mid_backward, 2, comm_thread, may_die=[1], group_timeout=30)
    assert res[1] is None
    assert "rank 1" in res[0], res[0]
