"""PowerSGD comm hooks: state validation, plain warm-up, exactness on low-rank gradients,
error feedback, DDP training over the threaded backend, and numerics against torch."""

from __future__ import annotations

import pickle
import re

import numpy as np
import pytest
from ddp_helpers import mlp, regression_data, shard

import mpdist.distributed as dist
from mpdist.nn import functional as F
from mpdist.optim import SGD
from mpdist.parallel import DistributedDataParallel as DDP
from mpdist.parallel import hooks
from mpdist.parallel.powersgd import PowerSGDState, batched_powerSGD_hook, powerSGD_hook
from mpdist.parallel.reducer import GradBucket
from mpdist.testing import spawn_threads

START_ERROR = re.escape(
    "Expect `start_powerSGD_iter` > 1 if `use_error_feedback` or `warm_start` is enabled, "
    "because PowerSGD can only be applied after the first two iterations in DDP."
)


def bucket_of(arrays: list[np.ndarray], index: int = 0) -> GradBucket:
    """A GradBucket over copies of ``arrays`` laid out in one flat buffer, on the default group."""
    buffer = np.concatenate([a.reshape(-1) for a in arrays])
    views, off = [], 0
    for a in arrays:
        views.append(buffer[off : off + a.size].reshape(a.shape))
        off += a.size
    return GradBucket(index, buffer, [], views, True, dist.group.WORLD)


# ----------------------------------------------------------------------------- state


def test_hooks_module_reexports_powersgd() -> None:
    assert hooks.PowerSGDState is PowerSGDState
    assert hooks.powerSGD_hook is powerSGD_hook
    assert hooks.batched_powerSGD_hook is batched_powerSGD_hook


@pytest.mark.parametrize("start", [-1, 0, 1])
@pytest.mark.parametrize("feedback,warm", [(True, True), (True, False), (False, True)])
def test_state_rejects_early_start_with_memory(start, feedback, warm) -> None:
    with pytest.raises(ValueError, match=START_ERROR):
        PowerSGDState(None, start_powerSGD_iter=start, use_error_feedback=feedback, warm_start=warm)


def test_state_defaults_and_other_validation() -> None:
    s = PowerSGDState(None)
    assert (s.matrix_approximation_rank, s.start_powerSGD_iter, s.min_compression_rate) == (
        1,
        1000,
        2,
    )
    assert s.use_error_feedback and s.warm_start and not s.batch_tensors_with_same_shape
    assert s.iter == 0 and s.compression_stats() == (0, 0, 0)
    # without memory, compression may start at once
    assert PowerSGDState(None, start_powerSGD_iter=0, use_error_feedback=False, warm_start=False)
    with pytest.raises(ValueError, match="matrix_approximation_rank"):
        PowerSGDState(None, matrix_approximation_rank=0)
    with pytest.raises(TypeError, match="ProcessGroup"):
        PowerSGDState("world")


def test_hooks_reject_other_states() -> None:
    for hook in (powerSGD_hook, batched_powerSGD_hook):
        with pytest.raises(TypeError, match="PowerSGDState"):
            hook(None, bucket_of([np.zeros(3)]))


# ----------------------------------------------------------------------------- one bucket


def test_before_start_iter_is_plain_averaging() -> None:
    def body(rank: int, ws: int):
        state = PowerSGDState(None, start_powerSGD_iter=3)
        outs = []
        for it in range(3):
            g = np.random.default_rng(10 * it + rank).standard_normal((6, 5))
            outs.append(np.asarray(powerSGD_hook(state, bucket_of([g])).wait()).copy())
        return outs, state.iter, state.error_dict

    res = spawn_threads(body, 2)
    for it in range(3):
        mean = sum(np.random.default_rng(10 * it + r).standard_normal(30) for r in range(2)) / 2
        for outs, n_iter, errors in res:
            np.testing.assert_allclose(outs[it], mean, rtol=1e-12, atol=1e-12)
            assert n_iter == 3 and errors == {}


@pytest.mark.parametrize("batch", [False, True])
def test_rank1_gradients_are_reduced_exactly(batch) -> None:
    """Matrices u v_r^T sharing the column u: their mean is rank 1 and in P's span, so a
    rank-1 approximation reproduces it; vectors and small matrices are averaged as they are."""
    u = np.arange(1.0, 7.0)

    def grads(rank: int) -> list[np.ndarray]:
        rng = np.random.default_rng(rank)
        return [
            np.outer(u, rng.standard_normal(5)),
            np.outer(u, rng.standard_normal(5)),
            rng.standard_normal(4),  # a bias: never compressed
            rng.standard_normal((2, 2)),  # too small to compress at rate 2
        ]

    def body(rank: int, ws: int):
        state = PowerSGDState(
            None,
            start_powerSGD_iter=0,
            use_error_feedback=False,
            warm_start=False,
            batch_tensors_with_same_shape=batch,
        )
        b = bucket_of(grads(rank))
        out = powerSGD_hook(state, b).wait()
        assert out is b.buffer()
        assert state.p_memory_dict == state.q_memory_dict == {}  # no warm start: dropped
        return [g.copy() for g in b.gradients()], state.compression_stats()

    mean = [(a + b) / 2 for a, b in zip(grads(0), grads(1), strict=True)]
    for got, (rate, before, after) in spawn_threads(body, 2):
        for g, m in zip(got, mean, strict=True):
            np.testing.assert_allclose(g, m, rtol=1e-12, atol=1e-12)
        assert (before, after) == (30 + 30 + 4 + 4, 11 + 11 + 4 + 4)
        assert rate == before / after


def test_error_feedback_carries_the_residual() -> None:
    """Per rank, once compression starts: the hook's input is the gradient plus the last
    error, and the new error is that input minus the output, so the sum of outputs plus
    the final error is the sum of gradients (nothing is lost); a full-rank gradient leaves
    a nonzero error."""
    steps = 5

    def grads(rank: int, it: int) -> list[np.ndarray]:
        rng = np.random.default_rng(100 * rank + it)
        return [rng.standard_normal((8, 6)), rng.standard_normal(3)]

    def body(rank: int, ws: int):
        state = PowerSGDState(None, start_powerSGD_iter=2)
        total_in = np.zeros(51)
        total_out = np.zeros(51)
        for it in range(steps):
            g = grads(rank, it)
            b = bucket_of(g)
            before = state.error_dict.get(0, np.zeros(51)).copy()
            compressed = state.iter >= state.start_powerSGD_iter
            if compressed:
                total_in += b.buffer()
            out = np.asarray(powerSGD_hook(state, b).wait())
            if compressed:
                total_out += out
                np.testing.assert_allclose(
                    state.error_dict[0],
                    np.concatenate([x.ravel() for x in g]) + before - b.buffer(),
                )
        return total_in, total_out, state.error_dict[0].copy()

    for total_in, total_out, error in spawn_threads(body, 2):
        assert np.abs(error[:48]).max() > 1e-3
        np.testing.assert_allclose(total_out + error, total_in, rtol=1e-10, atol=1e-10)


def test_warm_start_keeps_q_and_converges_to_the_leading_subspace() -> None:
    """With warm start and the same gradient every step (no error feedback), Q is a power
    iteration: the output tends to the best rank-1 approximation (the top singular pair)."""
    rng = np.random.default_rng(3)
    u, _, vt = np.linalg.svd(rng.standard_normal((10, 7)), full_matrices=False)
    g = (u * np.array([5.0, 1.0, 0.5, 0.2, 0.1, 0.05, 0.01])) @ vt
    best = 5.0 * np.outer(u[:, 0], vt[0])

    def body(rank: int, ws: int):
        state = PowerSGDState(None, start_powerSGD_iter=2, use_error_feedback=False)
        for _ in range(2):
            powerSGD_hook(state, bucket_of([g])).wait()
        for _ in range(12):
            out = np.asarray(powerSGD_hook(state, bucket_of([g])).wait()).reshape(10, 7)
        return out, state.q_memory_dict[0].shape

    ((out, q_shape),) = spawn_threads(body, 1)
    assert q_shape == (7,)
    np.testing.assert_allclose(out, best, atol=1e-6)


def test_zero_gradient_compresses_to_zero_not_nan() -> None:
    def body(rank: int, ws: int):
        state = PowerSGDState(
            None, start_powerSGD_iter=0, use_error_feedback=False, warm_start=False
        )
        return np.asarray(powerSGD_hook(state, bucket_of([np.zeros((6, 6))])).wait()).copy()

    for out in spawn_threads(body, 2):
        np.testing.assert_array_equal(out, np.zeros(36))


def test_batched_hook_rank1_buffer_is_exact_and_length_kept() -> None:
    """The flat bucket (length 12, padded to 4 x 4) whose padded matrix has rank 1 on
    every rank with a shared column space comes back exactly averaged."""
    row = np.array([1.0, -2.0, 0.5, 3.0])

    def flat(rank: int) -> np.ndarray:
        return np.outer([1.0, 2.0, -1.0], row * (rank + 1)).ravel()  # 3 rows, pad row is 0

    def body(rank: int, ws: int):
        state = PowerSGDState(None, start_powerSGD_iter=2)
        b = bucket_of([flat(rank)])
        state.iter = 2
        out = batched_powerSGD_hook(state, b).wait()
        return np.asarray(out).copy(), state.iter, state.error_dict[0].shape

    for out, n_iter, err_shape in spawn_threads(body, 2):
        np.testing.assert_allclose(out, (flat(0) + flat(1)) / 2, rtol=1e-12, atol=1e-12)
        assert n_iter == 3 and err_shape == (16,)


# ----------------------------------------------------------------------------- DDP


def train(
    rank: int,
    ws: int,
    widths: tuple[int, ...],
    hook,
    state_kwargs,
    steps: int,
    lr: float,
    ddp_kwargs: dict | None = None,
):
    model = mlp(0, *widths)
    ddp = DDP(model, bucket_cap_mb=0.0005, **(ddp_kwargs or {}))
    if hook is not None:
        ddp.register_comm_hook(PowerSGDState(None, **state_kwargs), hook)
    opt = SGD(ddp.parameters(), lr=lr)
    losses = []
    x, y = regression_data(7, 16, widths[0], widths[-1])
    for _ in range(steps):
        opt.zero_grad()
        loss = F.mse_loss(ddp(shard(x, rank, ws)), shard(y, rank, ws))
        loss.backward()
        opt.step()
        losses.append(float(loss.data))
    return [p.data.copy() for p in model.parameters()], losses


# 1 -> 8 -> 1: every weight gradient is an 8 x 1 or 1 x 8 matrix, which rank-1 PowerSGD
# reproduces exactly (min_compression_rate 0.5 lets them compress)
RANK1_STATE = dict(start_powerSGD_iter=2, min_compression_rate=0.5)


@pytest.mark.parametrize(
    "ddp_kwargs", [{}, dict(find_unused_parameters=True, gradient_as_bucket_view=True)]
)
def test_ddp_with_rank1_representable_gradients_equals_plain_ddp(ddp_kwargs) -> None:
    """With error feedback and warm start on, training equals plain DDP."""
    plain = spawn_threads(train, 2, (1, 8, 1), None, {}, 6, 0.1, ddp_kwargs)
    hooked = spawn_threads(train, 2, (1, 8, 1), powerSGD_hook, RANK1_STATE, 6, 0.1, ddp_kwargs)
    for (pp, _), (hp, _) in zip(plain, hooked, strict=True):
        for a, b in zip(pp, hp, strict=True):
            np.testing.assert_allclose(b, a, rtol=1e-9, atol=1e-12)


def test_join_with_powersgd() -> None:
    """Uneven inputs: the joined rank shadows the hook's collectives (with zero
    gradients) so the other rank finishes; replicas stay identical."""

    def body(rank: int, ws: int):
        ddp = DDP(mlp(0, 1, 8, 1))
        state = PowerSGDState(None, **RANK1_STATE)
        ddp.register_comm_hook(state, powerSGD_hook)
        opt = SGD(ddp.parameters(), lr=0.1)
        rng = np.random.default_rng(rank)
        with ddp.join():
            for _ in range(3 + 2 * rank):
                opt.zero_grad()
                F.mse_loss(ddp(rng.standard_normal((4, 1))), rng.standard_normal((4, 1))).backward()
                opt.step()
        return [p.data.copy() for p in ddp.parameters()], state.iter

    (p0, it0), (p1, it1) = spawn_threads(body, 2)
    assert it0 == it1 == 5
    for a, b in zip(p0, p1, strict=True):
        np.testing.assert_array_equal(a, b)


def test_state_pickles_without_its_group() -> None:
    def body(rank: int, ws: int):
        state = PowerSGDState(dist.group.WORLD, start_powerSGD_iter=2, random_seed=4)
        for _ in range(3):
            powerSGD_hook(state, bucket_of([np.ones((6, 6))])).wait()
        copy = pickle.loads(pickle.dumps(state))
        assert copy.process_group is None
        assert copy.iter == 3 and copy.start_powerSGD_iter == 2
        np.testing.assert_array_equal(copy.q_memory_dict[0], state.q_memory_dict[0])
        assert copy.rng.randint(1000) == state.rng.randint(1000)

    spawn_threads(body, 1)


@pytest.mark.parametrize(
    "hook,memory",
    [(powerSGD_hook, True), (powerSGD_hook, False), (batched_powerSGD_hook, True)],
)
def test_ddp_training_with_powersgd_converges(hook, memory) -> None:
    """8 -> 16 -> 4 with rank-2 compression after 3 plain steps (with or without error
    feedback and warm start): the replicas stay identical and the loss falls nearly as far
    as with plain DDP."""
    kw = dict(
        start_powerSGD_iter=3,
        matrix_approximation_rank=2,
        min_compression_rate=1,
        use_error_feedback=memory,
        warm_start=memory,
    )
    ((_, plain_losses), _) = spawn_threads(train, 2, (8, 16, 4), None, {}, 40, 0.2)
    (p0, losses0), (p1, losses1) = spawn_threads(train, 2, (8, 16, 4), hook, kw, 40, 0.2)
    for a, b in zip(p0, p1, strict=True):
        np.testing.assert_array_equal(a, b)
    for losses in (losses0, losses1):
        assert losses[-1] < 0.5 * losses[0]
        # without error feedback the dropped part of each gradient is lost: slower
        assert losses[-1] < (1.2 if memory else 1.5) * plain_losses[-1]


# ----------------------------------------------------------------------------- torch


class _TorchBucket:
    """What torch's PowerSGD hooks use of a GradBucket."""

    def __init__(self, torch, arrays: list[np.ndarray]) -> None:
        self._buf = torch.tensor(np.concatenate([a.ravel() for a in arrays]))
        self._grads, off = [], 0
        for a in arrays:
            self._grads.append(self._buf[off : off + a.size].view(a.shape))
            off += a.size

    def buffer(self):
        return self._buf

    def gradients(self):
        return self._grads

    def index(self) -> int:
        return 0

    def is_last(self) -> bool:
        return True


@pytest.fixture
def torch_world(monkeypatch):
    """A one-rank gloo world for torch's hooks (on the loopback interface only)."""
    torch = pytest.importorskip("torch")
    tdist = pytest.importorskip("torch.distributed")
    if not tdist.is_available() or not tdist.is_gloo_available():
        pytest.skip("torch without gloo")
    if tdist.is_initialized():
        pytest.skip("torch.distributed already initialised in this process")
    monkeypatch.setenv("GLOO_SOCKET_IFNAME", "lo")
    tdist.init_process_group("gloo", store=tdist.HashStore(), rank=0, world_size=1)
    try:
        yield torch
    finally:
        tdist.destroy_process_group()


SHAPES = [(6, 5), (6, 5), (4, 3, 2), (7,), (3, 3), (5, 6)]


@pytest.mark.parametrize("batch,rank", [(False, 2), (True, 2), (False, 3)])
def test_powersgd_hook_matches_torch(torch_world, batch, rank) -> None:
    """Same start P/Q memories (warm start), same gradients, world size 1: every
    iteration's output, the error and the statistics agree with torch's hook (which
    orthogonalises rank 3 by QR: the columns' signs may differ, the product does not)."""
    torch = torch_world
    from torch.distributed.algorithms.ddp_comm_hooks import powerSGD_hook as tp

    kw = dict(
        matrix_approximation_rank=rank,
        start_powerSGD_iter=2,
        min_compression_rate=1 if rank == 2 else 0.5,
        batch_tensors_with_same_shape=batch,
    )
    rng = np.random.default_rng(5)
    steps = [[rng.standard_normal(s) for s in SHAPES] for _ in range(6)]
    # compressed: (6, 5) twice, (4, 3, 2) as 4 x 6, (5, 6); at rate 0.5 also the vector
    # (as 7 x 1, rank 1); never the 3 x 3
    p_size, q_size = (42, 44) if rank == 2 else (70, 67)
    p0, q0 = rng.standard_normal(p_size), rng.standard_normal(q_size)

    ts = tp.PowerSGDState(None, **kw)
    t_out = []
    for i, g in enumerate(steps):
        if i == 2:
            ts.p_memory_dict[0] = torch.from_numpy(p0.copy())
            ts.q_memory_dict[0] = torch.from_numpy(q0.copy())
        t_out.append(tp.powerSGD_hook(ts, _TorchBucket(torch, g)).wait().numpy().copy())

    def body(rank: int, ws: int):
        s = PowerSGDState(None, **kw)
        out = []
        for i, g in enumerate(steps):
            if i == 2:
                s.p_memory_dict[0], s.q_memory_dict[0] = p0.copy(), q0.copy()
            out.append(np.asarray(powerSGD_hook(s, bucket_of(g)).wait()).copy())
        return out, s

    ((m_out, ms),) = spawn_threads(body, 1)
    for a, b in zip(m_out, t_out, strict=True):
        np.testing.assert_allclose(a, b, rtol=1e-9, atol=1e-10)
    np.testing.assert_allclose(ms.error_dict[0], ts.error_dict[0].numpy(), rtol=1e-9, atol=1e-10)
    if rank == 2:
        np.testing.assert_allclose(ms.q_memory_dict[0], ts.q_memory_dict[0].numpy(), rtol=1e-9)
    assert ms.compression_stats() == ts.compression_stats()
    assert ms.iter == ts.iter == 6


def test_batched_hook_equals_powersgd_hook_on_the_padded_square() -> None:
    """The batched hook is the layerwise hook applied to the bucket zero-padded to a square
    matrix (same memories, error feedback on the padded length). (torch 2.13's own
    batched_powerSGD_hook can't be compared: it passes a 2-D Q to its 3-D-only
    orthogonalisation and fails on every compressed iteration.)"""
    kw = dict(matrix_approximation_rank=2, start_powerSGD_iter=2, min_compression_rate=1)
    rng = np.random.default_rng(8)
    steps = [rng.standard_normal(30) for _ in range(5)]  # padded to 6 x 6
    p0, q0 = rng.standard_normal((6, 2)), rng.standard_normal((6, 2))

    def body(rank: int, ws: int):
        batched, layerwise = PowerSGDState(None, **kw), PowerSGDState(None, **kw)
        for i, g in enumerate(steps):
            if i == 2:
                batched.p_memory_dict[0], batched.q_memory_dict[0] = p0.copy(), q0.copy()
                layerwise.p_memory_dict[0] = p0.ravel().copy()
                layerwise.q_memory_dict[0] = q0.ravel().copy()
            a = np.asarray(batched_powerSGD_hook(batched, bucket_of([g])).wait()).copy()
            square = np.zeros(36)
            square[:30] = g
            b = np.asarray(powerSGD_hook(layerwise, bucket_of([square.reshape(6, 6)])).wait())
            assert a.shape == (30,)
            np.testing.assert_allclose(a, b[:30], rtol=1e-12, atol=1e-12)
        np.testing.assert_allclose(
            batched.error_dict[0], layerwise.error_dict[0], rtol=1e-12, atol=1e-12
        )
        return batched.compression_stats()

    ((rate, before, after),) = spawn_threads(body, 1)
    assert (before, after) == (3 * 30, 3 * 6 * 2 * 2)


def train_single(widths: tuple[int, ...], steps: int, lr: float) -> list[np.ndarray]:
    """The parameters after full-batch training of the model ``train`` builds."""
    model = mlp(0, *widths)
    opt = SGD(model.parameters(), lr=lr)
    x, y = regression_data(7, 16, widths[0], widths[-1])
    for _ in range(steps):
        opt.zero_grad()
        F.mse_loss(model(x), y).backward()
        opt.step()
    return [p.data.copy() for p in model.parameters()]


@pytest.mark.mpdist(world_size=2)
def test_ddp_with_powersgd_over_tcp_equals_full_batch(rank, world_size) -> None:
    """Real processes: PowerSGD DDP on rank-1-representable gradients trains exactly like
    one process on the full batch, and the replicas agree."""
    params, _ = train(rank, world_size, (1, 8, 1), powerSGD_hook, RANK1_STATE, 5, 0.1)
    ref = train_single((1, 8, 1), 5, 0.1)
    for p, q in zip(params, ref, strict=True):
        np.testing.assert_allclose(p, q, rtol=1e-9, atol=1e-12)
    flat = np.concatenate([p.ravel() for p in params])
    copies = [np.empty_like(flat) for _ in range(world_size)]
    dist.all_gather(copies, flat)
    np.testing.assert_array_equal(copies[0], copies[1])
