"""mpi backend's ``_span``: a list of arrays lying end to end is one MPI buffer, else None."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

pytest.importorskip("mpi4py")

from mpdist.backends.mpi import _span  # noqa: E402


def _addr(a: np.ndarray) -> int:
    return int(a.__array_interface__["data"][0])


def test_rows_of_one_array_are_one_span() -> None:
    x = np.arange(24, dtype=np.float64).reshape(4, 6)
    span = _span(list(x))
    assert span is not None
    assert span.address == _addr(x) and len(span) == x.nbytes
    view = np.frombuffer(span, np.float64)  # writable: MPI receives into it
    view[7] = -1.0
    assert x[1, 1] == -1.0


def test_uneven_pieces() -> None:
    flat = np.arange(10, dtype=np.int32)
    span = _span([flat[:3], flat[3:7], flat[7:]])
    assert span is not None and span.address == _addr(flat) and len(span) == flat.nbytes


def _reference(arrays: list[np.ndarray]) -> tuple[int, int] | None:
    """What ``_span`` means, by numpy's addresses: (start, bytes) or None."""
    if not arrays:
        return None
    start = addr = _addr(arrays[0])
    for a in arrays:
        if _addr(a) != addr:
            return None
        addr += a.nbytes
    return (start, addr - start) if addr > start else None


@given(st.lists(st.tuples(st.integers(-2, 12), st.integers(-2, 12), st.sampled_from([1, -1]))))
def test_same_as_numpy_addresses(cuts: list[tuple[int, int, int]]) -> None:
    # slices of one buffer, empty, reversed and out of order ones included
    flat = np.arange(10, dtype=np.float32)
    arrays = [flat[i:j:step] for i, j, step in cuts]
    span = _span(arrays)
    want = _reference(arrays)
    assert (None if span is None else (span.address, len(span))) == want


@pytest.mark.parametrize(
    "make",
    [
        lambda x: [x[0], x[2]],  # a gap
        lambda x: [x[1], x[0]],  # reversed
        lambda x: [x[0], x[0]],  # the same row twice
        lambda x: [x[0], np.zeros(6)],  # another array
        lambda x: list(x[::-1]),  # rows in reverse order
        lambda x: [x[:, 0], x[:, 1]],  # columns: not contiguous, not end to end
    ],
    ids=["gap", "reversed", "repeated", "foreign", "reverse-rows", "columns"],
)
def test_not_end_to_end_is_none(make) -> None:
    x = np.arange(24, dtype=np.float64).reshape(4, 6)
    assert _span(make(x)) is None


def test_nothing_or_only_empty_arrays_is_none() -> None:
    assert _span([]) is None
    e = np.empty((3, 0))
    assert _span(list(e)) is None


def test_non_contiguous_entries_use_their_start_address() -> None:
    # As before: a non-contiguous entry counts from where numpy says its data starts, so
    # one strided array alone spans its nbytes from there (the callers pass contiguous ones).
    x = np.arange(12, dtype=np.float64).reshape(3, 4)
    col = x[:, 0]
    span = _span([col])
    assert span is not None and span.address == _addr(col) and len(span) == col.nbytes


def test_readonly_arrays_span_too() -> None:
    x = np.arange(8, dtype=np.uint8)
    x.flags.writeable = False
    span = _span([x[:4], x[4:]])
    assert span is not None and span.address == _addr(x) and len(span) == 8
