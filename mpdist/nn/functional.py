"""Stateless layer functions: ``linear``, ``relu``, ``mse_loss``."""

from __future__ import annotations

import warnings
from typing import Any

import numpy as np

from mpdist.autograd import Function, Tensor


def _t(x: Any) -> Tensor:
    return x if isinstance(x, Tensor) else Tensor(x)


class _Linear(Function):
    """One node for the affine map, so the weight gradient comes out as one contiguous
    ``g.T @ x`` instead of the transpose of a transposed product."""

    @staticmethod
    def forward(ctx: Any, x: Tensor, w: Tensor, b: Tensor | None = None) -> np.ndarray:
        ctx.x, ctx.w, ctx.has_bias = x.data, w.data, b is not None
        out = x.data @ w.data.T
        if b is not None:
            out += b.data
        return out

    @staticmethod
    def backward(ctx: Any, g: Tensor) -> tuple[Any, ...]:
        x, w = ctx.x, ctx.w
        g2 = g.data.reshape(-1, w.shape[0])
        gx = (g2 @ w).reshape(x.shape) if ctx.needs_input_grad[0] else None
        gw = g2.T @ x.reshape(-1, w.shape[1]) if ctx.needs_input_grad[1] else None
        gb = g2.sum(axis=0) if ctx.has_bias and ctx.needs_input_grad[2] else None
        return gx, gw, gb


def linear(input: Any, weight: Tensor, bias: Tensor | None = None) -> Tensor:
    """``input @ weight.T + bias`` with weight shaped ``(out, in)``; input ``(..., in)``."""
    x = _t(input)
    if x.ndim == 0 or x.shape[-1] != weight.shape[1]:
        raise ValueError(
            f"linear: input has shape {x.shape}, but the weight {weight.shape} expects (..., {weight.shape[1]})"
        )
    if x.dtype != weight.dtype:
        x = x.astype(np.result_type(x.dtype, weight.dtype))
    if bias is None:
        return _Linear.apply(x, weight)
    return _Linear.apply(x, weight, bias)


def relu(input: Any) -> Tensor:
    """max(input, 0)."""
    return _t(input).relu()


def mse_loss(input: Any, target: Any, reduction: str = "mean") -> Tensor:
    """Squared error, reduced by ``"mean"`` (default), ``"sum"`` or ``"none"``."""
    if reduction not in ("mean", "sum", "none"):
        raise ValueError(f"{reduction} is not a valid value for reduction")
    input, target = _t(input), _t(target)
    if input.shape != target.shape:
        warnings.warn(
            f"Using a target size ({target.shape}) that is different to the input size "
            f"({input.shape}). This will likely lead to incorrect results due to broadcasting.",
            stacklevel=2,
        )
    diff = input - target
    sq = diff * diff
    if reduction == "mean":
        return sq.mean()
    return sq.sum() if reduction == "sum" else sq
