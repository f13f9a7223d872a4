"""Normalization as autograd Functions: batch statistics (summed across ranks when asked)
and per-sample layer statistics, each with its backward under its forward."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np

from mpdist.autograd import Function, Tensor

# Sums a float64 array across ranks, in place (SyncBatchNorm's all-reduce; None: one rank).
SumAcrossRanks = Callable[[np.ndarray], None]


def _channel_shape(ndim: int, c: int) -> tuple[int, ...]:
    """The shape that broadcasts a per-channel vector against an ``(N, C, ...)`` array."""
    return (1, c) + (1,) * (ndim - 2)


def _batch_moments(
    a: np.ndarray, axes: tuple[int, ...], sum_across_ranks: SumAcrossRanks | None
) -> tuple[int, np.ndarray, np.ndarray]:
    """Count, mean and biased variance per channel (float64), of this batch or of every
    rank's batch together."""
    c = a.shape[1]
    if sum_across_ranks is None:
        n = a.size // c if c else 0
        if n == 0:
            return 0, np.zeros(c), np.zeros(c)
        # two passes: exact even where the mean dwarfs the spread
        mean = a.mean(axis=axes, dtype=np.float64)
        centered = a - mean.reshape(_channel_shape(a.ndim, c))
        return n, mean, np.square(centered, dtype=np.float64).mean(axis=axes)
    # one all-reduce, so sums: float64 leaves E[x^2] - E[x]^2 room to cancel
    stats = np.empty(2 * c + 1, dtype=np.float64)
    stats[0] = a.size // c
    stats[1 : c + 1] = a.sum(axis=axes, dtype=np.float64)
    stats[c + 1 :] = np.square(a, dtype=np.float64).sum(axis=axes)
    sum_across_ranks(stats)
    n = int(round(stats[0]))
    mean = stats[1 : c + 1] / max(n, 1)
    return n, mean, np.maximum(stats[c + 1 :] / max(n, 1) - mean * mean, 0.0)


class BatchNormTrain(Function):
    """Batch normalization with the statistics of this batch, over every axis but 1.

    forward(x, weight, bias, running_mean, running_var, momentum, eps, sum_across_ranks)
    normalizes ``x`` and, when the running arrays are given, moves them towards the batch
    mean and unbiased variance in place. With ``sum_across_ranks`` the statistics are those
    of the batch that every rank's batch makes together: one all-reduce of ``[count, sum,
    sum of squares]`` in float64 in forward, one of ``[sum(dy), sum(dy * (x - mean))]`` in
    backward. A rank with an empty batch still takes part in both.
    """

    @staticmethod
    def forward(
        ctx: Any,
        x: Tensor,
        weight: Tensor | None,
        bias: Tensor | None,
        running_mean: np.ndarray | None,
        running_var: np.ndarray | None,
        momentum: float,
        eps: float,
        sum_across_ranks: SumAcrossRanks | None,
    ) -> np.ndarray:
        a = x.data
        c = a.shape[1]
        axes = (0,) + tuple(range(2, a.ndim))
        n, mean, var = _batch_moments(a, axes, sum_across_ranks)
        invstd = 1.0 / np.sqrt(var + eps)
        if running_mean is not None and running_var is not None and n > 0:
            # an empty global batch says nothing about the data: the running stats stay
            unbiased = var * (n / (n - 1)) if n > 1 else var
            running_mean *= 1 - momentum
            running_mean += momentum * mean
            running_var *= 1 - momentum
            running_var += momentum * unbiased
        shape = _channel_shape(a.ndim, c)
        out_dtype = np.result_type(a.dtype, *(t.dtype for t in (weight, bias) if t is not None))
        scale = (invstd if weight is None else invstd * weight.data).reshape(shape)
        # centred first: a * scale - mean * scale would cancel where the mean dwarfs the spread
        out = (a - mean.reshape(shape)) * scale
        if bias is not None:
            out += bias.data.reshape(shape)
        ctx.x, ctx.weight, ctx.count, ctx.axes = a, weight, n, axes
        ctx.bias_dtype = None if bias is None else bias.dtype
        ctx.mean, ctx.invstd, ctx.sum_across_ranks = mean, invstd, sum_across_ranks
        return out.astype(out_dtype, copy=False)

    @staticmethod
    def backward(ctx: Any, grad: Tensor) -> tuple[Any, ...]:
        a, g, axes = ctx.x, grad.data, ctx.axes
        c = a.shape[1]
        shape = _channel_shape(a.ndim, c)
        mean, invstd = ctx.mean, ctx.invstd
        centered = a - mean.reshape(shape)
        sums = np.empty(2 * c, dtype=np.float64)
        sums[:c] = g.sum(axis=axes, dtype=np.float64)
        sums[c:] = (g * centered).sum(axis=axes, dtype=np.float64)
        # weight and bias gradients are this rank's own (DDP sums them across ranks)
        gw = (sums[c:] * invstd).astype(ctx.weight.dtype) if ctx.weight is not None else None
        gb = sums[:c].astype(ctx.bias_dtype) if ctx.bias_dtype is not None else None
        gx = None
        if ctx.needs_input_grad[0]:
            local = sums.copy()
            if ctx.sum_across_ranks is not None:
                ctx.sum_across_ranks(local)
            n = max(ctx.count, 1)
            w = invstd if ctx.weight is None else invstd * ctx.weight.data
            sum_dy, sum_dy_xmu = local[:c] / n, local[c:] * invstd * invstd / n
            gx = w.reshape(shape) * (
                g - sum_dy.reshape(shape) - centered * sum_dy_xmu.reshape(shape)
            )
            gx = gx.astype(a.dtype, copy=False)
        return gx, gw, gb, None, None, None, None, None


class LayerNorm(Function):
    """Layer normalization over the last ``ndims`` axes of each sample (biased variance).

    forward(x, weight, bias, ndims, eps); weight and bias, when given, have the shape of
    those axes.
    """

    @staticmethod
    def forward(
        ctx: Any, x: Tensor, weight: Tensor | None, bias: Tensor | None, ndims: int, eps: float
    ) -> np.ndarray:
        a = x.data
        axes = tuple(range(a.ndim - ndims, a.ndim))
        mean = a.mean(axis=axes, keepdims=True)
        centered = a - mean
        invstd = 1.0 / np.sqrt((centered * centered).mean(axis=axes, keepdims=True) + eps)
        xhat = centered * invstd
        out = xhat
        if weight is not None:
            out = out * weight.data
        if bias is not None:
            out = out + bias.data
        ctx.xhat, ctx.invstd, ctx.axes, ctx.weight = xhat, invstd, axes, weight
        ctx.has_bias = bias is not None
        return out

    @staticmethod
    def backward(ctx: Any, grad: Tensor) -> tuple[Any, ...]:
        g, xhat, axes = grad.data, ctx.xhat, ctx.axes
        lead = tuple(range(g.ndim - len(axes)))
        gw = (g * xhat).sum(axis=lead) if ctx.weight is not None else None
        gb = g.sum(axis=lead) if ctx.has_bias else None
        gx = None
        if ctx.needs_input_grad[0]:
            gxhat = g if ctx.weight is None else g * ctx.weight.data
            gx = ctx.invstd * (
                gxhat
                - gxhat.mean(axis=axes, keepdims=True)
                - xhat * (gxhat * xhat).mean(axis=axes, keepdims=True)
            )
        return gx, gw, gb, None, None
