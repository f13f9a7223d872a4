"""The tests' reference for reductions, worked out independently of the code under test.

Shared by the algorithm tests and the process-group tests (tests/distributed): a reference
that reused mpdist's own ufunc table would agree with any mistake in it.
"""

from __future__ import annotations

import functools
import operator

import numpy as np

from mpdist.algorithms import ReduceOp

__all__ = ["reference"]


def reference(arrays: list[np.ndarray], op: ReduceOp) -> np.ndarray:
    """``op`` over the ranks' arrays, worked out independently of the code under test: the
    ranks are stacked along a new axis, reduced there in a wide type (int64 or float64, exact
    for the small values the tests use), and narrowed to the dtype once at the end (integer
    overflow wraps around, as it does in the dtype)."""
    dtype = arrays[0].dtype
    stack = np.stack(arrays)
    if dtype == np.bool_:
        if op in (ReduceOp.SUM, ReduceOp.MAX, ReduceOp.BOR):
            return stack.any(axis=0)
        if op in (ReduceOp.PRODUCT, ReduceOp.MIN, ReduceOp.BAND):
            return stack.all(axis=0)
        assert op is ReduceOp.BXOR, op
        return stack.sum(axis=0) % 2 == 1
    if op is ReduceOp.MIN:
        return stack.min(axis=0)
    if op is ReduceOp.MAX:
        return stack.max(axis=0)
    wide = stack.astype(np.float64 if dtype.kind == "f" else np.int64)
    if op in (ReduceOp.BAND, ReduceOp.BOR, ReduceOp.BXOR):
        bit = {ReduceOp.BAND: operator.and_, ReduceOp.BOR: operator.or_}.get(op, operator.xor)
        return functools.reduce(bit, list(wide)).astype(dtype)
    if op is ReduceOp.PRODUCT:
        return wide.prod(axis=0).astype(dtype)
    total = wide.sum(axis=0)
    if op is ReduceOp.SUM:
        return total.astype(dtype)
    assert op is ReduceOp.AVG, op
    if dtype.kind == "f":  # one rounding of the exact quotient (float64 holds it exactly enough)
        return (total / len(arrays)).astype(dtype)
    # integers: the sum as the dtype holds it (wrapped), then divided rounding down
    return (total.astype(dtype).astype(np.int64) // len(arrays)).astype(dtype)
