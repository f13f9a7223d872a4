"""Activation layers beyond the basic ones in ``layers``: ``GELU``, ``Sigmoid``."""

from __future__ import annotations

from typing import Any

from mpdist.autograd import Tensor
from mpdist.nn import functional as F
from mpdist.nn.module import Module


class GELU(Module):
    """Gaussian error linear unit, exact (``approximate="none"``) or ``"tanh"``."""

    def __init__(self, approximate: str = "none") -> None:
        super().__init__()
        if approximate not in ("none", "tanh"):
            raise RuntimeError("approximate argument must be either none or tanh.")
        self.approximate = approximate

    def forward(self, input: Any) -> Tensor:
        """Apply gelu."""
        return F.gelu(input, approximate=self.approximate)

    def extra_repr(self) -> str:
        """The approximation, as torch prints it."""
        return f"approximate={self.approximate!r}"


class Sigmoid(Module):
    """1 / (1 + exp(-x))."""

    def forward(self, input: Any) -> Tensor:
        """Apply the logistic sigmoid."""
        return F.sigmoid(input)
