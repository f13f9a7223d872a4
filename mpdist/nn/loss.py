"""Loss modules: ``MSELoss``, ``NLLLoss``, ``CrossEntropyLoss``."""

from __future__ import annotations

from typing import Any

import numpy as np

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


class _WeightedLoss(Module):
    """A loss with per-class ``weight`` (a buffer, as in torch), ``ignore_index`` and
    ``reduction`` (the legacy ``size_average``/``reduce`` flags turned into it)."""

    def __init__(
        self,
        weight: Any = None,
        size_average: bool | None = None,
        ignore_index: int = -100,
        reduce: bool | None = None,
        reduction: str = "mean",
    ) -> None:
        super().__init__()
        self.reduction = F._legacy_reduction(size_average, reduce, reduction)
        self.register_buffer(
            "weight",
            None
            if weight is None
            else np.asarray(weight.data if isinstance(weight, Tensor) else weight),
        )
        self.ignore_index = ignore_index


class NLLLoss(_WeightedLoss):
    """Negative log-likelihood of class indices (see ``functional.nll_loss``)."""

    def forward(self, input: Any, target: Any) -> Tensor:
        """The loss of log-probabilities ``input`` against class indices ``target``."""
        return F.nll_loss(
            input, target, self.weight, ignore_index=self.ignore_index, reduction=self.reduction
        )


class CrossEntropyLoss(_WeightedLoss):
    """Cross entropy of logits against class indices or probabilities, with optional
    ``label_smoothing`` (see ``functional.cross_entropy``)."""

    def __init__(
        self,
        weight: Any = None,
        size_average: bool | None = None,
        ignore_index: int = -100,
        reduce: bool | None = None,
        reduction: str = "mean",
        label_smoothing: float = 0.0,
    ) -> None:
        super().__init__(weight, size_average, ignore_index, reduce, reduction)
        self.label_smoothing = label_smoothing

    def forward(self, input: Any, target: Any) -> Tensor:
        """The loss of logits ``input`` against ``target``."""
        return F.cross_entropy(
            input,
            target,
            self.weight,
            ignore_index=self.ignore_index,
            reduction=self.reduction,
            label_smoothing=self.label_smoothing,
        )
