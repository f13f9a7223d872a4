"""Loss modules: ``MSELoss``."""

from __future__ import annotations

from typing import Any

from mpdist.autograd import Tensor
from mpdist.nn import functional as F
from mpdist.nn.module import Module


class MSELoss(Module):
    """Mean squared error (``reduction``: ``"mean"``, ``"sum"`` or ``"none"``)."""

    def __init__(self, reduction: str = "mean") -> None:
        super().__init__()
        if reduction not in ("mean", "sum", "none"):
            raise ValueError(f"{reduction} is not a valid value for reduction")
        self.reduction = reduction

    def forward(self, input: Any, target: Any) -> Tensor:
        """The loss of ``input`` against ``target``."""
        return F.mse_loss(input, target, reduction=self.reduction)
