"""``Parameter``: a leaf Tensor that a Module registers as one of its parameters."""

from __future__ import annotations

from typing import Any

import numpy as np

from mpdist.autograd import Tensor


class Parameter(Tensor):
    """A Tensor that requires grad by default and registers itself on Module attribute
    assignment. It shares the array it was given (no copy)."""

    def __new__(cls, data: Any = None, requires_grad: bool = True) -> Any:
        # A Tensor subclass that must stay itself as a parameter (a DTensor) says how through
        # ``__as_parameter__``: Parameter(dtensor) is then a DTensor that is a Parameter.
        make = getattr(type(data), "__as_parameter__", None)
        if make is not None:
            return make(data, requires_grad)
        return super().__new__(cls)

    def __init__(self, data: Any = None, requires_grad: bool = True) -> None:
        if data is None:
            data = np.empty((0,), dtype=np.float32)
        super().__init__(data.data if isinstance(data, Tensor) else data, requires_grad)

    def __repr__(self) -> str:
        return "Parameter containing:\n" + super().__repr__()
