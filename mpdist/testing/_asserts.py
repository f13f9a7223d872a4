"""A torch-style ``assertEqual`` for the test cases: arrays compare by value, floats with tolerance.

PyTorch's distributed tests call ``self.assertEqual(tensor, expected)``; plain
unittest would ask ``bool(a == b)`` of an array and fail. Here numpy arrays,
mpdist autograd Tensors and torch tensors (when torch is imported) compare
element-wise: same shape, integers and bools exactly, floating and complex
values within dtype-dependent tolerances (torch's defaults). Lists, tuples and
dicts are compared item by item.
"""

from __future__ import annotations

import sys
from typing import Any

import numpy as np

# (rtol, atol) by dtype, as torch.testing uses them.
_TOLERANCES = {
    np.dtype(np.float16): (1e-3, 1e-5),
    np.dtype(np.float32): (1.3e-6, 1e-5),
    np.dtype(np.float64): (1e-7, 1e-7),
    np.dtype(np.complex64): (1.3e-6, 1e-5),
    np.dtype(np.complex128): (1e-7, 1e-7),
}


def as_array(value: Any) -> np.ndarray | None:
    """``value`` as an ndarray if it is array-like (ndarray, mpdist or torch tensor), else None."""
    if isinstance(value, np.ndarray):
        return value
    data = getattr(value, "data", None)
    if isinstance(data, np.ndarray) and type(value).__module__.startswith("mpdist"):
        return data
    torch = sys.modules.get("torch")
    if torch is not None and isinstance(value, torch.Tensor):
        return value.detach().cpu().numpy()
    return None


def _tolerance(a: np.ndarray, b: np.ndarray) -> tuple[float, float]:
    found = [_TOLERANCES[d] for d in (a.dtype, b.dtype) if d in _TOLERANCES]
    if not found:
        return 0.0, 0.0
    return max(t[0] for t in found), max(t[1] for t in found)


def assert_equal(
    first: Any,
    second: Any,
    msg: str | None = None,
    *,
    rtol: float | None = None,
    atol: float | None = None,
    fallback: Any = None,
) -> None:
    """Compare like torch's ``TestCase.assertEqual``; ``fallback`` handles everything else."""
    a, b = as_array(first), as_array(second)
    if a is not None or b is not None:
        a = np.asarray(first if a is None else a)
        b = np.asarray(second if b is None else b)
        if a.shape != b.shape and a.size != 1 and b.size != 1:
            raise AssertionError(
                f"shapes differ: {a.shape} != {b.shape}" + (f" : {msg}" if msg else "")
            )
        if a.dtype.kind not in "fc" and b.dtype.kind not in "fc":
            np.testing.assert_array_equal(a, b, err_msg=msg or "", strict=False)
            return
        default_rtol, default_atol = _tolerance(a, b)
        np.testing.assert_allclose(
            a,
            b,
            rtol=default_rtol if rtol is None else rtol,
            atol=default_atol if atol is None else atol,
            equal_nan=True,
            err_msg=msg or "",
        )
        return
    if isinstance(first, (list, tuple)) and isinstance(second, (list, tuple)):
        if len(first) != len(second):
            raise AssertionError(
                f"lengths differ: {len(first)} != {len(second)}" + (f" : {msg}" if msg else "")
            )
        for x, y in zip(first, second, strict=True):
            assert_equal(x, y, msg, rtol=rtol, atol=atol, fallback=fallback)
        return
    if isinstance(first, dict) and isinstance(second, dict):
        if first.keys() != second.keys():
            raise AssertionError(
                f"keys differ: {sorted(map(str, first))} != {sorted(map(str, second))}"
                + (f" : {msg}" if msg else "")
            )
        for key in first:
            assert_equal(first[key], second[key], msg, rtol=rtol, atol=atol, fallback=fallback)
        return
    if fallback is not None:
        fallback(first, second, msg)
    elif first != second:
        raise AssertionError(f"{first!r} != {second!r}" + (f" : {msg}" if msg else ""))


class ArrayAssertions:
    """Mixin for unittest.TestCase: ``assertEqual`` / ``assertNotEqual`` that understand arrays."""

    def assertEqual(  # noqa: N802 - unittest's name
        self,
        first: Any,
        second: Any,
        msg: str | None = None,
        *,
        rtol: float | None = None,
        atol: float | None = None,
        **kwargs: Any,
    ) -> None:
        """Arrays and tensors by value (with tolerance for floats); anything else as unittest does."""
        plain = super().assertEqual  # type: ignore[misc]
        assert_equal(first, second, msg, rtol=rtol, atol=atol, fallback=plain)

    def assertNotEqual(  # noqa: N802 - unittest's name
        self, first: Any, second: Any, msg: str | None = None, **kwargs: Any
    ) -> None:
        """The opposite of :meth:`assertEqual`."""
        try:
            self.assertEqual(first, second, **kwargs)
        except AssertionError:
            return
        raise AssertionError(msg or f"{first!r} == {second!r}")
