"""DistributedDataParallel over the threaded backend (ranks are threads): equivalence with
single-process training, initial broadcast, no_sync, unused parameters, comm hooks."""

from __future__ import annotations

import threading

import numpy as np
import pytest
from ddp_helpers import TwoHeads, assert_replicas_equal_reference, mlp, regression_data, shard
from hypothesis import given, settings
from hypothesis import strategies as st

import mpdist
import mpdist.distributed as dist
from mpdist import nn
from mpdist.nn import functional as F
from mpdist.optim import SGD, Adam
from mpdist.parallel import DistributedDataParallel as DDP
from mpdist.parallel import reducer
from mpdist.parallel.hooks import allreduce_hook, fp16_compress_hook
from mpdist.testing import spawn_threads

N = 12  # divisible by 2 and 3
STEPS = 3


def make_model(seed: int = 0) -> nn.Module:
    return mlp(seed, 8, 16, 16, 4)


def data(step: int) -> tuple[np.ndarray, np.ndarray]:
    return regression_data(100 + step, N, 8, 4)


def make_opt(kind: str, params):
    return SGD(params, lr=0.1, momentum=0.9) if kind == "sgd" else Adam(params, lr=0.01)


def train_reference(kind: str) -> list[np.ndarray]:
    model = make_model()
    opt = make_opt(kind, model.parameters())
    for step in range(STEPS):
        x, y = data(step)
        opt.zero_grad()
        F.mse_loss(model(x), y).backward()
        opt.step()
    return [p.data.copy() for p in model.parameters()]


def train_ddp(rank: int, ws: int, kind: str, ddp_kwargs: dict) -> tuple[list[np.ndarray], int]:
    model = make_model(seed=rank)  # different on purpose: DDP's broadcast must fix it
    ddp = DDP(model, **ddp_kwargs)
    opt = make_opt(kind, ddp.parameters())
    for step in range(STEPS):
        x, y = data(step)
        opt.zero_grad()
        F.mse_loss(ddp(shard(x, rank, ws)), shard(y, rank, ws)).backward()
        opt.step()
    return [p.data.copy() for p in model.parameters()], len(ddp.reducer.buckets)


@pytest.fixture
def tiny_first_bucket(monkeypatch):
    monkeypatch.setattr(reducer, "DEFAULT_FIRST_BUCKET_BYTES", 600)


@pytest.mark.parametrize(
    "ws,kind,cap,views",
    [
        (2, "sgd", None, False),
        (2, "adam", 0.0008, True),
        (3, "sgd", 0.0008, False),
        (3, "adam", 0.002, True),
        (2, "sgd", 0.0001, True),
    ],
)
def test_ddp_matches_single_process_full_batch(
    tiny_first_bucket, ddp_progress, ws, kind, cap, views
) -> None:
    ref = train_reference(kind)
    out = spawn_threads(train_ddp, ws, kind, dict(bucket_cap_mb=cap, gradient_as_bucket_view=views))
    for params, nbuckets in out:
        if cap is not None:
            assert nbuckets > 1
        for p, r in zip(params, ref, strict=True):
            np.testing.assert_allclose(p, r, rtol=1e-9, atol=1e-12)
    for params, _ in out[1:]:
        for p, q in zip(params, out[0][0], strict=True):
            np.testing.assert_array_equal(p, q)  # replicas are bitwise identical


def test_initial_broadcast_and_init_sync_false() -> None:
    def body(rank: int, ws: int):
        synced = DDP(make_model(seed=rank)).module
        unsynced = DDP(make_model(seed=rank), init_sync=False).module
        return [p.data.copy() for p in synced.parameters()], [
            p.data.copy() for p in unsynced.parameters()
        ]

    (s0, u0), (s1, u1) = spawn_threads(body, 2)
    for a, b in zip(s0, s1, strict=True):
        np.testing.assert_array_equal(a, b)
    for a, b in zip(s0, [p.data for p in make_model(seed=0).parameters()], strict=True):
        np.testing.assert_array_equal(a, b)
    assert not np.array_equal(u0[0], u1[0])


def test_bucket_assignment_order_and_caps() -> None:
    ps = [nn.Parameter(np.zeros(n, dtype=np.float32)) for n in (100, 200, 300, 50)]
    ps.append(nn.Parameter(np.zeros(10, dtype=np.float64)))
    # reverse order; per dtype the first bucket closes at >= 1000 bytes, later ones at >= 400;
    # the float64 parameter's bucket never fills and comes last
    buckets = reducer.compute_bucket_assignment(ps, [1000, 400])
    assert buckets == [[3, 2], [1], [0], [4]]
    assert reducer.compute_bucket_assignment(ps[:4], [10**9]) == [[3, 2, 1, 0]]


@settings(max_examples=30, deadline=None)
@given(
    sizes=st.lists(
        st.tuples(st.integers(1, 300), st.sampled_from(["f4", "f8"])), min_size=1, max_size=12
    ),
    first=st.integers(1, 2000),
    cap=st.integers(1, 2000),
)
def test_bucket_assignment_properties(sizes, first: int, cap: int) -> None:
    ps = [nn.Parameter(np.zeros(n, dtype=dt)) for n, dt in sizes]
    buckets = reducer.compute_bucket_assignment(ps, [first, cap])
    assert sorted(i for b in buckets for i in b) == list(range(len(ps)))
    seen_per_dtype: dict = {}
    for b in buckets:
        assert b == sorted(b, reverse=True)  # reverse registration order inside a bucket
        assert len({ps[i].dtype for i in b}) == 1
        dt = ps[b[0]].dtype
        k = seen_per_dtype.get(dt, 0)
        seen_per_dtype[dt] = k + 1
        limit = first if k == 0 else cap
        nbytes = sum(ps[i].nbytes for i in b)
        last_of_dtype = all(ps[j].dtype != dt for bb in buckets[buckets.index(b) + 1 :] for j in bb)
        if not last_of_dtype:
            assert nbytes >= limit  # only a dtype's last bucket may be under its limit
            assert nbytes - ps[b[-1]].nbytes < limit  # and it closed as soon as it reached it


def test_no_sync_accumulates_then_reduces_the_sum() -> None:
    def body(rank: int, ws: int):
        ddp = DDP(make_model())
        x, y = data(0)
        half = N // 2
        xa, ya = (
            x[rank * half // 2 : (rank + 1) * half // 2],
            y[rank * half // 2 : (rank + 1) * half // 2],
        )
        xb, yb = x[half + rank * 3 : half + rank * 3 + 3], y[half + rank * 3 : half + rank * 3 + 3]
        with ddp.no_sync():
            F.mse_loss(ddp(xa), ya).backward()
        local = [p.grad.data.copy() for p in ddp.parameters()]
        F.mse_loss(ddp(xb), yb).backward()
        return local, [p.grad.data.copy() for p in ddp.parameters()]

    out = spawn_threads(body, 2)
    ref = make_model()
    x, y = data(0)
    for xs, ys in ((x[0:3], y[0:3]), (x[3:6], y[3:6]), (x[6:9], y[6:9]), (x[9:12], y[9:12])):
        F.mse_loss(ref(xs), ys).backward()
    (l0, g0), (l1, g1) = out
    assert not np.allclose(l0[0], l1[0])  # inside no_sync nothing was exchanged
    for a, b, r in zip(g0, g1, ref.parameters(), strict=True):
        np.testing.assert_array_equal(a, b)
        np.testing.assert_allclose(a, r.grad.data / 2, rtol=1e-10)


def test_unused_parameters_without_detection_raise_at_next_forward() -> None:
    def body(rank: int, ws: int):
        ddp = DDP(TwoHeads())
        x = np.ones((2, 4))
        ddp(x).sum().backward()
        with pytest.raises(RuntimeError, match="Expected to have finished reduction") as info:
            ddp(x)
        return str(info.value)

    for msg in spawn_threads(body, 2):
        assert "Parameter indices which did not receive grad for rank" in msg
        assert ": 4 5" in msg and "head_b.weight, head_b.bias" in msg


@pytest.mark.parametrize("views", [False, True])
def test_find_unused_parameters(views: bool) -> None:
    def body(rank: int, ws: int):
        ddp = DDP(TwoHeads(), find_unused_parameters=True, gradient_as_bucket_view=views)
        x = np.full((2, 4), rank + 1.0)
        ddp(x).sum().backward()
        first = {
            n: (None if p.grad is None else p.grad.data.copy())
            for n, p in ddp.module.named_parameters()
        }
        ddp.zero_grad()
        ddp(x, use_b=rank == 0).sum().backward()  # head_b used on rank 0 only
        second = {
            n: (None if p.grad is None else p.grad.data.copy())
            for n, p in ddp.module.named_parameters()
        }
        return first, second

    (f0, s0), (f1, s1) = spawn_threads(body, 2)
    assert f0["head_b.weight"] is None and f1["head_b.weight"] is None  # globally unused
    ref = TwoHeads()
    ref(np.full((2, 4), 1.0)).sum().backward()
    ref(np.full((2, 4), 2.0)).sum().backward()
    np.testing.assert_allclose(f0["trunk.weight"], ref.trunk.weight.grad.data / 2)
    # rank 0 used head_b, rank 1 head_a: each head's grad is that rank's grad / 2 on both ranks
    ref_b = TwoHeads()
    ref_b(np.full((2, 4), 1.0), use_b=True).sum().backward()
    for s in (s0, s1):
        np.testing.assert_allclose(s["head_b.weight"], ref_b.head_b.weight.grad.data / 2)
        assert s["head_a.weight"] is not None
    np.testing.assert_array_equal(s0["head_a.weight"], s1["head_a.weight"])


@pytest.mark.parametrize("hook", [allreduce_hook, fp16_compress_hook])
def test_builtin_comm_hooks(tiny_first_bucket, hook) -> None:
    def body(rank: int, ws: int):
        plain = DDP(make_model(), bucket_cap_mb=0.001)
        hooked = DDP(make_model(), bucket_cap_mb=0.001)
        hooked.register_comm_hook(None, hook)
        x, y = data(rank)
        for m in (plain, hooked):
            F.mse_loss(m(x), y).backward()
        return [p.grad.data.copy() for p in plain.parameters()], [
            p.grad.data.copy() for p in hooked.parameters()
        ]

    for plain, hooked in spawn_threads(body, 2):
        for a, b in zip(plain, hooked, strict=True):
            if hook is allreduce_hook:
                np.testing.assert_array_equal(a, b)
            else:
                np.testing.assert_allclose(a, b, rtol=2e-3, atol=2e-3)


def test_custom_comm_hook_sees_buckets_in_order() -> None:
    def body(rank: int, ws: int):
        seen = []

        def hook(state, bucket):
            seen.append((bucket.index(), bucket.is_last(), len(bucket.parameters())))
            state.append(bucket.index())
            return allreduce_hook(None, bucket)

        calls: list[int] = []
        ddp = DDP(make_model(), bucket_cap_mb=0.001)
        ddp.register_comm_hook(calls, hook)
        with pytest.raises(RuntimeError, match="only be called once"):
            ddp.register_comm_hook(None, allreduce_hook)
        x, y = data(rank)
        F.mse_loss(ddp(x), y).backward()
        return seen, calls, len(ddp.reducer.buckets)

    for seen, calls, nb in spawn_threads(body, 2):
        assert [s[0] for s in seen] == list(range(nb)) == calls
        assert [s[1] for s in seen] == [False] * (nb - 1) + [True]


def test_constructor_errors() -> None:
    def body(rank: int, ws: int):
        with pytest.raises(ValueError, match="device_ids"):
            DDP(make_model(), device_ids=[0])
        frozen = make_model().requires_grad_(False)
        with pytest.raises(RuntimeError, match="doesn't have any parameter"):
            DDP(frozen)
        with pytest.raises(ValueError, match="bucket_cap_mb"):
            DDP(make_model(), bucket_cap_mb=-1)

    spawn_threads(body, 1)
    assert not dist.is_initialized()


class WithBuffer(nn.Module):
    def __init__(self, rank: int) -> None:
        super().__init__()
        self.fc = nn.Linear(2, 2, dtype=np.float64)
        self.register_buffer("running", np.full(3, float(rank)))

    def forward(self, x):
        self.running.data += 1.0  # a rank-local update that DDP must overwrite from rank 0
        return self.fc(x)


def test_buffers_broadcast_at_construction_and_each_forward() -> None:
    def body(rank: int, ws: int):
        m = WithBuffer(rank)
        m.running.data += 10.0 * rank
        ddp = DDP(m)
        at_init = m.running.data.copy()
        ddp(np.ones((1, 2)))
        m.running.data += rank  # diverge again; the next forward re-broadcasts first
        ddp(np.ones((1, 2)))
        kept = DDP(WithBuffer(rank), broadcast_buffers=False)
        kept(np.ones((1, 2)))
        kept.module.running.data += rank
        kept(np.ones((1, 2)))
        return at_init, m.running.data.copy(), kept.module.running.data.copy()

    for rank, (at_init, after, kept) in enumerate(spawn_threads(body, 2)):
        np.testing.assert_array_equal(at_init, np.zeros(3))
        np.testing.assert_array_equal(after, np.full(3, 2.0))
        # broadcast at construction only: afterwards each rank keeps its own updates
        np.testing.assert_array_equal(kept, np.full(3, 2.0 + rank))


def test_ddp_on_a_subgroup_uses_group_rank_zero_as_source() -> None:
    def body(rank: int, ws: int):
        group = dist.new_group([1, 2])
        if rank == 0:
            return None
        ddp = DDP(make_model(seed=rank), process_group=group)
        x, y = data(rank)
        F.mse_loss(ddp(x), y).backward()
        return [p.data.copy() for p in ddp.parameters()], [
            p.grad.data.copy() for p in ddp.parameters()
        ]

    _, (p1, g1), (p2, g2) = spawn_threads(body, 3)
    local = []
    for r in (1, 2):
        m = make_model(seed=1)  # global rank 1 is the group's rank 0
        x, y = data(r)
        F.mse_loss(m(x), y).backward()
        local.append([p.grad.data for p in m.parameters()])
    for a, b, ref in zip(p1, p2, make_model(seed=1).parameters(), strict=True):
        np.testing.assert_array_equal(a, ref.data)
        np.testing.assert_array_equal(b, ref.data)
    for a, b, l1, l2 in zip(g1, g2, *local, strict=True):
        np.testing.assert_array_equal(a, b)
        np.testing.assert_allclose(a, (l1 + l2) / 2, rtol=1e-12)


@pytest.mark.parametrize("views", [False, True])
def test_globally_unused_parameter_keeps_its_gradient(views: bool) -> None:
    def body(rank: int, ws: int):
        ddp = DDP(TwoHeads(), find_unused_parameters=True, gradient_as_bucket_view=views)
        x = np.full((2, 4), rank + 1.0)
        ddp(x, use_b=True).sum().backward()
        before = ddp.module.head_b.weight.grad.data.copy()
        ddp(x).sum().backward()  # no zero_grad: head_b unused everywhere this time
        return before, ddp.module.head_b.weight.grad.data.copy()

    for before, after in spawn_threads(body, 2):
        assert before.any()
        np.testing.assert_array_equal(after, before)


def test_output_independent_of_every_parameter() -> None:
    class Detached(TwoHeads):
        def forward(self, x):
            return self.head_a(x[:, :4]).detach() * 0.0 + x.sum()

    def body(rank: int, ws: int):
        ddp = DDP(Detached(), find_unused_parameters=True)
        for _ in range(2):
            ddp(np.ones((1, 4)))  # every bucket is reduced (zeros) during forward itself
        return [p.grad for p in ddp.parameters()]

    for grads in spawn_threads(body, 2):
        assert grads == [None] * 6


def test_dropped_ddp_releases_its_hooks_and_buckets() -> None:
    import gc
    import weakref

    def body(rank: int, ws: int):
        model = make_model()
        ddp = DDP(model)
        ref = weakref.ref(ddp.reducer)
        assert all(p._post_hooks for p in model.parameters())
        del ddp
        gc.collect()
        assert ref() is None
        assert not any(p._post_hooks for p in model.parameters())
        x, y = data(0)
        F.mse_loss(model(x), y).backward()  # plain local training still works
        return True

    assert spawn_threads(body, 2) == [True, True]


def test_mixed_dtypes_get_separate_buckets() -> None:
    def mixed() -> nn.Module:
        mpdist.manual_seed(5)
        return nn.Sequential(
            nn.Linear(4, 6, dtype=np.float32), nn.ReLU(), nn.Linear(6, 2, dtype=np.float64)
        )

    def body(rank: int, ws: int):
        ddp = DDP(mixed())
        x, y = data(rank)
        F.mse_loss(ddp(x[:, :4]), y[:, :2]).backward()
        dtypes = [{ddp.reducer.params[i].dtype for i in b.indices} for b in ddp.reducer.buckets]
        return [p.grad.data.copy() for p in ddp.parameters()], dtypes

    out = spawn_threads(body, 2)
    local = []
    for r in range(2):
        m = mixed()
        x, y = data(r)
        F.mse_loss(m(x[:, :4]), y[:, :2]).backward()
        local.append([p.grad.data for p in m.parameters()])
    for grads, dtypes in out:
        assert all(len(d) == 1 for d in dtypes) and len(dtypes) == 2
        for g, a, b in zip(grads, *local, strict=True):
            assert g.dtype == a.dtype
            np.testing.assert_allclose(g, (a + b) / 2, rtol=1e-5)


def test_default_reduction_bucket_order_and_threads(
    tiny_first_bucket, allreduce_calls, ddp_progress
) -> None:
    """Without a comm hook, on mpdist's own groups: the buckets are all-reduced in bucket
    order; the last in the calling thread (nothing is left to overlap with). With a
    communication thread every other bucket runs on the group's worker (overlapping
    backward); stepped, the rank's own thread starts and advances them all. The result is
    the average either way."""

    def body(rank: int, ws: int):
        ddp = DDP(make_model(), bucket_cap_mb=0.0008)
        assert ddp.reducer.stepped == (ddp_progress == "stepped")
        x, y = data(0)
        F.mse_loss(ddp(shard(x, rank, ws)), shard(y, rank, ws)).backward()
        sizes = [b.buffer.size for b in ddp.reducer.buckets]
        return threading.get_ident(), sizes, [p.grad.data.copy() for p in ddp.parameters()]

    results = spawn_threads(body, 2)
    rank_threads = {ident for ident, _, _ in results}
    sizes = results[0][1]
    assert len(sizes) >= 3
    workers: dict[int, list[int]] = {}
    for t, n in allreduce_calls:
        if t not in rank_threads:
            workers.setdefault(t, []).append(n)
    for ident, _, _ in results:
        mine = [n for t, n in allreduce_calls if t == ident]
        assert mine == ([sizes[-1]] if ddp_progress == "comm thread" else sizes)
    if ddp_progress == "comm thread":
        assert sorted(workers.values()) == [sizes[:-1], sizes[:-1]]  # one worker per rank
    else:
        assert workers == {}
    ref = make_model()
    x, y = data(0)
    F.mse_loss(ref(x), y).backward()
    ref_grads = [p.grad.data for p in ref.parameters()]
    assert_replicas_equal_reference([r[2] for r in results], ref_grads, rtol=1e-12)


def test_last_bucket_stays_async_while_another_ddp_waits(allreduce_calls, ddp_progress) -> None:
    """Two DDP modules in one backward: the later one's (B) last bucket fills while the
    earlier one (A) still waits for gradients, so B's is reduced asynchronously (overlapping
    A's backward), not inline. Gradients are the average."""

    def two_part(wrap) -> nn.Module:
        mpdist.manual_seed(0)
        a = nn.Linear(8, 16, dtype=np.float64)
        b = nn.Linear(16, 4, dtype=np.float64)
        return nn.Sequential(wrap(a), nn.ReLU(), wrap(b))

    def body(rank: int, ws: int):
        model = two_part(DDP)
        x, y = data(0)
        F.mse_loss(model(shard(x, rank, ws)), shard(y, rank, ws)).backward()
        return threading.get_ident(), [p.grad.data.copy() for p in model.parameters()]

    results = spawn_threads(body, 2)
    size_a, size_b = 8 * 16 + 16, 16 * 4 + 4
    rank_threads = {ident for ident, _ in results}
    assert sorted(n for _, n in allreduce_calls) == [size_b, size_b, size_a, size_a]
    in_rank_threads = sorted(n for t, n in allreduce_calls if t in rank_threads)
    if ddp_progress == "comm thread":
        # B's bucket went to the worker; A's is inline unless B's is still queued on the
        # group (then it queues behind it), so only B's placement is deterministic
        assert size_b not in in_rank_threads
    else:
        # B's is stepped by the rank; A's synchronous all-reduce finishes it first, then
        # runs inline: no worker thread takes part
        assert in_rank_threads == [size_b, size_b, size_a, size_a]
    ref = two_part(lambda m: m)
    x, y = data(0)
    F.mse_loss(ref(x), y).backward()
    ref_grads = [p.grad.data for p in ref.parameters()]
    assert_replicas_equal_reference([r[1] for r in results], ref_grads, rtol=1e-12)


def test_ddp_logging_data(monkeypatch) -> None:
    """torch's DDPLoggingData keys: construction settings, bucket sizes, iterations, and
    can_set_static_graph (1 while every backward uses the same parameters)."""
    monkeypatch.setattr(reducer, "DEFAULT_FIRST_BUCKET_BYTES", 100)  # TwoHeads has 336 bytes

    def body(rank: int, ws: int):
        ddp = DDP(
            TwoHeads(),
            bucket_cap_mb=0.0001,
            find_unused_parameters=True,
            gradient_as_bucket_view=True,
        )
        x = np.ones((2, 4))
        seen = [ddp._get_ddp_logging_data()]
        for use_b in (False, False, True, False):
            ddp(x, use_b=use_b).sum().backward()
            seen.append(ddp._get_ddp_logging_data())
        plain = DDP(make_model(), broadcast_buffers=False, static_graph=True)
        plain.register_comm_hook(None, allreduce_hook)
        F.mse_loss(plain(data(0)[0]), data(0)[1]).backward()
        nbuckets = len(ddp.reducer.buckets)
        return seen, plain._get_ddp_logging_data(), nbuckets

    for rank, (seen, plain, nbuckets) in enumerate(spawn_threads(body, 2)):
        first = seen[0]
        assert first["is_multi_device_module"] == 0
        assert (first["world_size"], first["rank"]) == (2, rank)
        assert first["backend_name"] == "threaded" and first["module_name"] == "TwoHeads"
        assert first["bucket_cap_bytes"] == int(0.0001 * 1024 * 1024)
        assert first["find_unused_parameters"] == first["gradient_as_bucket_view"] == 1
        assert first["static_graph"] == 0 and first["broadcast_buffers"] == 1
        assert first["num_parameter_tensors"] == 6 and first["dtypes"] == "float64"
        sizes = [int(s) for s in str(first["bucket_sizes"]).split(", ")]
        assert len(sizes) == nbuckets > 1
        assert sum(sizes) == first["total_parameter_size_bytes"] == (16 + 4 + 8 + 2 + 8 + 2) * 8
        assert first["iteration"] == 0 and "can_set_static_graph" not in first
        assert "comm_hook" not in first
        assert [d["iteration"] for d in seen] == [0, 1, 2, 3, 4]
        # same parameters used twice: static so far; head_b's turn breaks it for good
        assert [d["can_set_static_graph"] for d in seen[1:]] == [1, 1, 0, 0]
        assert plain["static_graph"] == 1 and "can_set_static_graph" not in plain
        assert plain["broadcast_buffers"] == 0 and plain["find_unused_parameters"] == 0
        assert plain["comm_hook"] == "allreduce_hook" and plain["iteration"] == 1
