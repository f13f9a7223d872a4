"""``Dropout``: random zeroing in training, the identity in eval mode."""

from __future__ import annotations

from typing import Any

from mpdist.autograd import Tensor
from mpdist.nn import functional as F
from mpdist.nn.module import Module


class Dropout(Module):
    """Zero each element with probability ``p`` while training and scale the others by
    ``1 / (1 - p)`` (see ``functional.dropout``: ``manual_seed`` makes the masks repeat)."""

    def __init__(self, p: float = 0.5, inplace: bool = False) -> None:
        super().__init__()
        if not 0.0 <= p <= 1.0:
            raise ValueError(f"dropout probability has to be between 0 and 1, but got {p}")
        self.p = p
        self.inplace = inplace

    def forward(self, input: Any) -> Tensor:
        """Drop out (training) or pass through (eval)."""
        return F.dropout(input, self.p, self.training, self.inplace)

    def extra_repr(self) -> str:
        """``p`` and ``inplace``."""
        return f"p={self.p}, inplace={self.inplace}"
