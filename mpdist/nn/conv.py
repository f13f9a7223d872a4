"""2-D convolution: ``Conv2d`` and ``conv2d``, as one autograd node over im2col + matmul.

Forward gathers every kernel window of the (padded) input into a column matrix with
``sliding_window_view`` and multiplies it by the weight, one batched matmul for all groups.
Backward gets the weight gradient from the same columns by matmul, and the input gradient
by scattering the column gradient back (col2im): one strided add per kernel offset, never a
loop over pixels. Padding (zeros, or torch's reflect/replicate/circular modes) happens
inside the node, so a convolution is a single entry in the graph.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import numpy as np
from numpy.lib.stride_tricks import sliding_window_view

from mpdist.autograd import Function, Tensor
from mpdist.nn import init
from mpdist.nn._factory import factory_dtype
from mpdist.nn.module import Module
from mpdist.nn.parameter import Parameter

__all__ = ["Conv2d", "conv2d"]

PADDING_MODES = ("zeros", "reflect", "replicate", "circular")
# torch's padding modes as numpy's np.pad modes (applied to index ranges, see _pad_indices)
_NUMPY_MODE = {"reflect": "reflect", "replicate": "edge", "circular": "wrap"}
Pair = tuple[int, int]
# (top, bottom, left, right): the rows and columns added on each side
Pads = tuple[int, int, int, int]


def _is_int(v: Any) -> bool:
    return isinstance(v, (int, np.integer)) and not isinstance(v, bool)


def _pair(name: str, value: Any) -> Pair:
    """An int or a 2-sequence of ints as a pair (torch's ``_pair``), checked."""
    if _is_int(value):
        return int(value), int(value)
    if isinstance(value, Sequence) and len(value) == 2 and all(_is_int(v) for v in value):
        return int(value[0]), int(value[1])
    raise ValueError(
        f"expected {name} to be a single integer value or a list of 2 values to match the "
        f"convolution dimensions, but got {name}={value!r}"
    )


def _same_pads(kernel: Pair, dilation: Pair) -> Pads:
    """The padding that keeps the size at stride 1: the total ``d * (k - 1)`` split with the
    odd element on the bottom/right, as torch does."""
    pads: list[int] = []
    for k, d in zip(kernel, dilation, strict=True):
        total = d * (k - 1)
        pads += [total // 2, total - total // 2]
    return pads[0], pads[1], pads[2], pads[3]


def _resolve_padding(padding: Any, kernel: Pair, stride: Pair, dilation: Pair, err: type) -> Pads:
    """``padding`` (int, pair, "same" or "valid") as explicit (top, bottom, left, right);
    ``err`` is the exception type torch raises from where this is called."""
    if isinstance(padding, str):
        if padding == "valid":
            return 0, 0, 0, 0
        if padding == "same":
            if stride != (1, 1):
                raise err("padding='same' is not supported for strided convolutions")
            return _same_pads(kernel, dilation)
        if err is ValueError:
            raise ValueError(
                f"Invalid padding string {padding!r}, should be one of {{'valid', 'same'}}"
            )
        raise err(f"Invalid padding string: {padding!r}")
    ph, pw = _pair("padding", padding)
    return ph, ph, pw, pw


def _pad_indices(n: int, lo: int, hi: int, mode: str) -> np.ndarray:
    """Which input row (or column) each padded row reads under a non-zero padding mode."""
    if mode == "reflect" and max(lo, hi) >= n:
        raise RuntimeError(
            f"Padding size should be less than the corresponding input dimension, but got: "
            f"padding ({lo}, {hi}) for a dimension of size {n} (padding_mode='reflect')"
        )
    if mode == "circular" and max(lo, hi) > n:
        raise RuntimeError(
            f"Padding value causes wrapping around more than once: padding ({lo}, {hi}) for "
            f"a dimension of size {n} (padding_mode='circular')"
        )
    return np.pad(np.arange(n), (lo, hi), mode=_NUMPY_MODE[mode])  # type: ignore[call-overload]


def _pad(x: np.ndarray, pads: Pads, mode: str) -> tuple[np.ndarray, Any]:
    """The padded input and what ``_unpad`` needs to send a gradient back."""
    top, bottom, left, right = pads
    if not any(pads):
        return x, None
    if mode == "zeros":
        return np.pad(x, ((0, 0), (0, 0), (top, bottom), (left, right))), None
    rows = _pad_indices(x.shape[2], top, bottom, mode)
    cols = _pad_indices(x.shape[3], left, right, mode)
    return x[:, :, rows[:, None], cols[None, :]], (rows, cols)


def _unpad(g: np.ndarray, shape: tuple[int, ...], pads: Pads, indices: Any) -> np.ndarray:
    """The gradient of ``_pad``: crop the zeros, or add every padded copy back to its source."""
    top, bottom, left, right = pads
    if not any(pads):
        return g
    if indices is None:
        return g[:, :, top : g.shape[2] - bottom, left : g.shape[3] - right]
    # each padded row (column) adds into the row it copies: a 0/1 matrix per axis
    rows, cols = indices
    to_rows = np.zeros((shape[2], len(rows)), dtype=g.dtype)
    to_rows[rows, np.arange(len(rows))] = 1
    to_cols = np.zeros((len(cols), shape[3]), dtype=g.dtype)
    to_cols[np.arange(len(cols)), cols] = 1
    return np.matmul(np.matmul(to_rows, g), to_cols)


class _Conv2d(Function):
    """The convolution as one node: pad, im2col, one matmul; backward by matmul and col2im."""

    @staticmethod
    def forward(
        ctx: Any,
        x: Tensor,
        w: Tensor,
        b: Tensor | None,
        stride: Pair,
        pads: Pads,
        dilation: Pair,
        groups: int,
        mode: str,
    ) -> np.ndarray:
        xd, wd = x.data, w.data
        n, c = xd.shape[:2]
        o, cg, kh, kw = wd.shape
        xp, pad_index = _pad(xd, pads, mode)
        (sh, sw), (dh, dw) = stride, dilation
        # windows: (n, c, ho, wo, kh, kw), a strided view (no copy yet)
        span = (dh * (kh - 1) + 1, dw * (kw - 1) + 1)
        win = sliding_window_view(xp, span, axis=(2, 3))[:, :, ::sh, ::sw, ::dh, ::dw]
        ho, wo = win.shape[2:4]
        # columns (n, groups, cg*kh*kw, ho*wo): the one copy of the input the matmul reads
        cols = win.transpose(0, 1, 4, 5, 2, 3).reshape(n, groups, cg * kh * kw, ho * wo)
        wmat = wd.reshape(groups, o // groups, cg * kh * kw)
        out = np.matmul(wmat, cols).reshape(n, o, ho, wo)
        if b is not None:
            out += b.data.reshape(1, o, 1, 1)
        ctx.cols, ctx.wmat, ctx.has_bias = cols, wmat, b is not None
        ctx.geometry = (xd.shape, xp.shape, pads, pad_index, stride, dilation, (kh, kw))
        return out

    @staticmethod
    def backward(ctx: Any, grad: Tensor) -> tuple[Any, ...]:
        cols, wmat = ctx.cols, ctx.wmat
        xshape, pshape, pads, pad_index, (sh, sw), (dh, dw), (kh, kw) = ctx.geometry
        n, groups, k, length = cols.shape
        g = grad.data.reshape(n, groups, wmat.shape[1], length)
        gx = gw = gb = None
        if ctx.needs_input_grad[1]:
            # sum over the batch of (og, L) @ (L, K): numpy hands each pair to BLAS as is
            gw = np.matmul(g, cols.swapaxes(-1, -2)).sum(axis=0).reshape(ctx.wmat.shape)
            gw = gw.reshape(-1, k // (kh * kw), kh, kw)
        if ctx.has_bias and ctx.needs_input_grad[2]:
            gb = grad.data.sum(axis=(0, 2, 3))
        if ctx.needs_input_grad[0]:
            ho, wo = grad.data.shape[2:]
            gcols = np.matmul(wmat.swapaxes(-1, -2), g).reshape(n, -1, kh, kw, ho, wo)
            gxp = np.zeros(pshape, dtype=gcols.dtype)
            # col2im: each kernel offset adds its slice of the column gradient back where
            # that offset's windows read the input
            for i in range(kh):
                rows = slice(i * dh, i * dh + sh * (ho - 1) + 1, sh)
                for j in range(kw):
                    gxp[:, :, rows, j * dw : j * dw + sw * (wo - 1) + 1 : sw] += gcols[:, :, i, j]
            gx = _unpad(gxp, xshape, pads, pad_index)
        return gx, gw, gb, None, None, None, None, None


def _t(x: Any) -> Tensor:
    return x if isinstance(x, Tensor) else Tensor(x)


def _conv2d(
    input: Any,
    weight: Tensor,
    bias: Tensor | None,
    stride: Pair,
    pads: Pads,
    dilation: Pair,
    groups: int,
    mode: str = "zeros",
) -> Tensor:
    """The checked convolution with explicit per-side padding (what Conv2d and conv2d share)."""
    x = _t(input)
    weight = _t(weight)
    if weight.ndim != 4:
        raise RuntimeError(
            f"conv2d: expected a 4-D weight (out_channels, in_channels/groups, kH, kW), "
            f"got weight of size {list(weight.shape)}"
        )
    if x.ndim not in (3, 4):
        raise RuntimeError(
            "Expected 3D (unbatched) or 4D (batched) input to conv2d, but got input of size: "
            f"{list(x.shape)}"
        )
    if min(stride) <= 0:
        raise RuntimeError("non-positive stride is not supported")
    if min(pads) < 0:
        raise RuntimeError("negative padding is not supported")
    if min(dilation) <= 0:
        raise RuntimeError(f"dilation should be greater than zero, but got {list(dilation)}")
    if groups <= 0:
        raise RuntimeError("non-positive groups is not supported")
    o, cg, kh, kw = weight.shape
    batched = x if x.ndim == 4 else x.reshape((1,) + x.shape)
    if batched.shape[1] != cg * groups or o % groups:
        raise RuntimeError(
            f"Given groups={groups}, weight of size {list(weight.shape)}, expected "
            f"input{list(batched.shape)} to have {cg * groups} channels, but got "
            f"{batched.shape[1]} channels instead"
        )
    if bias is not None and (bias.ndim != 1 or bias.shape[0] != o):
        raise RuntimeError(
            f"Given weight of size {list(weight.shape)}, expected bias to be 1-dimensional "
            f"with {o} elements, but got bias of size {list(bias.shape)} instead"
        )
    padded = (batched.shape[2] + pads[0] + pads[1], batched.shape[3] + pads[2] + pads[3])
    span = (dilation[0] * (kh - 1) + 1, dilation[1] * (kw - 1) + 1)
    if padded[0] < span[0] or padded[1] < span[1]:
        raise RuntimeError(
            f"Calculated padded input size per channel: ({padded[0]} x {padded[1]}). Kernel "
            f"size: ({span[0]} x {span[1]}). Kernel size can't be greater than actual input size"
        )
    dtype = np.result_type(batched.dtype, weight.dtype)
    if batched.dtype != dtype:
        batched = batched.astype(dtype)
    out = _Conv2d.apply(batched, weight, bias, stride, pads, dilation, groups, mode)
    return out if x.ndim == 4 else out.reshape(out.shape[1:])


def conv2d(
    input: Any,
    weight: Tensor,
    bias: Tensor | None = None,
    stride: Any = 1,
    padding: Any = 0,
    dilation: Any = 1,
    groups: int = 1,
) -> Tensor:
    """2-D cross-correlation of ``input`` (N, C, H, W) or (C, H, W) with ``weight``
    (out, C/groups, kH, kW), torch's ``F.conv2d``: ``padding`` is an int, a pair, "valid"
    or "same" (stride 1 only; an odd total goes on the bottom/right)."""
    stride_p = _pair("stride", stride)
    dilation_p = _pair("dilation", dilation)
    shape = _t(weight).shape
    kernel = (int(shape[-2]), int(shape[-1])) if len(shape) >= 2 else (1, 1)
    pads = _resolve_padding(padding, kernel, stride_p, dilation_p, RuntimeError)
    return _conv2d(input, weight, bias, stride_p, pads, dilation_p, groups)


class Conv2d(Module):
    """2-D convolution layer with torch's ``nn.Conv2d`` signature, parameters (``weight``
    (out, in/groups, kH, kW), ``bias`` (out,)) and initialisation. ``dtype`` defaults to
    float32; ``device`` must be the CPU (or None)."""

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        kernel_size: Any,
        stride: Any = 1,
        padding: Any = 0,
        dilation: Any = 1,
        groups: int = 1,
        bias: bool = True,
        padding_mode: str = "zeros",
        device: Any = None,
        dtype: Any = None,
    ) -> None:
        super().__init__()
        dtype = factory_dtype(device, dtype)
        if not _is_int(groups) or groups <= 0:
            raise ValueError("groups must be a positive integer")
        if in_channels % groups != 0:
            raise ValueError("in_channels must be divisible by groups")
        if out_channels % groups != 0:
            raise ValueError("out_channels must be divisible by groups")
        if padding_mode not in PADDING_MODES:
            raise ValueError(
                f"padding_mode must be one of {set(PADDING_MODES)}, but got "
                f"padding_mode='{padding_mode}'"
            )
        self.in_channels, self.out_channels, self.groups = in_channels, out_channels, groups
        self.kernel_size = _pair("kernel_size", kernel_size)
        if min(self.kernel_size) <= 0:
            raise ValueError(f"kernel_size must be positive, got {kernel_size!r}")
        self.stride = _pair("stride", stride)
        self.dilation = _pair("dilation", dilation)
        # checked here (ValueError, torch's constructor text); forward uses the explicit pads
        self._pads = _resolve_padding(
            padding, self.kernel_size, self.stride, self.dilation, ValueError
        )
        self.padding = padding if isinstance(padding, str) else _pair("padding", padding)
        self.padding_mode = padding_mode
        shape = (out_channels, in_channels // groups) + self.kernel_size
        self.weight = Parameter(np.empty(shape, dtype=dtype))
        if bias:
            self.bias = Parameter(np.empty((out_channels,), dtype=dtype))
        else:
            self.register_parameter("bias", None)
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """Weight: kaiming-uniform with a=sqrt(5); bias U(+-1/sqrt(fan_in)) (torch's)."""
        init.kaiming_uniform_(self.weight, a=math.sqrt(5))
        if self.bias is not None:
            fan_in, _ = init.calculate_fan_in_and_fan_out(self.weight)
            bound = 1 / math.sqrt(fan_in) if fan_in > 0 else 0.0
            init.uniform_(self.bias, -bound, bound)

    def forward(self, input: Any) -> Tensor:
        """Convolve ``input`` (N, C, H, W) or (C, H, W)."""
        return _conv2d(
            input,
            self.weight,
            self.bias,
            self.stride,
            self._pads,
            self.dilation,
            self.groups,
            self.padding_mode,
        )

    def extra_repr(self) -> str:
        """The sizes and every setting that differs from its default (torch's layout)."""
        s = f"{self.in_channels}, {self.out_channels}, kernel_size={self.kernel_size}, stride={self.stride}"
        if self.padding != (0, 0):
            s += f", padding={self.padding}"
        if self.dilation != (1, 1):
            s += f", dilation={self.dilation}"
        if self.groups != 1:
            s += f", groups={self.groups}"
        if self.bias is None:
            s += ", bias=False"
        if self.padding_mode != "zeros":
            s += f", padding_mode={self.padding_mode}"
        return s
