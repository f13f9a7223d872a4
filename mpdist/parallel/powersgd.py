"""PowerSGD gradient compression for DDP: ``PowerSGDState``, ``powerSGD_hook``, ``batched_powerSGD_hook``.

Follows torch's ``ddp_comm_hooks.powerSGD_hook`` (same names, arguments, state fields and
error texts), written on numpy. Each compressible gradient matrix ``M`` (``n x m``) is
replaced by a rank-``r`` approximation ``P Q^T``: ``P = M Q`` is all-reduced (summed) and
orthogonalised, ``Q = M^T P`` is all-reduced and averaged, and ``P Q^T`` becomes the
gradient. Tensors that would not shrink enough (vectors, small matrices) are averaged
as they are. With error feedback the local compression error is added to the next
iteration's gradient; with warm start ``Q`` is reused as the next iteration's start.
The first ``start_powerSGD_iter`` iterations are plain all-reduce.

Ordering: every collective is issued from the thread that calls the hook, in the same
order on every rank (the ``Q`` all-reduce needs ``P``'s result, so the hook waits for
``P``); only the local decompression runs in the returned Future's callback. Issuing a
collective from a completion callback could interleave differently on different ranks
with the reducer's own collectives.
"""

from __future__ import annotations

import logging
import math
from collections import defaultdict
from typing import Any

import numpy as np

from mpdist import distributed as dist
from mpdist.parallel.reducer import GradBucket, all_reduce_future
from mpdist.process_group import Future, ProcessGroup

logger = logging.getLogger(__name__)

_START_ITER_ERROR = (
    "Expect `start_powerSGD_iter` > 1 if `use_error_feedback` or `warm_start` is enabled, "
    "because PowerSGD can only be applied after the first two iterations in DDP."
)


def _orthogonalize(matrices: np.ndarray, epsilon: float = 0.0) -> None:
    """Orthonormalise the columns of each matrix of the batch ``matrices`` (``b x n x r``,
    ``r <= n``) in place, by modified Gram-Schmidt.

    With ``epsilon`` 0 an all-zero column stays zero (and is logged) instead of becoming NaN;
    otherwise ``epsilon`` is added to every column norm before dividing.
    """
    if matrices.ndim != 3 or matrices.shape[2] > matrices.shape[1]:
        raise ValueError(
            f"expected a batch of tall matrices (b x n x r, r <= n), got {matrices.shape}"
        )
    for i in range(matrices.shape[2]):
        col = matrices[:, :, i : i + 1]
        norm = np.linalg.norm(col, axis=1, keepdims=True)
        if epsilon == 0:
            zero = norm == 0
            if zero.any():
                logger.error(
                    "The matrices to be orthogonalized has at least a column of all 0s. "
                    "Please set a small value such as 1e-8 as `orthogonalization_epsilon` "
                    "in PowerSGD state."
                )
                norm = np.where(zero, 1, norm)  # the zero column divides to zero
            col /= norm
        else:
            col /= norm + epsilon
        if i + 1 < matrices.shape[2]:
            rest = matrices[:, :, i + 1 :]
            rest -= np.sum(col * rest, axis=1, keepdims=True) * col


def _should_compress(
    num_rows: int, num_cols: int, rank: int, min_compression_rate: float
) -> tuple[bool, int, int]:
    """(worth compressing, element count before, element count after compression)."""
    before = num_rows * num_cols
    after = (num_rows + num_cols) * rank
    return after * min_compression_rate < before, before, after


class PowerSGDState:
    """Hyperparameters and per-bucket memory of PowerSGD (torch's ``PowerSGDState``).

    ``matrix_approximation_rank`` is the rank ``r`` of the approximation;
    ``start_powerSGD_iter`` iterations of plain all-reduce come first (must be > 1 with
    error feedback or warm start, because the memories are keyed by bucket index);
    a matrix is compressed only if ``(n + m) * r * min_compression_rate < n * m``;
    ``orthogonalization_epsilon`` guards the Gram-Schmidt division; ``random_seed`` seeds
    the random initial ``Q``; compression statistics are logged every
    ``compression_stats_logging_frequency`` iterations; ``batch_tensors_with_same_shape``
    processes same-shaped matrices of a bucket as one stacked batch.
    ``process_group`` None means the DDP module's group.
    """

    __slots__ = [
        "process_group",
        "matrix_approximation_rank",
        "start_powerSGD_iter",
        "min_compression_rate",
        "orthogonalization_epsilon",
        "use_error_feedback",
        "warm_start",
        "batch_tensors_with_same_shape",
        "rng",
        "error_dict",
        "p_memory_dict",
        "q_memory_dict",
        "iter",
        "total_numel_before_compression",
        "total_numel_after_compression",
        "compression_stats_logging_frequency",
        "next_stats_report",
    ]

    def __init__(
        self,
        process_group: ProcessGroup | None,
        matrix_approximation_rank: int = 1,
        start_powerSGD_iter: int = 1_000,
        min_compression_rate: float = 2,
        use_error_feedback: bool = True,
        warm_start: bool = True,
        orthogonalization_epsilon: float = 0,
        random_seed: int = 0,
        compression_stats_logging_frequency: int = 10_000,
        batch_tensors_with_same_shape: bool = False,
    ) -> None:
        if process_group is not None and not isinstance(process_group, ProcessGroup):
            raise TypeError(
                "PowerSGDState process_group must be a ProcessGroup or None, "
                f"got {type(process_group).__name__}"
            )
        if (
            not isinstance(matrix_approximation_rank, int)
            or isinstance(matrix_approximation_rank, bool)
            or matrix_approximation_rank < 1
        ):
            raise ValueError(
                "PowerSGDState matrix_approximation_rank must be a positive int, "
                f"got {matrix_approximation_rank!r}"
            )
        if (use_error_feedback or warm_start) and start_powerSGD_iter <= 1:
            raise ValueError(_START_ITER_ERROR)
        self.process_group = process_group
        self.matrix_approximation_rank = matrix_approximation_rank
        self.start_powerSGD_iter = start_powerSGD_iter
        self.min_compression_rate = min_compression_rate
        self.use_error_feedback = use_error_feedback
        self.warm_start = warm_start
        self.orthogonalization_epsilon = orthogonalization_epsilon
        # Same generator and seed as torch: one randint per random Q initialisation.
        self.rng = np.random.RandomState(random_seed)
        self.error_dict: dict[int, np.ndarray] = {}
        self.p_memory_dict: dict[int, np.ndarray] = {}
        self.q_memory_dict: dict[int, np.ndarray] = {}
        self.iter = 0
        self.total_numel_before_compression = 0
        self.total_numel_after_compression = 0
        self.compression_stats_logging_frequency = max(1, compression_stats_logging_frequency)
        self.next_stats_report = 0
        self.batch_tensors_with_same_shape = batch_tensors_with_same_shape

    def __getstate__(self) -> dict[str, Any]:
        """Everything but the process group (which does not pickle)."""
        return {s: getattr(self, s) for s in self.__slots__ if s != "process_group"}

    def __setstate__(self, state: dict[str, Any]) -> None:
        """Restore a pickled state; ``process_group`` becomes None (the DDP module's group)."""
        self.process_group = None
        for slot, value in state.items():
            setattr(self, slot, value)

    def maybe_increase_iter(self, bucket: GradBucket) -> None:
        """Count an iteration when the last bucket of one is reduced."""
        if bucket.is_last():
            self.iter += 1
        if self.iter == self.start_powerSGD_iter:
            logger.info("Start to apply PowerSGD after %s iterations.", self.iter)

    def compression_stats(self) -> tuple[float, int, int]:
        """(compression rate, element count before compression, element count after)."""
        before, after = self.total_numel_before_compression, self.total_numel_after_compression
        return (before / after if after > 0 else 0, before, after)


def _report_compression_stats(bucket: GradBucket, state: PowerSGDState) -> None:
    if bucket.is_last() and state.iter >= state.next_stats_report:
        rate, before, after = state.compression_stats()
        logger.info(
            "Compression stats: iter %s, total before compression %s, "
            "total after compression %s, rate %s",
            state.iter,
            before,
            after,
            rate,
        )
        state.next_stats_report = state.iter + state.compression_stats_logging_frequency


def _check_state(state: Any) -> None:
    if not isinstance(state, PowerSGDState):
        raise TypeError(f"PowerSGD hooks need a PowerSGDState, got {type(state).__name__}")


def _group(state: PowerSGDState, bucket: GradBucket) -> ProcessGroup:
    return state.process_group if state.process_group is not None else bucket.process_group


def _plain_allreduce(pg: ProcessGroup, buffer: np.ndarray) -> Future:
    """Average ``buffer`` like ``allreduce_hook``: divide first, then all-reduce(SUM)."""
    buffer /= dist.get_world_size(pg)
    return all_reduce_future(buffer, pg).then(lambda fut: fut.value()[0])


def _add_error(state: PowerSGDState, index: int, buffer: np.ndarray) -> np.ndarray | None:
    """With error feedback: add the memorised error to ``buffer``; a copy of the result."""
    if not state.use_error_feedback:
        return None
    error = state.error_dict.get(index)
    if error is None:
        state.error_dict[index] = np.zeros_like(buffer)
    else:
        buffer += error
    return buffer.copy()


def _forget(state: PowerSGDState, index: int) -> None:
    """Without warm start, drop this bucket's P and Q (torch clears both dicts; dropping
    only our own keys leaves the same state at the end of an iteration and can't pull
    memory from under another bucket's hook that is still running)."""
    state.p_memory_dict.pop(index, None)
    state.q_memory_dict.pop(index, None)


def _random_q(state: PowerSGDState, size: int, dtype: np.dtype) -> np.ndarray:
    seed = state.rng.randint(1_000_000_000)
    return np.random.default_rng(seed).standard_normal(size).astype(dtype, copy=False)


def powerSGD_hook(state: PowerSGDState, bucket: GradBucket) -> Future:
    """Compress each large-enough gradient matrix of the bucket to rank
    ``state.matrix_approximation_rank`` (PowerSGD, https://arxiv.org/abs/1905.13727) and
    average the rest uncompressed; plain averaging for the first ``start_powerSGD_iter``
    iterations. A Future of the bucket's buffer, updated in place."""
    _check_state(state)
    pg = _group(state, bucket)
    world_size = dist.get_world_size(pg)
    buffer = bucket.buffer()
    if state.iter < state.start_powerSGD_iter:
        state.maybe_increase_iter(bucket)
        return _plain_allreduce(pg, buffer)

    index = bucket.index()
    dtype = buffer.dtype
    # torch views each gradient as (shape[0], rest); a vector becomes an n x 1 matrix, which
    # never passes the compression test.
    to_compress: list[np.ndarray] = []
    uncompressed: list[np.ndarray] = []
    p_size = q_size = 0
    for grad in bucket.gradients():
        if grad.ndim == 0:
            uncompressed.append(grad)
            state.total_numel_before_compression += 1
            state.total_numel_after_compression += 1
            continue
        n = grad.shape[0]
        m = grad.size // n if n else 0
        r = min(n, m, state.matrix_approximation_rank)
        ok, before, after = _should_compress(n, m, r, state.min_compression_rate)
        state.total_numel_before_compression += before
        if ok:
            to_compress.append(grad.reshape(n, m))
            p_size += n * r
            q_size += m * r
            state.total_numel_after_compression += after
        else:
            uncompressed.append(grad)
            state.total_numel_after_compression += before
    _report_compression_stats(bucket, state)

    # Error feedback changes the buffer, so the views above see it.
    saved = _add_error(state, index, buffer)

    # Locals from here on: another bucket's callback may change the dicts meanwhile.
    randomize = not state.warm_start or index not in state.p_memory_dict
    if randomize:
        p_mem, q_mem = np.empty(p_size, dtype=dtype), np.empty(q_size, dtype=dtype)
        state.p_memory_dict[index], state.q_memory_dict[index] = p_mem, q_mem
    else:
        p_mem, q_mem = state.p_memory_dict[index], state.q_memory_dict[index]

    # Same-shaped matrices sit next to each other in the P and Q memories (torch's layout).
    by_shape: dict[tuple[int, int], list[np.ndarray]] = defaultdict(list)
    for mat in to_compress:
        by_shape[mat.shape].append(mat)
    batches: list[tuple[np.ndarray, list[np.ndarray]]] = []  # (b x n x m, originals)
    for same_shape in by_shape.values():
        if state.batch_tensors_with_same_shape and len(same_shape) > 1:
            batches.append((np.stack(same_shape), same_shape))
        else:
            batches.extend((mat[np.newaxis], [mat]) for mat in same_shape)
    ps, qs = [], []
    p_off = q_off = 0
    for mats, _ in batches:
        b, n, m = mats.shape
        r = min(n, m, state.matrix_approximation_rank)
        ps.append(p_mem[p_off : p_off + b * n * r].reshape(b, n, r))
        qs.append(q_mem[q_off : q_off + b * m * r].reshape(b, m, r))
        p_off += b * n * r
        q_off += b * m * r
    if randomize:
        q_mem[:] = _random_q(state, q_size, dtype)
    for q in qs:
        _orthogonalize(q, state.orthogonalization_epsilon)

    flat_uncompressed = (
        np.concatenate([g.reshape(-1) for g in uncompressed])
        if uncompressed
        else np.empty(0, dtype=dtype)
    )
    unc_fut = all_reduce_future(flat_uncompressed, pg)

    for (mats, _), q, p in zip(batches, qs, ps, strict=True):
        np.matmul(mats, q, out=p)
    dist.all_reduce(p_mem, group=pg)  # the Q product needs the summed P: wait here
    for p in ps:
        _orthogonalize(p, state.orthogonalization_epsilon)
    for (mats, _), p, q in zip(batches, ps, qs, strict=True):
        np.matmul(mats.transpose(0, 2, 1), p, out=q)
    q_fut = all_reduce_future(q_mem, pg)

    def decompress(fut: Future) -> np.ndarray:
        fut.value()
        # Queued before Q on the same group, so complete; wait() re-raises its failure.
        unc_fut.wait()
        np.divide(flat_uncompressed, world_size, out=flat_uncompressed)
        off = 0
        for g in uncompressed:
            np.copyto(g, flat_uncompressed[off : off + g.size].reshape(g.shape))
            off += g.size
        np.divide(q_mem, world_size, out=q_mem)
        for (_, originals), p, q in zip(batches, ps, qs, strict=True):
            approx = np.matmul(p, q.transpose(0, 2, 1))
            for i, original in enumerate(originals):
                np.copyto(original, approx[i])
        if saved is not None:
            state.error_dict[index] = saved - buffer
        if not state.warm_start:
            _forget(state, index)
        state.maybe_increase_iter(bucket)
        return buffer

    return q_fut.then(decompress)


def batched_powerSGD_hook(state: PowerSGDState, bucket: GradBucket) -> Future:
    """Simplified PowerSGD: the whole flat bucket, zero-padded to a square matrix, is
    compressed to rank ``state.matrix_approximation_rank`` at once (faster than
    ``powerSGD_hook``, usually much less accurate unless the rank is 1). Plain averaging
    for the first ``start_powerSGD_iter`` iterations. A Future of the bucket's buffer."""
    _check_state(state)
    pg = _group(state, bucket)
    world_size = dist.get_world_size(pg)
    buffer = bucket.buffer()
    if state.iter < state.start_powerSGD_iter:
        state.maybe_increase_iter(bucket)
        return _plain_allreduce(pg, buffer)

    total = buffer.shape[0]
    side = math.ceil(math.sqrt(total))
    r = state.matrix_approximation_rank
    state.total_numel_before_compression += total
    state.total_numel_after_compression += side * r * 2
    _report_compression_stats(bucket, state)
    # The bucket's buffer cannot grow: work on a padded copy, write back the first `total`.
    padded = np.zeros(side * side, dtype=buffer.dtype)
    padded[:total] = buffer
    index = bucket.index()
    saved = _add_error(state, index, padded)
    matrix = padded.reshape(side, side)
    # The rank can't exceed the side (torch requires r <= side here; cap it instead).
    r = min(r, side)
    if not state.warm_start or index not in state.p_memory_dict:
        p = np.empty((side, r), dtype=buffer.dtype)
        q = _random_q(state, side * r, buffer.dtype).reshape(side, r)
        state.p_memory_dict[index], state.q_memory_dict[index] = p, q
    else:
        p, q = state.p_memory_dict[index], state.q_memory_dict[index]
    _orthogonalize(q[np.newaxis])
    np.matmul(matrix, q, out=p)
    dist.all_reduce(p, group=pg)  # the Q product needs the summed P: wait here
    _orthogonalize(p[np.newaxis])
    np.matmul(matrix.T, p, out=q)
    q_fut = all_reduce_future(q, pg)

    def decompress(fut: Future) -> np.ndarray:
        fut.value()
        np.divide(q, world_size, out=q)
        np.matmul(p, q.T, out=matrix)
        if saved is not None:
            state.error_dict[index] = saved - padded
        if not state.warm_start:
            _forget(state, index)
        buffer[:] = padded[:total]
        state.maybe_increase_iter(bucket)
        return buffer

    return q_fut.then(decompress)


__all__ = ["PowerSGDState", "batched_powerSGD_hook", "powerSGD_hook"]
