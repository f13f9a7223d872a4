"""SyncBatchNorm on real ranks (threads of the threaded backend, and processes over tcp):
it equals BatchNorm on the concatenated batch (outputs, input gradients, summed weight/bias
gradients, running statistics), it takes one all-reduce each way, ranks with empty batches
take part without NaN (torch's test_sync_batch_norm_*empty_input), it is BatchNorm in eval
mode and without a process group, convert_sync_batchnorm, and DDP keeps BatchNorm running
statistics identical across ranks with broadcast_buffers."""

from __future__ import annotations

import threading

import numpy as np
import pytest

import mpdist.distributed as dist
from mpdist import nn
from mpdist.autograd import Tensor
from mpdist.parallel import DistributedDataParallel as DDP
from mpdist.testing import spawn_threads

STEPS = 3


def batch(step: int, n: int, rest: tuple[int, ...]) -> np.ndarray:
    return np.random.default_rng(100 + step).standard_normal((n, *rest)) * 3.0 - 1.0


def weights(step: int, shape: tuple[int, ...]) -> np.ndarray:
    return np.random.default_rng(200 + step).standard_normal(shape)


def affine(m: nn.Module) -> nn.Module:
    """The same non-trivial weight and bias on every rank."""
    rng = np.random.default_rng(5)
    for p in m.parameters():
        p.data[...] = rng.standard_normal(p.shape)
    return m


def bounds(sizes: list[int], rank: int) -> slice:
    start = sum(sizes[:rank])
    return slice(start, start + sizes[rank])


def run_steps(
    m: nn.Module, sizes: list[int], rank: int, rest: tuple[int, ...], momentum_steps: int
):
    """``momentum_steps`` training steps on this rank's share of each batch; per step the
    output, input gradient and weight/bias gradients."""
    out = []
    n = sum(sizes)
    for step in range(momentum_steps):
        part = bounds(sizes, rank)
        x = Tensor(batch(step, n, rest)[part].copy(), requires_grad=True)
        m.zero_grad()
        y = m(x)
        (y * weights(step, (n, *rest))[part]).sum().backward()
        out.append((y.data, x.grad.data, [p.grad.data.copy() for p in m.parameters()]))
    return out


CASES = [
    (2, [3, 5], (3,), {}),
    (3, [2, 1, 4], (2, 3), {"momentum": None}),
    (3, [3, 0, 2], (2, 2, 3), {"momentum": 0.3}),
    (2, [2, 4], (2, 2, 2), {"affine": False}),
]


@pytest.mark.parametrize(("ws", "sizes", "rest", "kwargs"), CASES)
def test_equals_batchnorm_on_the_concatenated_batch(ws, sizes, rest, kwargs) -> None:
    c = rest[0]

    def body(rank, world_size):
        m = affine(nn.SyncBatchNorm(c, dtype=np.float64, **kwargs))
        steps = run_steps(m, sizes, rank, rest, STEPS)
        return steps, m.running_mean.data.copy(), m.running_var.data.copy()

    per_rank = spawn_threads(body, ws)
    ref = affine(
        nn.BatchNorm1d(c, dtype=np.float64, **kwargs)
        if len(rest) < 3
        else nn.BatchNorm2d(c, dtype=np.float64, **kwargs)
    )
    full = run_steps(ref, [sum(sizes)], 0, rest, STEPS)
    for step, (y, gx, gps) in enumerate(full):
        for rank in range(ws):
            yr, gxr, _ = per_rank[rank][0][step]
            part = bounds(sizes, rank)
            np.testing.assert_allclose(yr, y[part], rtol=1e-9, atol=1e-12)
            np.testing.assert_allclose(gxr, gx[part], rtol=1e-9, atol=1e-12)
        for i, g in enumerate(gps):  # each rank's own share; they add up to the full one
            total = sum(per_rank[rank][0][step][2][i] for rank in range(ws))
            np.testing.assert_allclose(total, g, rtol=1e-9, atol=1e-12)
    for _, rm, rv in per_rank:
        np.testing.assert_allclose(rm, ref.running_mean.data, rtol=1e-12)
        np.testing.assert_allclose(rv, ref.running_var.data, rtol=1e-12)


def test_one_all_reduce_forward_and_one_backward_none_in_eval(monkeypatch) -> None:
    calls: list[tuple[int, int]] = []
    lock = threading.Lock()
    real = dist.all_reduce

    def counting(tensor, *args, **kwargs):
        with lock:
            calls.append((threading.get_ident(), np.size(tensor)))
        return real(tensor, *args, **kwargs)

    monkeypatch.setattr(dist, "all_reduce", counting)

    def body(rank, world_size):
        m = nn.SyncBatchNorm(4, dtype=np.float64)
        x = Tensor(batch(rank, 3, (4, 2)), requires_grad=True)
        y = m(x)
        after_forward = len([c for c in calls if c[0] == threading.get_ident()])
        y.sum().backward()
        after_backward = len([c for c in calls if c[0] == threading.get_ident()])
        m.eval()
        m(x).sum().backward()
        after_eval = len([c for c in calls if c[0] == threading.get_ident()])
        return after_forward, after_backward, after_eval

    assert spawn_threads(body, 2) == [(1, 2, 2), (1, 2, 2)]
    assert sorted({n for _, n in calls}) == [8, 9]  # 2C+1 stats forward, 2C sums backward


def _not_nan(model, x) -> None:
    y = model(x)
    assert not np.isnan(y.data).any()
    y.sum().backward()
    for p in model.parameters():
        assert p.grad is not None and not np.isnan(p.grad.data).any()


@pytest.mark.parametrize("ws", [2, 3])
def test_empty_batches_take_part_without_nan(ws) -> None:
    """torch's test_sync_batch_norm_only_empty_input: one rank, then every rank, with an
    empty batch; the input requiring grad (an all-reduce in backward) or not."""

    def body(rank, world_size):
        model = DDP(nn.Sequential(nn.BatchNorm2d(2)))
        model = nn.SyncBatchNorm.convert_sync_batchnorm(model)
        model.train()
        for n in (0 if rank == 0 else 1, 0):
            for requires_grad in (True, False):
                x = Tensor(np.zeros((n, 2, 11, 13), dtype=np.float32), requires_grad=requires_grad)
                _not_nan(model, x)
        bn = model.module[0]
        return (
            bn.running_mean.data.copy(),
            bn.running_var.data.copy(),
            int(bn.num_batches_tracked.data),
        )

    for rm, rv, count in spawn_threads(body, ws):
        assert not np.isnan(rm).any() and not np.isnan(rv).any()
        assert count == 4


def test_empty_rank_gets_the_others_statistics() -> None:
    def body(rank, world_size):
        m = nn.SyncBatchNorm(2, dtype=np.float64)
        x = Tensor(batch(0, 4, (2,))[: 0 if rank == 0 else 4], requires_grad=True)
        m(x).sum().backward()
        return m.running_mean.data.copy(), m.weight.grad.data.copy(), x.grad.shape

    (rm0, g0, s0), (rm1, g1, _) = spawn_threads(body, 2)
    np.testing.assert_array_equal(rm0, rm1)
    np.testing.assert_allclose(rm1, 0.1 * batch(0, 4, (2,)).mean(0))
    np.testing.assert_array_equal(g0, 0)
    assert s0 == (0, 2)


def test_without_a_process_group_and_in_eval_it_is_batchnorm() -> None:
    assert not dist.is_initialized()
    sync, plain = nn.SyncBatchNorm(3, dtype=np.float64), nn.BatchNorm1d(3, dtype=np.float64)
    for m in (sync, plain):
        affine(m)
    for step in range(3):
        if step == 2:
            sync.eval()
            plain.eval()
        x = batch(step, 5, (3,))
        np.testing.assert_allclose(sync(x).data, plain(x).data, rtol=1e-12)
    np.testing.assert_allclose(sync.running_var.data, plain.running_var.data, rtol=1e-12)


def test_a_group_of_one_rank_is_batchnorm() -> None:
    def body(rank, world_size):
        group = dist.new_group([rank])
        m = nn.SyncBatchNorm(3, dtype=np.float64, process_group=group)
        y = m(batch(rank, 4, (3,))).data
        ref = nn.BatchNorm1d(3, dtype=np.float64)
        return np.abs(y - ref(batch(rank, 4, (3,))).data).max()

    assert max(spawn_threads(body, 2)) < 1e-12


def test_errors() -> None:
    m = nn.SyncBatchNorm(2)
    with pytest.raises(ValueError, match=r"expected at least 2D input \(got 1D input\)"):
        m(np.zeros(2))
    with pytest.raises(
        ValueError, match="SyncBatchNorm number of input channels should be non-zero"
    ):
        nn.SyncBatchNorm(0)(np.zeros((2, 0)))


def test_convert_sync_batchnorm_keeps_parameters_buffers_order_and_mode() -> None:
    inner = nn.Sequential(nn.BatchNorm2d(3), nn.ReLU())
    model = nn.Sequential(nn.Linear(2, 2), nn.BatchNorm1d(2, momentum=None, eps=1e-3), inner)
    inner.eval()
    before = dict(model.state_dict(keep_vars=True))
    params = list(model.parameters())
    group = object()
    out = nn.SyncBatchNorm.convert_sync_batchnorm(model, process_group=group)
    assert out is model
    assert [type(m).__name__ for m in model.modules()] == [
        "Sequential",
        "Linear",
        "SyncBatchNorm",
        "Sequential",
        "SyncBatchNorm",
        "ReLU",
    ]
    assert all(a is b for a, b in zip(model.parameters(), params, strict=True))
    assert all(v is before[k] for k, v in model.state_dict(keep_vars=True).items())
    assert list(model.state_dict()) == list(before)
    bn1, bn2 = model[1], model[2][0]
    assert bn1.momentum is None and bn1.eps == 1e-3 and bn1.process_group is group
    assert bn1.training and not bn2.training
    single = nn.SyncBatchNorm.convert_sync_batchnorm(nn.BatchNorm1d(4, affine=False))
    assert isinstance(single, nn.SyncBatchNorm) and single.weight is None


@pytest.mark.parametrize("sync_bn", [False, True], ids=["BatchNorm", "SyncBatchNorm"])
def test_ddp_broadcast_buffers_keeps_running_stats_identical(sync_bn) -> None:
    def body(rank, world_size):
        net = affine(
            nn.Sequential(nn.Linear(4, 3, dtype=np.float64), nn.BatchNorm1d(3, dtype=np.float64))
        )
        if sync_bn:
            net = nn.SyncBatchNorm.convert_sync_batchnorm(net)
        model = DDP(net, broadcast_buffers=True)
        seen = []
        for step in range(STEPS):
            x = batch(10 * step + rank, 4, (4,))
            model.zero_grad()
            out1 = model(x)
            out2 = model(x)  # torch's test_ddp_buffer_sync_multi_forward_with_batchnorm
            (out1.mean() + out2.mean()).backward()
            if sync_bn:  # the same statistics everywhere: identical after every forward
                seen.append([b.data.copy() for b in net.buffers()])
        model.eval()
        model(batch(0, 2, (4,)))  # the forward broadcasts rank 0's buffers first
        seen.append([b.data.copy() for b in net.buffers()])
        return seen

    per_rank = spawn_threads(body, 2)
    for a, b in zip(per_rank[0], per_rank[1], strict=True):
        for x, y in zip(a, b, strict=True):
            np.testing.assert_array_equal(x, y)


@pytest.mark.mpdist(world_size=2)
def test_over_tcp_processes_equals_batchnorm(rank, world_size) -> None:
    assert world_size == 2 and dist.get_backend() in ("tcp", "gloo")
    sizes, rest = [3, 4], (2, 2, 2)
    m = affine(nn.SyncBatchNorm(2, dtype=np.float64))
    steps = run_steps(m, sizes, rank, rest, STEPS)
    ref = affine(nn.BatchNorm2d(2, dtype=np.float64))
    full = run_steps(ref, [sum(sizes)], 0, rest, STEPS)
    part = bounds(sizes, rank)
    for (y, gx, _), (yf, gxf, _) in zip(steps, full, strict=True):
        np.testing.assert_allclose(y, yf[part], rtol=1e-9, atol=1e-12)
        np.testing.assert_allclose(gx, gxf[part], rtol=1e-9, atol=1e-12)
    np.testing.assert_allclose(m.running_var.data, ref.running_var.data, rtol=1e-12)


@pytest.mark.parametrize("comm_thread", [False, True], ids=["stepped", "comm-thread"])
def test_ddp_buckets_in_flight_around_the_backward_all_reduce(monkeypatch, comm_thread) -> None:
    """A BatchNorm between layers whose gradient buckets are already being reduced when its
    backward all-reduces: DDP + SyncBatchNorm still trains as one model on the whole batch."""
    from mpdist.optim import SGD
    from mpdist.parallel import reducer

    monkeypatch.setattr(reducer, "DEFAULT_FIRST_BUCKET_BYTES", 200)
    monkeypatch.setattr(reducer, "communication_thread_pays", lambda world_size: comm_thread)

    def net() -> nn.Module:
        return affine(
            nn.Sequential(
                nn.Linear(4, 6, dtype=np.float64),
                nn.BatchNorm1d(6, dtype=np.float64),
                nn.ReLU(),
                nn.Linear(6, 6, dtype=np.float64),
                nn.BatchNorm1d(6, dtype=np.float64),
                nn.Linear(6, 2, dtype=np.float64),
            )
        )

    def train(model, rank, ws):
        opt = SGD(model.parameters(), lr=0.1)
        for step in range(STEPS):
            x, r = batch(step, 8, (4,)), weights(step, (8, 2))
            part = slice(rank * 8 // ws, (rank + 1) * 8 // ws)
            opt.zero_grad()
            # each rank's loss is its share of the full loss; DDP averages, so scale by ws
            ((model(x[part]) * r[part]).sum() * ws).backward()
            opt.step()
        return [p.data.copy() for p in model.parameters()]

    def body(rank, world_size):
        model = DDP(nn.SyncBatchNorm.convert_sync_batchnorm(net()), bucket_cap_mb=0.0002)
        assert len(model.reducer.buckets) > 2
        return train(model, rank, world_size)

    per_rank = spawn_threads(body, 2)
    ref = train(net(), 0, 1)
    for params in per_rank:
        for p, q in zip(params, ref, strict=True):
            np.testing.assert_allclose(p, q, rtol=1e-9, atol=1e-12)
