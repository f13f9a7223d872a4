"""Functions that build a tensor from data or from several tensors: ``tensor``, ``stack``,
``cat`` (the joins are recorded, each backward right under its forward)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from mpdist.autograd._tensor import Tensor, _make
from mpdist.autograd._tensor_base import _raw


def tensor(data: Any, requires_grad: bool = False, dtype: Any = None) -> Tensor:
    """A new leaf tensor holding a copy of ``data``."""
    raw = data.data if isinstance(data, Tensor) else data
    return Tensor(np.array(raw, dtype=dtype, copy=True), requires_grad=requires_grad)


def stack(tensors: Sequence[Any], axis: int = 0, *, dim: int | None = None) -> Tensor:
    """Join same-shape tensors along a new axis."""
    axis = axis if dim is None else dim
    ts = [t if isinstance(t, Tensor) else Tensor(_raw(t)) for t in tensors]
    out = np.stack([t.data for t in ts], axis=axis)
    ax = axis % out.ndim

    def backward(g: np.ndarray) -> list[np.ndarray]:
        return [np.take(g, i, axis=ax) for i in range(len(ts))]

    return _make(out, ts, backward, "stack")


def cat(tensors: Sequence[Any], axis: int = 0, *, dim: int | None = None) -> Tensor:
    """Join tensors along an existing axis."""
    axis = axis if dim is None else dim
    ts = [t if isinstance(t, Tensor) else Tensor(_raw(t)) for t in tensors]
    out = np.concatenate([t.data for t in ts], axis=axis)
    bounds = np.cumsum([t.data.shape[axis] for t in ts])[:-1]

    def backward(g: np.ndarray) -> list[np.ndarray]:
        return list(np.split(g, bounds, axis=axis))

    return _make(out, ts, backward, "cat")
