"""Stateless layer functions (torch.nn.functional): linear, activations, softmax, dropout,
normalization, embedding and losses."""

from __future__ import annotations

import math
import warnings
from collections.abc import Sequence
from typing import Any

import numpy as np

from mpdist.autograd import Function, Tensor
from mpdist.nn import _normalize
from mpdist.nn.conv import conv2d as conv2d  # F.conv2d lives with Conv2d
from mpdist.random import default_generator


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
        # Rows counted, not -1: with no features in or out (an empty shard of a DTensor
        # weight) numpy cannot infer a -1.
        rows = math.prod(x.shape[:-1])
        g2 = g.data.reshape(rows, w.shape[0])
        gx = (g2 @ w).reshape(x.shape) if ctx.needs_input_grad[0] else None
        gw = g2.T @ x.reshape(rows, w.shape[1]) if ctx.needs_input_grad[1] else None
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


def softmax(input: Any, dim: int | None = None, _stacklevel: int = 3, dtype: Any = None) -> Tensor:
    """``exp(x) / sum(exp(x))`` along ``dim``, computed stably (the maximum is subtracted
    first); ``dtype`` casts the input first. Rows sum to 1 and the gradient is exact.
    ``_stacklevel`` is accepted (torch's positional order) and unused."""
    x = _softmax_input("softmax", input, dtype)
    return _Softmax.apply(x, _softmax_dim("softmax", x.ndim, dim, 2))


def log_softmax(
    input: Any, dim: int | None = None, _stacklevel: int = 3, dtype: Any = None
) -> Tensor:
    """``log(softmax(x))`` along ``dim``, as ``x - max - log(sum(exp(x - max)))`` so that
    it stays finite where softmax underflows to 0. ``_stacklevel`` is accepted (torch's
    positional order) and unused."""
    x = _softmax_input("log_softmax", input, dtype)
    return _LogSoftmax.apply(x, _softmax_dim("log_softmax", x.ndim, dim, 2))


def mse_loss(input: Any, target: Any, reduction: str = "mean") -> Tensor:
    """Squared error, reduced by ``"mean"`` (default), ``"sum"`` or ``"none"``."""
    _check_reduction(reduction)
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


def sigmoid(input: Any) -> Tensor:
    """1 / (1 + exp(-input))."""
    return _t(input).sigmoid()


_erf = np.vectorize(math.erf, otypes=[np.float64])
_SQRT_2_OVER_PI = math.sqrt(2.0 / math.pi)
_GELU_CUBIC = 0.044715


class _Gelu(Function):
    """``x * Phi(x)`` (Phi: the standard normal CDF), or its tanh approximation."""

    @staticmethod
    def forward(ctx: Any, x: Tensor, approximate: str) -> np.ndarray:
        a = x.data
        if approximate == "tanh":
            t = np.tanh(_SQRT_2_OVER_PI * (a + _GELU_CUBIC * a**3))
            ctx.a, ctx.t, ctx.approximate = a, t, approximate
            return (0.5 * a * (1.0 + t)).astype(a.dtype, copy=False)
        # math.erf per element: numpy has no erf, and this one is exact to the last bit
        cdf = 0.5 * (1.0 + _erf(a / math.sqrt(2.0)))
        ctx.a, ctx.cdf, ctx.approximate = a, cdf, approximate
        return (a * cdf).astype(a.dtype, copy=False)

    @staticmethod
    def backward(ctx: Any, grad: Tensor) -> tuple[np.ndarray, None]:
        a = ctx.a
        if ctx.approximate == "tanh":
            t = ctx.t
            inner = _SQRT_2_OVER_PI * (1.0 + 3 * _GELU_CUBIC * a * a)
            d = 0.5 * (1.0 + t) + 0.5 * a * (1.0 - t * t) * inner
        else:
            d = ctx.cdf + a * np.exp(-0.5 * a * a) / math.sqrt(2.0 * math.pi)
        return (grad.data * d).astype(a.dtype, copy=False), None


def gelu(input: Any, approximate: str = "none") -> Tensor:
    """Gaussian error linear unit: exact (``"none"``) or the ``"tanh"`` approximation."""
    if approximate not in ("none", "tanh"):
        raise RuntimeError("approximate argument must be either none or tanh.")
    return _Gelu.apply(_t(input), approximate)


def dropout(input: Any, p: float = 0.5, training: bool = True, inplace: bool = False) -> Tensor:
    """Zero each element with probability ``p`` and scale the rest by ``1 / (1 - p)``; the
    identity when not ``training``. The mask comes from ``mpdist.random.default_generator()``,
    so ``manual_seed`` makes it reproducible. ``inplace`` is accepted and ignored (the
    result is always a new tensor)."""
    if not 0.0 <= p <= 1.0:
        raise ValueError(f"dropout probability has to be between 0 and 1, but got {p}")
    x = _t(input)
    if not training or p == 0.0:
        return x
    if p == 1.0:
        return x * np.zeros((), dtype=x.dtype)
    keep = default_generator().random(x.shape) >= p
    return x * (keep / (1.0 - p)).astype(x.dtype)


# ----------------------------------------------------------------- normalization
def _param_array(name: str, t: Any, count: int) -> Any:
    """A per-channel argument: None, or a Tensor/array with ``count`` elements."""
    if t is None:
        return None
    size = np.size(t.data if isinstance(t, Tensor) else t)
    if size != count:
        raise RuntimeError(f"{name} should contain {count} elements not {size}")
    return t


def batch_norm(
    input: Any,
    running_mean: Any,
    running_var: Any,
    weight: Tensor | None = None,
    bias: Tensor | None = None,
    training: bool = False,
    momentum: float = 0.1,
    eps: float = 1e-5,
) -> Tensor:
    """Normalize each channel (axis 1) of ``input``: with this batch's mean and biased
    variance when ``training`` (the running arrays, when given, are updated in place with
    ``momentum`` and the unbiased variance), else with the running statistics."""
    x = _t(input)
    if x.ndim < 2:
        raise ValueError(f"expected at least 2D input (got {x.ndim}D input)")
    c = x.shape[1]
    rm = _param_array("running_mean", running_mean, c)
    rv = _param_array("running_var", running_var, c)
    _param_array("weight", weight, c)
    _param_array("bias", bias, c)
    if training:
        if x.data.size // max(c, 1) == 1:
            raise ValueError(
                "Expected more than 1 value per channel when training, "
                f"got input size {list(x.shape)}"
            )
        return _normalize.BatchNormTrain.apply(
            x, weight, bias, _running(rm), _running(rv), float(momentum), eps, None
        )
    if rm is None or rv is None:
        raise RuntimeError("running_mean and running_var must be defined in evaluation mode")
    shape = (1, c) + (1,) * (x.ndim - 2)
    mean = np.asarray(_running(rm)).reshape(shape)
    invstd = (1.0 / np.sqrt(np.asarray(_running(rv)) + eps)).reshape(shape)
    scale: Any = invstd if weight is None else weight.reshape(shape) * invstd
    out = (x - mean) * scale
    return out if bias is None else out + bias.reshape(shape)


def _running(t: Any) -> np.ndarray | None:
    """The array a running statistic lives in (updated in place, so never a copy)."""
    if t is None or isinstance(t, np.ndarray):
        return t
    if isinstance(t, Tensor):
        return t.data
    raise TypeError(f"running statistics must be Tensors or arrays, got {type(t).__name__}")


def layer_norm(
    input: Any,
    normalized_shape: int | Sequence[int],
    weight: Tensor | None = None,
    bias: Tensor | None = None,
    eps: float = 1e-5,
) -> Tensor:
    """Normalize over the trailing ``normalized_shape`` axes of ``input`` (biased variance),
    then scale by ``weight`` and shift by ``bias`` (both of that shape) when given."""
    x = _t(input)
    shape = (normalized_shape,) if isinstance(normalized_shape, int) else tuple(normalized_shape)
    k = len(shape)
    if k == 0 or x.ndim < k or tuple(x.shape[x.ndim - k :]) != shape:
        dims = ", ".join(str(n) for n in shape)
        raise RuntimeError(
            f"Given normalized_shape={list(shape)}, expected input with shape [*, {dims}], "
            f"but got input of size{list(x.shape)}"
        )
    for name, t in (("weight", weight), ("bias", bias)):
        if t is not None and tuple(t.shape) != shape:
            raise RuntimeError(
                f"Expected {name} to be of same shape as normalized_shape, but got {name} of "
                f"shape {list(t.shape)} and normalized_shape = {list(shape)}"
            )
    return _normalize.LayerNorm.apply(x, weight, bias, k, eps)


# ----------------------------------------------------------------- embedding
class _Embedding(Function):
    """Rows of ``weight`` picked by integer indices; the gradient adds back into the rows."""

    @staticmethod
    def forward(
        ctx: Any, weight: Tensor, idx: np.ndarray, padding_idx: int | None, by_freq: bool
    ) -> np.ndarray:
        ctx.idx, ctx.shape, ctx.padding_idx, ctx.by_freq = idx, weight.shape, padding_idx, by_freq
        return weight.data[idx]

    @staticmethod
    def backward(ctx: Any, grad: Tensor) -> tuple[np.ndarray, None, None, None]:
        flat = ctx.idx.reshape(-1)
        g = grad.data.reshape(flat.size, ctx.shape[1])
        if ctx.by_freq:
            # each row's gradient divided by how often its index occurs in this batch
            g = g / np.bincount(flat, minlength=ctx.shape[0])[flat][:, None]
        gw = np.zeros(ctx.shape, dtype=grad.data.dtype)
        np.add.at(gw, flat, g)
        if ctx.padding_idx is not None:
            gw[ctx.padding_idx] = 0
        return gw, None, None, None


def _embedding_indices(input: Any, num: int) -> np.ndarray:
    idx = np.asarray(input.data if isinstance(input, Tensor) else input)
    if idx.dtype.kind not in "iu":
        raise RuntimeError(
            "Expected tensor for argument #1 'indices' to have one of the following scalar "
            f"types: Long, Int; but got {idx.dtype} instead (while checking arguments for embedding)"
        )
    if idx.size and (idx.min() < 0 or idx.max() >= num):
        raise IndexError("index out of range in self")
    return idx


def embedding(
    input: Any,
    weight: Tensor,
    padding_idx: int | None = None,
    max_norm: float | None = None,
    norm_type: float = 2.0,
    scale_grad_by_freq: bool = False,
    sparse: bool = False,
) -> Tensor:
    """``weight[input]``: one row per index. The row at ``padding_idx`` gets no gradient;
    ``max_norm`` first rescales, in place, the used rows whose ``norm_type``-norm exceeds
    it; ``scale_grad_by_freq`` divides each row's gradient by its index's count in the
    batch. ``sparse=True`` is refused: mpdist has no sparse gradients."""
    if sparse:
        raise NotImplementedError("mpdist has no sparse gradients: use sparse=False")
    num = weight.shape[0]
    idx = _embedding_indices(input, num)
    if padding_idx is not None:
        if not -num <= padding_idx < num:
            raise AssertionError("Padding_idx must be within num_embeddings")
        padding_idx %= num
    if max_norm is not None:
        _renorm_rows(weight.data, np.unique(idx), max_norm, norm_type)
    return _Embedding.apply(weight, idx, padding_idx, scale_grad_by_freq)


def _renorm_rows(w: np.ndarray, rows: np.ndarray, max_norm: float, norm_type: float) -> None:
    """Scale the ``rows`` of ``w`` whose norm exceeds ``max_norm`` down to it (in place, not
    recorded: torch's embedding_renorm_)."""
    norms = np.linalg.norm(w[rows], ord=norm_type, axis=1)
    over = norms > max_norm
    w[rows[over]] *= (max_norm / (norms[over] + 1e-7))[:, None].astype(w.dtype)


# ----------------------------------------------------------------- losses
def _check_reduction(reduction: str) -> None:
    if reduction not in ("mean", "sum", "none"):
        raise ValueError(f"{reduction} is not a valid value for reduction")


def _legacy_reduction(size_average: bool | None, reduce: bool | None, reduction: str) -> str:
    """torch's deprecated ``size_average``/``reduce`` flags, turned into a ``reduction``."""
    if size_average is None and reduce is None:
        _check_reduction(reduction)
        return reduction
    warnings.warn(
        "size_average and reduce args will be deprecated, please use reduction='"
        + ("none" if reduce is False else "sum" if size_average is False else "mean")
        + "' instead.",
        UserWarning,
        stacklevel=3,
    )
    if reduce is False:
        return "none"
    return "sum" if size_average is False else "mean"


def _check_target_shape(shape: tuple[int, ...], tshape: tuple[int, ...]) -> None:
    """Class-index targets: () for input (C,), (N,) for (N, C), (N, d1, ...) for (N, C, d1, ...)."""
    if len(shape) == 1:
        if tshape != ():
            raise RuntimeError("0D or 1D target tensor expected, multi-target not supported")
        return
    if not tshape or tshape[0] != shape[0]:
        got = tshape[0] if tshape else 1
        raise ValueError(
            f"Expected input batch_size ({shape[0]}) to match target batch_size ({got})."
        )
    if len(shape) == 2 and len(tshape) != 1:
        raise RuntimeError("0D or 1D target tensor expected, multi-target not supported")
    if len(shape) > 2 and tshape != shape[:1] + shape[2:]:
        raise RuntimeError(
            f"Expected target size {list(shape[:1] + shape[2:])}, got {list(tshape)}"
        )


def _class_weight(weight: Any, c: int) -> np.ndarray | None:
    if weight is None:
        return None
    w = np.asarray(weight.data if isinstance(weight, Tensor) else weight)
    if w.shape != (c,):
        raise RuntimeError(
            f"weight tensor should be defined either for all {c} classes or no classes but got "
            f"weight tensor of shape: {list(w.shape)}"
        )
    return w


class _NLLLoss(Function):
    """``-weight[t] * logp[i, t]`` per row of a ``(M, C)`` input, reduced; rows whose
    element weight is 0 (ignored targets) get no gradient."""

    @staticmethod
    def forward(
        ctx: Any, logp: Tensor, target: np.ndarray, w: np.ndarray, reduction: str, shape: Any
    ) -> np.ndarray:
        rows = np.arange(target.size)
        losses = -w * logp.data[rows, target]
        ctx.target, ctx.w, ctx.reduction, ctx.shape = target, w, reduction, logp.shape
        if reduction == "none":
            return losses.reshape(shape)
        if reduction == "sum":
            return np.asarray(losses.sum())
        ctx.total = w.sum()
        with np.errstate(invalid="ignore", divide="ignore"):  # all ignored: nan, as torch
            return np.asarray(losses.sum() / ctx.total)

    @staticmethod
    def backward(ctx: Any, grad: Tensor) -> tuple[Any, ...]:
        g = grad.data.reshape(-1) if ctx.reduction == "none" else grad.data
        if ctx.reduction == "mean":
            g = g / ctx.total if ctx.total != 0 else np.zeros_like(g)
        gx = np.zeros(ctx.shape, dtype=grad.data.dtype)
        gx[np.arange(ctx.target.size), ctx.target] = -ctx.w * g
        return gx, None, None, None, None


def _class_last(x: Tensor) -> Tensor:
    """``(C,)``, ``(N, C)`` or ``(N, C, d1, ...)`` as ``(M, C)``, one row per prediction."""
    if x.ndim == 1:
        return x.reshape(1, -1)
    if x.ndim > 2:
        x = x.transpose((0,) + tuple(range(2, x.ndim)) + (1,))
    return x.reshape(-1, x.shape[-1])


def _index_target(x: Tensor, target: Any) -> np.ndarray:
    t = np.asarray(target.data if isinstance(target, Tensor) else target)
    _check_target_shape(tuple(x.shape), t.shape)
    if t.dtype.kind not in "iub":
        name = "Float" if t.dtype.kind == "f" else str(t.dtype)
        raise RuntimeError(f"expected scalar type Long but found {name}")
    return t


def nll_loss(
    input: Any,
    target: Any,
    weight: Any = None,
    size_average: bool | None = None,
    ignore_index: int = -100,
    reduce: bool | None = None,
    reduction: str = "mean",
) -> Tensor:
    """Negative log-likelihood of class indices ``target`` under log-probabilities
    ``input`` (class axis 1, or 0 for a single ``(C,)`` prediction). ``weight`` rescales
    each class; targets equal to ``ignore_index`` count for nothing; ``"mean"`` divides by
    the total weight of the counted targets."""
    reduction = _legacy_reduction(size_average, reduce, reduction)
    x = _t(input)
    if x.ndim < 1:
        raise ValueError("nll_loss: input must have at least 1 dimension (the classes)")
    t = _index_target(x, target)
    c = x.shape[0 if x.ndim == 1 else 1]
    w = _class_weight(weight, c)
    flat = t.reshape(-1).astype(np.int64)
    counted = flat != ignore_index
    bad = flat[counted & ((flat < 0) | (flat >= c))]
    if bad.size:
        raise IndexError(f"Target {bad[0]} is out of bounds.")
    safe = np.where(counted, flat, 0)
    elem_w = counted.astype(x.dtype) if w is None else np.where(counted, w[safe], 0).astype(x.dtype)
    return _NLLLoss.apply(_class_last(x), safe, elem_w, reduction, t.shape)


def cross_entropy(
    input: Any,
    target: Any,
    weight: Any = None,
    size_average: bool | None = None,
    ignore_index: int = -100,
    reduce: bool | None = None,
    reduction: str = "mean",
    label_smoothing: float = 0.0,
) -> Tensor:
    """Cross entropy between the logits ``input`` (class axis 1, or 0 for a single
    prediction) and ``target``: class indices (as ``nll_loss`` of ``log_softmax``), or class
    probabilities of the input's shape. ``label_smoothing`` mixes the target with the
    uniform distribution over the classes."""
    reduction = _legacy_reduction(size_average, reduce, reduction)
    if not 0.0 <= label_smoothing <= 1.0:
        raise RuntimeError(f"label_smoothing must be between 0.0 and 1.0. Got: {label_smoothing}")
    x = _t(input)
    if x.ndim < 1:
        raise ValueError("cross_entropy: input must have at least 1 dimension (the classes)")
    axis = 0 if x.ndim == 1 else 1
    c = x.shape[axis]
    w = _class_weight(weight, c)
    wshape = (c,) + (1,) * (x.ndim - 1 - axis)
    logp = log_softmax(x, dim=axis)
    t = np.asarray(target.data if isinstance(target, Tensor) else target)
    if t.dtype.kind == "f" and t.shape == tuple(x.shape):
        if ignore_index != -100:
            raise RuntimeError("ignore_index is not supported for floating point target")
        probs = t.astype(x.dtype) * (1 - label_smoothing) + label_smoothing / c
        if w is not None:
            probs = probs * w.astype(x.dtype).reshape(wshape)
        per = -(logp * probs).sum(axis=axis)
        if reduction == "none":
            return per
        return per.sum() if reduction == "sum" else per.mean()
    t = _index_target(x, t)
    nll = nll_loss(logp, t, w, ignore_index=ignore_index, reduction=reduction)
    if label_smoothing == 0.0:
        return nll
    counted = t != ignore_index
    summed = logp if w is None else logp * w.astype(x.dtype).reshape(wshape)
    smooth = -summed.sum(axis=axis) * counted.astype(x.dtype)
    if reduction == "mean":
        total = counted.sum() if w is None else w[t[counted]].sum()
        with np.errstate(invalid="ignore", divide="ignore"):
            smooth = smooth.sum() * np.asarray(1.0 / total, dtype=x.dtype)
    elif reduction == "sum":
        smooth = smooth.sum()
    return nll * (1 - label_smoothing) + smooth * (label_smoothing / c)
