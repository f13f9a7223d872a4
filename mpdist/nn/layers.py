"""Basic layers: ``Linear``, ``ReLU``, ``Identity``, ``Tanh``, ``Softmax``, ``LogSoftmax``."""

from __future__ import annotations

import math
from typing import Any

import numpy as np

from mpdist.autograd import Tensor
from mpdist.nn import functional as F
from mpdist.nn import init
from mpdist.nn._factory import factory_dtype
from mpdist.nn.module import Module
from mpdist.nn.parameter import Parameter


class Linear(Module):
    """``y = x @ weight.T + bias``; weight ``(out, in)``, torch's uniform initialisation.
    ``dtype`` defaults to float32; ``device`` must be the CPU (or None)."""

    def __init__(
        self,
        in_features: int,
        out_features: int,
        bias: bool = True,
        device: Any = None,
        dtype: Any = None,
    ) -> None:
        super().__init__()
        dtype = factory_dtype(device, dtype)
        self.in_features = in_features
        self.out_features = out_features
        self.weight = Parameter(np.empty((out_features, in_features), dtype=dtype))
        if bias:
            self.bias = Parameter(np.empty((out_features,), dtype=dtype))
        else:
            self.register_parameter("bias", None)
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """Weight: kaiming-uniform with a=sqrt(5), i.e. U(+-1/sqrt(in)); bias the same bound."""
        init.kaiming_uniform_(self.weight, a=math.sqrt(5))
        if self.bias is not None:
            bound = 1 / math.sqrt(self.in_features) if self.in_features > 0 else 0.0
            init.uniform_(self.bias, -bound, bound)

    def forward(self, input: Any) -> Tensor:
        """Apply the affine map."""
        return F.linear(input, self.weight, self.bias)

    def extra_repr(self) -> str:
        """The sizes and whether there is a bias."""
        return f"in_features={self.in_features}, out_features={self.out_features}, bias={self.bias is not None}"


class ReLU(Module):
    """max(x, 0)."""

    def __init__(self, inplace: bool = False) -> None:
        super().__init__()
        self.inplace = inplace  # accepted for torch compatibility; never in place here

    def forward(self, input: Any) -> Tensor:
        """Apply relu."""
        return F.relu(input)


class Tanh(Module):
    """tanh(x)."""

    def forward(self, input: Any) -> Tensor:
        """Apply tanh."""
        return F._t(input).tanh()


class Softmax(Module):
    """Softmax along ``dim`` (see ``functional.softmax``)."""

    def __init__(self, dim: int | None = None) -> None:
        super().__init__()
        self.dim = dim

    def forward(self, input: Any) -> Tensor:
        """Apply softmax along ``self.dim``."""
        return F.softmax(input, self.dim)

    def extra_repr(self) -> str:
        """The axis."""
        return f"dim={self.dim}"


class LogSoftmax(Module):
    """Log-softmax along ``dim`` (see ``functional.log_softmax``)."""

    def __init__(self, dim: int | None = None) -> None:
        super().__init__()
        self.dim = dim

    def forward(self, input: Any) -> Tensor:
        """Apply log-softmax along ``self.dim``."""
        return F.log_softmax(input, self.dim)

    def extra_repr(self) -> str:
        """The axis."""
        return f"dim={self.dim}"


class Identity(Module):
    """Returns its input."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__()

    def forward(self, input: Any) -> Any:
        """Return the input."""
        return input
