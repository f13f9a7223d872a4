"""torch's dtype names as numpy dtypes, and the default floating dtype that factories and layers use.

Tensors hold numpy arrays, so a dtype is a ``numpy.dtype``. The names here are torch's
(``float32``, ``double``, ``long``, ``bool``, ...), each bound to the numpy dtype of the same
meaning, so ``dtype=torch.float64`` ports to ``dtype=mpdist.autograd.float64`` by changing the
import and ``t.dtype == torch.float32`` still compares as written. numpy has no ``bfloat16``
or float8 types, so those names do not exist here.

``set_default_dtype`` / ``get_default_dtype`` are torch's process-wide default for floating
values: what ``tensor([1.0])``, ``zeros(2)``, ``randn(2)`` and the parameters of a new layer
get when no ``dtype`` is given (float32 until changed). Complex values follow it: complex64
under float32 (and float16), complex128 under float64.
"""

from __future__ import annotations

from typing import Any

import numpy as np

# noqa A001 below: torch's names shadow builtins here, as in torch's own namespace.
bool = np.dtype(np.bool_)  # noqa: A001
uint8 = np.dtype(np.uint8)
uint16 = np.dtype(np.uint16)
uint32 = np.dtype(np.uint32)
uint64 = np.dtype(np.uint64)
int8 = np.dtype(np.int8)
int16 = short = np.dtype(np.int16)
int32 = int = np.dtype(np.int32)  # noqa: A001
int64 = long = np.dtype(np.int64)
float16 = half = np.dtype(np.float16)
float32 = float = np.dtype(np.float32)  # noqa: A001
float64 = double = np.dtype(np.float64)
complex64 = cfloat = np.dtype(np.complex64)
complex128 = cdouble = np.dtype(np.complex128)

DTYPE_NAMES = (
    "bool",
    "uint8",
    "uint16",
    "uint32",
    "uint64",
    "int8",
    "int16",
    "short",
    "int32",
    "int",
    "int64",
    "long",
    "float16",
    "half",
    "float32",
    "float",
    "float64",
    "double",
    "complex64",
    "cfloat",
    "complex128",
    "cdouble",
)

# One list, not a module global rebound, so that modules holding a reference see changes.
_default = [float32]


def get_default_dtype() -> np.dtype:
    """The floating dtype that tensors and parameters get when none is given."""
    return _default[0]


def set_default_dtype(d: Any) -> None:
    """Make ``d`` (float16, float32 or float64) the default floating dtype, process-wide as
    in torch. Any other dtype is torch's ``TypeError``."""
    try:
        if d is None:  # np.dtype(None) would be float64
            raise TypeError
        dt = np.dtype(d)
    except TypeError:
        raise TypeError(
            f"invalid dtype object: only floating-point types are supported as the default "
            f"type, got {d!r}"
        ) from None
    if dt.kind != "f":
        raise TypeError(f"only floating-point types are supported as the default type, got {dt}")
    _default[0] = dt


def default_complex_dtype() -> np.dtype:
    """The complex dtype that matches the default floating one (torch's pairing)."""
    return complex128 if _default[0] == float64 else complex64
