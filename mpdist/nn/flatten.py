"""Shape layers: ``Flatten`` (axes into one) and ``Unflatten`` (one axis into several)."""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

from mpdist.autograd import Tensor
from mpdist.nn import functional as F
from mpdist.nn.module import Module


def _axis(dim: int, ndim: int) -> int:
    span = max(ndim, 1)
    if not -span <= dim < span:
        raise IndexError(
            f"Dimension out of range (expected to be in range of [{-span}, {span - 1}], but got {dim})"
        )
    return dim % span


class Flatten(Module):
    """Merge axes ``start_dim`` .. ``end_dim`` (inclusive) into one."""

    def __init__(self, start_dim: int = 1, end_dim: int = -1) -> None:
        super().__init__()
        self.start_dim = start_dim
        self.end_dim = end_dim

    def forward(self, input: Any) -> Tensor:
        """The input reshaped, its flattened axes merged."""
        x = F._t(input)
        if x.ndim == 0:
            return x.reshape(1)
        start, end = _axis(self.start_dim, x.ndim), _axis(self.end_dim, x.ndim)
        if start > end:
            raise RuntimeError("flatten() has invalid args: start_dim cannot come after end_dim")
        shape = x.shape
        return x.reshape(shape[:start] + (math.prod(shape[start : end + 1]),) + shape[end + 1 :])

    def extra_repr(self) -> str:
        """The axes, as torch prints them."""
        return f"start_dim={self.start_dim}, end_dim={self.end_dim}"


class Unflatten(Module):
    """Split axis ``dim`` into ``unflattened_size``."""

    def __init__(self, dim: int, unflattened_size: Sequence[int]) -> None:
        super().__init__()
        self.dim = dim
        self.unflattened_size = tuple(unflattened_size)

    def forward(self, input: Any) -> Tensor:
        """The input with axis ``dim`` split."""
        x = F._t(input)
        d = _axis(self.dim, x.ndim)
        return x.reshape(x.shape[:d] + self.unflattened_size + x.shape[d + 1 :])

    def extra_repr(self) -> str:
        """The axis and sizes, as torch prints them."""
        return f"dim={self.dim}, unflattened_size={self.unflattened_size}"
