"""Recurrent layers: ``LSTM`` and ``LSTMCell``, each direction of each layer one autograd node.

A layer's pass over the whole sequence is one ``Function``: forward projects the inputs of
all time steps with one matmul, then runs the recurrence in numpy, keeping the gate
activations; backward runs backpropagation through time over those stored gates and gets
the weight gradients with one matmul each. The graph therefore has a handful of nodes per
layer, not one per gate per step. Gate order, parameter names and initialisation are
torch's: rows of the weights are the input, forget, cell and output gates (i, f, g, o).
"""

from __future__ import annotations

import math
import warnings
from typing import Any

import numpy as np

from mpdist.autograd import Function, Tensor, cat, stack
from mpdist.nn import init
from mpdist.nn._factory import factory_dtype
from mpdist.nn.module import Module
from mpdist.nn.parameter import Parameter
from mpdist.random import default_generator

__all__ = ["LSTM", "LSTMCell"]


def _gate_constants(hidden: int, dtype: Any) -> tuple[np.ndarray, np.ndarray]:
    """(scale, shift) over the 4*hidden gate columns such that ``scale * tanh(scale * z) +
    shift`` is sigmoid(z) on the i, f, o columns (sigmoid(z) = (1 + tanh(z / 2)) / 2) and
    tanh(z) on the g columns: all four gates with one tanh call per step."""
    scale = np.full(4 * hidden, 0.5, dtype=dtype)
    scale[2 * hidden : 3 * hidden] = 1.0
    shift = np.full(4 * hidden, 0.5, dtype=dtype)
    shift[2 * hidden : 3 * hidden] = 0.0
    return scale, shift


class _LSTMLayer(Function):
    """One direction of one LSTM layer over a whole time-major sequence (T, B, in).

    Outputs: every step's hidden state (T, B, H), and the last hidden and cell states.
    ``reverse`` runs the sequence back to front (outputs stay in input order).
    """

    @staticmethod
    def forward(
        ctx: Any,
        x: Tensor,
        h0: Tensor | None,
        c0: Tensor | None,
        w_ih: Tensor,
        w_hh: Tensor,
        b_ih: Tensor | None,
        b_hh: Tensor | None,
        reverse: bool,
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        xs = x.data[::-1] if reverse else x.data
        steps, batch, n_in = xs.shape
        hidden = w_hh.shape[1]
        dtype = xs.dtype
        scale, shift = _gate_constants(hidden, dtype)
        # Every step's input projection at once; the biases and the tanh trick's scale are
        # folded in here rather than per step.
        acts = np.matmul(xs.reshape(steps * batch, n_in), w_ih.data.T)
        if b_ih is not None:
            acts += b_ih.data
        if b_hh is not None:
            acts += b_hh.data
        acts *= scale
        acts = acts.reshape(steps, batch, 4 * hidden)
        w_rec = np.ascontiguousarray((w_hh.data * scale[:, None]).T)  # (H, 4H), scaled
        hs = np.empty((steps + 1, batch, hidden), dtype=dtype)  # hs[t + 1]: after step t
        cs = np.empty((steps + 1, batch, hidden), dtype=dtype)
        tanh_c = np.empty((steps, batch, hidden), dtype=dtype)
        hs[0] = 0 if h0 is None else h0.data
        cs[0] = 0 if c0 is None else c0.data
        rec = np.empty((batch, 4 * hidden), dtype=dtype)
        ig = np.empty((batch, hidden), dtype=dtype)
        g_lo, g_hi = 2 * hidden, 3 * hidden
        for t in range(steps):
            a = acts[t]  # becomes the gate activations (i, f, g, o) in place
            np.matmul(hs[t], w_rec, out=rec)
            a += rec
            np.tanh(a, out=a)
            a *= scale
            a += shift
            np.multiply(a[:, hidden:g_lo], cs[t], out=cs[t + 1])
            np.multiply(a[:, :hidden], a[:, g_lo:g_hi], out=ig)
            cs[t + 1] += ig
            np.tanh(cs[t + 1], out=tanh_c[t])
            np.multiply(a[:, g_hi:], tanh_c[t], out=hs[t + 1])
        ctx.saved = (xs, acts, hs, cs, tanh_c, w_ih.data, w_hh.data)
        ctx.reverse, ctx.has_bias = reverse, (b_ih is not None, b_hh is not None)
        out = hs[1:]
        return (out[::-1] if reverse else out), hs[steps].copy(), cs[steps].copy()

    @staticmethod
    def backward(ctx: Any, g_out: Tensor, g_hn: Tensor, g_cn: Tensor) -> tuple[Any, ...]:
        xs, acts, hs, cs, tanh_c, w_ih, w_hh = ctx.saved
        steps, batch, four_h = acts.shape
        hidden = four_h // 4
        g_lo, g_hi = 2 * hidden, 3 * hidden
        gout = g_out.data[::-1] if ctx.reverse else g_out.data
        # What does not depend on the recurrence, for all steps at once: the derivative of
        # each gate's activation (sigmoid' = a (1 - a), tanh' = 1 - a^2) and o * tanh'(c).
        is_sig = np.ones(four_h, dtype=acts.dtype)
        is_sig[g_lo:g_hi] = 0
        d_act = acts * (is_sig - acts)
        d_act += 1 - is_sig
        o_dtanh = acts[:, :, g_hi:] * (1 - tanh_c * tanh_c)
        d_pre = np.empty_like(acts)  # gradient w.r.t. the gates' pre-activations
        dh = g_hn.data.copy()
        dc = g_cn.data.copy()
        tmp = np.empty_like(dh)
        for t in range(steps - 1, -1, -1):
            a, d = acts[t], d_pre[t]
            dh += gout[t]
            np.multiply(dh, tanh_c[t], out=d[:, g_hi:])  # d o
            np.multiply(dh, o_dtanh[t], out=tmp)
            dc += tmp
            np.multiply(dc, a[:, g_lo:g_hi], out=d[:, :hidden])  # d i
            np.multiply(dc, cs[t], out=d[:, hidden:g_lo])  # d f
            np.multiply(dc, a[:, :hidden], out=d[:, g_lo:g_hi])  # d g
            dc *= a[:, hidden:g_lo]
            d *= d_act[t]
            np.matmul(d, w_hh, out=dh)
        flat = d_pre.reshape(steps * batch, four_h)
        need = ctx.needs_input_grad
        gx = None
        if need[0]:
            gx = np.matmul(flat, w_ih).reshape(xs.shape)
            gx = gx[::-1] if ctx.reverse else gx
        gw_ih = flat.T @ xs.reshape(steps * batch, -1) if need[3] else None
        gw_hh = flat.T @ hs[:-1].reshape(steps * batch, hidden) if need[4] else None
        gb = flat.sum(axis=0) if (need[5] or need[6]) else None
        return (
            gx,
            dh if need[1] else None,
            dc if need[2] else None,
            gw_ih,
            gw_hh,
            gb if need[5] else None,
            gb if need[6] else None,
            None,
        )


def _t(x: Any) -> Tensor:
    return x if isinstance(x, Tensor) else Tensor(x)


def _check_dropout(dropout: Any, num_layers: int) -> float:
    if (
        isinstance(dropout, bool)
        or not isinstance(dropout, (int, float, np.floating, np.integer))
        or not 0 <= dropout <= 1
    ):
        raise ValueError(
            "dropout should be a number in range [0, 1] representing the probability of an "
            "element being zeroed"
        )
    if dropout > 0 and num_layers == 1:
        warnings.warn(
            "dropout option adds dropout after all but last recurrent layer, so non-zero "
            f"dropout expects num_layers greater than 1, but got dropout={dropout} and "
            f"num_layers={num_layers}",
            stacklevel=3,
        )
    return float(dropout)


class LSTM(Module):
    """A multi-layer LSTM with torch's ``nn.LSTM`` signature, parameter names
    (``weight_ih_l{k}``, ``weight_hh_l{k}``, ``bias_ih_l{k}``, ``bias_hh_l{k}``, plus
    ``_reverse`` for the backward direction), initialisation (U(+-1/sqrt(hidden_size))) and
    call: ``output, (h_n, c_n) = lstm(input, (h_0, c_0))``. ``proj_size`` must be 0."""

    def __init__(
        self,
        input_size: int,
        hidden_size: int,
        num_layers: int = 1,
        bias: bool = True,
        batch_first: bool = False,
        dropout: float = 0.0,
        bidirectional: bool = False,
        proj_size: int = 0,
        device: Any = None,
        dtype: Any = None,
    ) -> None:
        super().__init__()
        if not isinstance(hidden_size, (int, np.integer)) or hidden_size <= 0:
            raise ValueError("hidden_size must be greater than zero")
        if not isinstance(num_layers, (int, np.integer)) or num_layers <= 0:
            raise ValueError("num_layers must be greater than zero")
        if proj_size < 0:
            raise ValueError(
                "proj_size should be a positive integer or zero to disable projections"
            )
        if proj_size >= hidden_size:
            raise ValueError("proj_size has to be smaller than hidden_size")
        if proj_size != 0:
            raise NotImplementedError("mpdist's LSTM does not support projections (proj_size > 0)")
        self.mode = "LSTM"
        self.input_size, self.hidden_size, self.num_layers = input_size, hidden_size, num_layers
        self.bias, self.batch_first = bias, batch_first
        self.dropout = _check_dropout(dropout, num_layers)
        self.bidirectional, self.proj_size = bidirectional, proj_size
        dtype = factory_dtype(device, dtype)
        directions = 2 if bidirectional else 1
        self._flat_weights_names: list[str] = []
        for layer in range(num_layers):
            layer_in = input_size if layer == 0 else hidden_size * directions
            for suffix in ("", "_reverse")[:directions]:
                shapes: dict[str, tuple[int, ...]] = {
                    "weight_ih": (4 * hidden_size, layer_in),
                    "weight_hh": (4 * hidden_size, hidden_size),
                }
                if bias:
                    shapes.update(bias_ih=(4 * hidden_size,), bias_hh=(4 * hidden_size,))
                for kind, shape in shapes.items():
                    name = f"{kind}_l{layer}{suffix}"
                    setattr(self, name, Parameter(np.empty(shape, dtype=dtype)))
                    self._flat_weights_names.append(name)
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """Every weight and bias from U(-1/sqrt(hidden_size), 1/sqrt(hidden_size))."""
        bound = 1.0 / math.sqrt(self.hidden_size)
        for p in self.parameters():
            init.uniform_(p, -bound, bound)

    def flatten_parameters(self) -> None:
        """Accepted for torch compatibility: there is no cuDNN weight buffer to compact."""

    @property
    def all_weights(self) -> list[list[Parameter]]:
        """The parameters per layer and direction, as torch lists them."""
        per = 4 if self.bias else 2
        flat = [getattr(self, n) for n in self._flat_weights_names]
        return [flat[i : i + per] for i in range(0, len(flat), per)]

    def _layer_params(self, layer: int, suffix: str) -> list[Any]:
        names = ("weight_ih", "weight_hh", "bias_ih", "bias_hh")
        return [getattr(self, f"{n}_l{layer}{suffix}", None) for n in names]

    def _check_hx(self, hx: Any, batched: bool, batch: int) -> tuple[Tensor, Tensor] | None:
        if hx is None:
            return None
        if not isinstance(hx, (tuple, list)) or len(hx) != 2:
            raise RuntimeError("LSTM expects hx as a tuple (h_0, c_0)")
        h0, c0 = _t(hx[0]), _t(hx[1])
        dims = 3 if batched else 2
        if h0.ndim != dims or c0.ndim != dims:
            kind = "batched 3-D" if batched else "unbatched 2-D"
            raise RuntimeError(
                f"For {kind} input, hx and cx should also be {dims}-D but got "
                f"({h0.ndim}-D, {c0.ndim}-D) tensors"
            )
        if not batched:
            h0, c0 = h0.unsqueeze(1), c0.unsqueeze(1)
        expected = (self.num_layers * (2 if self.bidirectional else 1), batch, self.hidden_size)
        for i, t in enumerate((h0, c0)):
            if t.shape != expected:
                raise RuntimeError(f"Expected hidden[{i}] size {expected}, got {list(t.shape)}")
        return h0, c0

    def forward(self, input: Any, hx: Any = None) -> tuple[Tensor, tuple[Tensor, Tensor]]:
        """Run the sequence; returns ``output`` ((T, B, D*H), or (B, T, D*H) with
        batch_first, or (T, D*H) unbatched) and ``(h_n, c_n)`` ((D*layers, B, H))."""
        x = _t(input)
        if x.ndim not in (2, 3):
            raise ValueError(f"LSTM: Expected input to be 2D or 3D, got {x.ndim}D instead")
        if x.shape[-1] != self.input_size:
            raise RuntimeError(
                f"input.size(-1) must be equal to input_size. Expected {self.input_size}, "
                f"got {x.shape[-1]}"
            )
        batched = x.ndim == 3
        if not batched:
            x = x.unsqueeze(1)
        elif self.batch_first:
            x = x.swapaxes(0, 1)
        if x.shape[0] == 0:
            raise RuntimeError("Expected sequence length to be larger than 0 in RNN")
        state = self._check_hx(hx, batched, x.shape[1])
        dtype = np.result_type(x.dtype, self.weight_ih_l0.dtype)
        if x.dtype != dtype:
            x = x.astype(dtype)
        directions = ("", "_reverse") if self.bidirectional else ("",)
        h_n: list[Tensor] = []
        c_n: list[Tensor] = []
        for layer in range(self.num_layers):
            outs = []
            for d, suffix in enumerate(directions):
                k = layer * len(directions) + d
                h0, c0 = (None, None) if state is None else (state[0][k], state[1][k])
                out, h, c = _LSTMLayer.apply(x, h0, c0, *self._layer_params(layer, suffix), d == 1)
                outs.append(out)
                h_n.append(h)
                c_n.append(c)
            x = outs[0] if len(outs) == 1 else cat(outs, axis=2)
            if self.dropout > 0 and self.training and layer < self.num_layers - 1:
                # kept elements scaled by 1 / (1 - p), as torch; p = 1 zeroes everything
                keep = default_generator().random(x.shape) >= self.dropout
                scale = 1.0 / (1.0 - self.dropout) if self.dropout < 1 else 0.0
                x = x * (keep * scale).astype(x.dtype)
        hn, cn = stack(h_n), stack(c_n)
        if not batched:
            return x.squeeze(1), (hn.squeeze(1), cn.squeeze(1))
        return (x.swapaxes(0, 1) if self.batch_first else x), (hn, cn)

    def extra_repr(self) -> str:
        """The sizes and every setting that differs from its default (torch's layout)."""
        s = f"{self.input_size}, {self.hidden_size}"
        if self.num_layers != 1:
            s += f", num_layers={self.num_layers}"
        if not self.bias:
            s += ", bias=False"
        if self.batch_first:
            s += ", batch_first=True"
        if self.dropout:
            s += f", dropout={self.dropout}"
        if self.bidirectional:
            s += ", bidirectional=True"
        return s


class LSTMCell(Module):
    """One LSTM step with torch's ``nn.LSTMCell`` signature and parameters (``weight_ih``,
    ``weight_hh``, ``bias_ih``, ``bias_hh``): ``h_1, c_1 = cell(input, (h_0, c_0))``."""

    def __init__(
        self,
        input_size: int,
        hidden_size: int,
        bias: bool = True,
        device: Any = None,
        dtype: Any = None,
    ) -> None:
        super().__init__()
        self.input_size, self.hidden_size, self.bias = input_size, hidden_size, bias
        dtype = factory_dtype(device, dtype)
        self.weight_ih = Parameter(np.empty((4 * hidden_size, input_size), dtype=dtype))
        self.weight_hh = Parameter(np.empty((4 * hidden_size, hidden_size), dtype=dtype))
        if bias:
            self.bias_ih = Parameter(np.empty((4 * hidden_size,), dtype=dtype))
            self.bias_hh = Parameter(np.empty((4 * hidden_size,), dtype=dtype))
        else:
            self.register_parameter("bias_ih", None)
            self.register_parameter("bias_hh", None)
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """Every weight and bias from U(-1/sqrt(hidden_size), 1/sqrt(hidden_size))."""
        bound = 1.0 / math.sqrt(self.hidden_size) if self.hidden_size > 0 else 0.0
        for p in self.parameters():
            init.uniform_(p, -bound, bound)

    def forward(self, input: Any, hx: Any = None) -> tuple[Tensor, Tensor]:
        """One step: ``input`` (B, in) or (in,), ``hx`` = (h_0, c_0) or None (zeros)."""
        x = _t(input)
        if x.ndim not in (1, 2):
            raise ValueError(f"LSTMCell: Expected input to be 1D or 2D, got {x.ndim}D instead")
        if x.shape[-1] != self.input_size:
            raise RuntimeError(
                f"input has inconsistent input_size: got {x.shape[-1]} expected {self.input_size}"
            )
        batched = x.ndim == 2
        h0 = c0 = None
        if hx is not None:
            h0, c0 = _t(hx[0]), _t(hx[1])
            for i, t in enumerate((h0, c0)):
                if t.ndim != x.ndim:
                    raise RuntimeError(
                        f"LSTMCell: Expected hx[{i}] to be {x.ndim}D like the input, got "
                        f"{t.ndim}D instead"
                    )
            if not batched:
                x, h0, c0 = x.unsqueeze(0), h0.unsqueeze(0), c0.unsqueeze(0)
            for i, t in enumerate((h0, c0)):
                if t.shape[0] != x.shape[0]:
                    raise RuntimeError(
                        f"Input batch size {x.shape[0]} doesn't match hidden{i} batch size "
                        f"{t.shape[0]}"
                    )
                if t.shape[1] != self.hidden_size:
                    raise RuntimeError(
                        f"hidden{i} has inconsistent hidden_size: got {t.shape[1]}, expected "
                        f"{self.hidden_size}"
                    )
        elif not batched:
            x = x.unsqueeze(0)
        dtype = np.result_type(x.dtype, self.weight_ih.dtype)
        if x.dtype != dtype:
            x = x.astype(dtype)
        params = (self.weight_ih, self.weight_hh, self.bias_ih, self.bias_hh)
        _, h, c = _LSTMLayer.apply(x.unsqueeze(0), h0, c0, *params, False)
        return (h, c) if batched else (h.squeeze(0), c.squeeze(0))

    def extra_repr(self) -> str:
        """The sizes, and bias=False when there is none."""
        return f"{self.input_size}, {self.hidden_size}" + ("" if self.bias else ", bias=False")
