"""Reduction operators (ReduceOp) and the numpy kernels that apply them in place.

``combine(dst, src, op)`` reduces ``src`` into ``dst`` with a numpy ufunc and ``out=``
(no temporary); AVG reduces as SUM and the caller finishes with ``divide(array, n)``.
"""

from __future__ import annotations

import enum

import numpy as np

from mpdist.transport.header import WIRE_DTYPES

__all__ = [
    "ReduceOp",
    "check_op_dtype",
    "REDOP_CODE",
    "UFUNCS",
    "combine",
    "reduce_into",
    "divide",
    "divide_by",
    "SUPPORTED_DTYPES",
]


class ReduceOp(enum.Enum):
    """How ``all_reduce``/``reduce``/``reduce_scatter`` combine the ranks' values."""

    SUM = 0
    AVG = 1
    PRODUCT = 2
    MIN = 3
    MAX = 4
    BAND = 5
    BOR = 6
    BXOR = 7

    # Members are singletons, so identity hashing is exact; Enum's own hash (of the name,
    # in Python) costs 50 ns per dict or set lookup on the small-message latency path.
    __hash__ = object.__hash__

    def __repr__(self) -> str:
        return f"<ReduceOp.{self.name}: {self.value}>"


# op -> its wire code (op.value is a Python-level property: a dict lookup is cheaper)
REDOP_CODE = {op: op.value for op in ReduceOp}
# (op, dtype) pairs check_op_dtype has accepted
_VALID: set[tuple[ReduceOp, np.dtype]] = set()

# The numpy ufunc of each op (AVG sums; the caller divides). On bool arrays add, multiply,
# minimum, maximum and the bitwise ufuncs are the logical operators.
UFUNCS = {
    ReduceOp.SUM: np.add,
    ReduceOp.AVG: np.add,
    ReduceOp.PRODUCT: np.multiply,
    ReduceOp.MIN: np.minimum,
    ReduceOp.MAX: np.maximum,
    ReduceOp.BAND: np.bitwise_and,
    ReduceOp.BOR: np.bitwise_or,
    ReduceOp.BXOR: np.bitwise_xor,
}

# reductions work on every dtype the wire format describes
SUPPORTED_DTYPES = frozenset(WIRE_DTYPES)
_BITWISE = (ReduceOp.BAND, ReduceOp.BOR, ReduceOp.BXOR)
_ORDERED = (ReduceOp.MIN, ReduceOp.MAX)


def check_op_dtype(op: ReduceOp, dtype: np.dtype) -> None:
    """Raise TypeError/ValueError unless ``op`` can reduce arrays of ``dtype``; a pair
    accepted before is found with one set lookup (every collective asks)."""
    try:
        if (op, dtype) in _VALID:
            return
    except TypeError:  # an unhashable op: the checks below say what is wrong with it
        pass
    if not isinstance(op, ReduceOp):
        raise TypeError(f"op must be a ReduceOp, got {op!r}")
    dtype = np.dtype(dtype)
    if dtype not in SUPPORTED_DTYPES:
        raise ValueError(f"{op.name} does not support dtype {dtype}")
    kind = dtype.kind
    if op in _BITWISE and kind in "fc":
        raise ValueError(
            f"{op.name} (a bitwise op) is only valid on integer and bool arrays, not {dtype}"
        )
    if op in _ORDERED and kind == "c":
        raise ValueError(f"{op.name} does not support complex dtype {dtype}")
    if op is ReduceOp.AVG and kind == "b":
        raise ValueError("AVG does not support bool arrays")
    _VALID.add((op, dtype))


def combine(dst: np.ndarray, src: np.ndarray, op: ReduceOp) -> None:
    """``dst = op(dst, src)`` elementwise, in place (AVG combines as SUM)."""
    UFUNCS[op](dst, src, out=dst)


def reduce_into(out: np.ndarray, a: np.ndarray, b: np.ndarray, op: ReduceOp) -> None:
    """``out = op(a, b)`` elementwise; ``out`` may alias ``a`` or ``b``."""
    UFUNCS[op](a, b, out=out)


def divide(array: np.ndarray, n: int) -> None:
    """Finish an AVG in place: true division for float/complex, floor division for integers."""
    if n == 1:
        return
    kind = array.dtype.kind
    if kind in "fc":
        np.true_divide(array, n, out=array)
    elif kind in "iu":
        np.floor_divide(array, n, out=array)
    else:
        raise ValueError(f"AVG does not support dtype {array.dtype}")


divide_by = divide
