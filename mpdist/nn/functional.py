"""Stateless layer functions: ``linear``, ``relu``, ``mse_loss``."""

from __future__ import annotations

import warnings
from typing import Any

from mpdist.autograd import Tensor


def _t(x: Any) -> Tensor:
    return x if isinstance(x, Tensor) else Tensor(x)


def linear(input: Any, weight: Tensor, bias: Tensor | None = None) -> Tensor:
    """``input @ weight.T + bias`` with weight shaped ``(out, in)``."""
    out = _t(input) @ weight.T
    return out if bias is None else out + bias


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
