"""Stateless layer functions: ``linear``, ``relu``, ``softmax``, ``log_softmax``, ``mse_loss``."""

from __future__ import annotations

import warnings
from typing import Any

import numpy as np

from mpdist.autograd import Function, Tensor
from mpdist.nn.conv import conv2d as conv2d  # F.conv2d lives with Conv2d


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


def _softmax_dim(name: str, ndim: int, dim: int | None, stacklevel: int) -> int:
    """The axis softmax normalises over: ``dim`` checked against ``ndim`` (a 0-d input has
    one, as in torch), or torch's legacy implicit choice with its deprecation warning."""
    if dim is None:
        warnings.warn(
            f"Implicit dimension choice for {name} has been deprecated. "
            "Change the call to include dim=X as an argument.",
            stacklevel=stacklevel + 1,
        )
        return 0 if ndim in (0, 1, 3) else 1
    if not isinstance(dim, (int, np.integer)) or isinstance(dim, bool):
        raise TypeError(f"{name}: dim must be an int, got {type(dim).__name__}")
    span = max(ndim, 1)
    if not -span <= dim < span:
        raise IndexError(
            f"Dimension out of range (expected to be in range of [{-span}, {span - 1}], but got {dim})"
        )
    return int(dim) % span


def _softmax_input(name: str, input: Any, dtype: Any) -> Tensor:
    x = _t(input)
    if dtype is not None:
        x = x.astype(dtype)
    if x.dtype.kind not in "fc" or x.dtype.kind == "c":
        raise TypeError(f"{name}: expected a floating point input, got {x.dtype} (pass dtype=)")
    return x


def _shifted(a: np.ndarray, axis: int) -> np.ndarray:
    """``a`` minus its maximum along ``axis``: every exponent is <= 0, so exp cannot overflow
    and at least one term of each sum is exactly 1 (the log of the sum is finite)."""
    return a - a.max(axis=axis, keepdims=True)


class _Softmax(Function):
    """Softmax as one node. A 0-d input is handled as shape (1,), its only axis."""

    @staticmethod
    def forward(ctx: Any, x: Tensor, axis: int) -> np.ndarray:
        e = np.exp(_shifted(x.data.reshape(x.shape or (1,)), axis))
        ctx.s, ctx.axis, ctx.shape = e / e.sum(axis=axis, keepdims=True), axis, x.shape
        return ctx.s.reshape(x.shape)

    @staticmethod
    def backward(ctx: Any, g: Tensor) -> tuple[np.ndarray, None]:
        # d softmax . g = s * (g - <g, s>), the inner product taken along the axis.
        s = ctx.s
        g1 = g.data.reshape(s.shape)
        return (s * (g1 - (g1 * s).sum(axis=ctx.axis, keepdims=True))).reshape(ctx.shape), None


class _LogSoftmax(Function):
    """Log-softmax as one node; 0-d handled as in ``_Softmax``."""

    @staticmethod
    def forward(ctx: Any, x: Tensor, axis: int) -> np.ndarray:
        z = _shifted(x.data.reshape(x.shape or (1,)), axis)
        ctx.ls = z - np.log(np.exp(z).sum(axis=axis, keepdims=True))
        ctx.axis, ctx.shape = axis, x.shape
        return ctx.ls.reshape(x.shape)

    @staticmethod
    def backward(ctx: Any, g: Tensor) -> tuple[np.ndarray, None]:
        # d log_softmax . g = g - softmax * sum(g), the sum taken along the axis.
        g1 = g.data.reshape(ctx.ls.shape)
        grad = g1 - np.exp(ctx.ls) * g1.sum(axis=ctx.axis, keepdims=True)
        return grad.reshape(ctx.shape), None


def softmax(input: Any, dim: int | None = None, dtype: Any = None) -> Tensor:
    """``exp(x) / sum(exp(x))`` along ``dim``, computed stably (the maximum is subtracted
    first); ``dtype`` casts the input first. Rows sum to 1 and the gradient is exact."""
    x = _softmax_input("softmax", input, dtype)
    return _Softmax.apply(x, _softmax_dim("softmax", x.ndim, dim, 2))


def log_softmax(input: Any, dim: int | None = None, dtype: Any = None) -> Tensor:
    """``log(softmax(x))`` along ``dim``, as ``x - max - log(sum(exp(x - max)))`` so that
    it stays finite where softmax underflows to 0."""
    x = _softmax_input("log_softmax", input, dtype)
    return _LogSoftmax.apply(x, _softmax_dim("log_softmax", x.ndim, dim, 2))


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
