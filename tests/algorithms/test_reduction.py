"""ReduceOp, check_op_dtype, combine and divide."""

from __future__ import annotations

import numpy as np
import pytest

from mpdist.algorithms import ReduceOp, check_op_dtype, combine, divide

FLOATS = ["float16", "float32", "float64"]
INTS = ["int8", "int16", "int32", "int64", "uint8"]


@pytest.mark.parametrize("op", [ReduceOp.BAND, ReduceOp.BOR, ReduceOp.BXOR])
@pytest.mark.parametrize("dtype", FLOATS + ["complex64"])
def test_bitwise_on_float_is_value_error(op: ReduceOp, dtype: str) -> None:
    with pytest.raises(ValueError, match=op.name):
        check_op_dtype(op, np.dtype(dtype))


def test_other_invalid_combinations() -> None:
    with pytest.raises(ValueError, match="complex"):
        check_op_dtype(ReduceOp.MAX, np.dtype("complex128"))
    with pytest.raises(ValueError, match="bool"):
        check_op_dtype(ReduceOp.AVG, np.dtype("bool"))
    with pytest.raises(ValueError, match="dtype"):
        check_op_dtype(ReduceOp.SUM, np.dtype("U3"))
    with pytest.raises(TypeError):
        check_op_dtype("sum", np.dtype("float32"))  # type: ignore[arg-type]


@pytest.mark.parametrize("dtype", FLOATS + INTS + ["bool"])
def test_valid_combinations_pass(dtype: str) -> None:
    for op in ReduceOp:
        if op in (ReduceOp.BAND, ReduceOp.BOR, ReduceOp.BXOR) and dtype in FLOATS:
            continue
        if op is ReduceOp.AVG and dtype == "bool":
            continue
        check_op_dtype(op, np.dtype(dtype))


def test_combine_in_place_and_divide() -> None:
    a = np.array([1, 5, 3], np.int32)
    combine(a, np.array([4, 2, 3], np.int32), ReduceOp.MAX)
    assert a.tolist() == [4, 5, 3]
    combine(a, np.array([1, 1, 1], np.int32), ReduceOp.BXOR)
    assert a.tolist() == [5, 4, 2]
    divide(a, 2)
    assert a.tolist() == [2, 2, 1]
    f = np.array([1.0, 3.0], np.float32)
    divide(f, 2)
    assert f.tolist() == [0.5, 1.5]
    b = np.array([True, False])
    combine(b, np.array([True, True]), ReduceOp.PRODUCT)
    assert b.tolist() == [True, False]
    with pytest.raises(ValueError):
        divide(b, 2)
