"""The mpi backend's header check: fixed-size records, one per rank, gathered before or with
each collective so that ranks that disagree on it raise instead of hanging.

A record is a header (op, reduce op, dtype, root, bytes, shape fingerprint: six int64,
48 bytes) followed by a payload slot of :func:`slot_size` bytes, a constant of the group
(its size decides it, every member alike). Every exchange, whatever the collective, moves
exactly one record per rank, so the counts MPI sees are always equal, even between ranks
that called different things. Small collectives (all_reduce, broadcast, all_gather,
reduce_scatter with a contribution that fits the slot; barrier) put their payload in the
slot and complete from the gathered records alone (:class:`Signature` holds the views they
read and write); the others exchange a header-only record, then make their own MPI call.
"""

from __future__ import annotations

from collections.abc import Callable
from functools import partial
from typing import Any

import numpy as np

from mpdist.errors import DistBackendError
from mpdist.transport.header import describe_mismatch, dtype_code, op_code, shape_signature

__all__ = ["BLOCKS", "HEADER_BYTES", "ROWS", "Records", "Signature", "slot_size"]

HEADER_LEN = 6  # op, reduce op, dtype, root, bytes, shape fingerprint
HEADER_BYTES = 8 * HEADER_LEN
# The payload slot: at most MAX_SLOT bytes, and a group's records together at most
# GATHERED bytes (each exchange gathers n of them, whatever the call, so a big group gets
# a smaller slot). MPICH 5 on one node, 2 ranks, gathers records of 48 B in ~5.6 us
# (median), 1 KiB + 48 in ~5.8, 2 KiB + 48 in ~6.0, 4 KiB + 48 in ~6.6, 8 KiB in ~13.5
# (a protocol switch); a 4-byte Allreduce takes ~5.6 us, Bcast ~4.7. 1 KiB folds the
# latency-bound sizes and costs the unfolded calls' header exchange ~0.25 us over 48 B.
MAX_SLOT = 1024
GATHERED = 16384


def slot_size(n: int) -> int:
    """The payload slot of a group of ``n`` ranks: a multiple of 16, so every record (and
    slot) is aligned for any dtype. 1 KiB up to 15 ranks, 0 (headers only) from 257."""
    return max(0, min(MAX_SLOT, GATHERED // n - HEADER_BYTES)) // 16 * 16


# What a folded signature's views are (Records.signature's ``fold``): ROWS, one array of
# the call's shape per rank (all_reduce, broadcast, all_gather); BLOCKS, each rank's
# block for this rank and this rank's blocks for all (reduce_scatter: ``n`` x bytes).
ROWS, BLOCKS = 1, 2

# How many distinct call signatures a group keeps ready (shapes, dtypes, ops a program uses).
_CACHE_SIZE = 256


class Signature:
    """One call signature's header, what every rank's headers make when all agree, and
    (folded calls) typed views of the record buffer: ``rows[r]`` rank r's payload (for a
    reduce_scatter: rank r's block for this rank), ``parts[j]`` this rank's j-th block."""

    __slots__ = ("expected", "header", "name", "parts", "rows")

    def __init__(self, name: str, header: bytes, expected: bytes) -> None:
        self.name = name
        self.header = header
        self.expected = expected
        self.rows: list[np.ndarray] = []
        self.parts: list[np.ndarray] = []


class Records:
    """A group's record buffer (one row per rank, this rank's header and slot in its own
    row, exchanged in place) and its cache of call signatures. ``allgather`` and
    ``in_place`` are the group communicator's ``Allgather`` and ``MPI.IN_PLACE``."""

    def __init__(
        self,
        rank: int,
        size: int,
        global_ranks: list[int],
        allgather: Callable[[Any, Any], Any],
        in_place: Any,
    ) -> None:
        self.rank, self.size, self.global_ranks = rank, size, global_ranks
        self.slot = slot_size(size)
        self.buf = np.zeros((size, HEADER_BYTES + self.slot), np.uint8)
        self._gather = partial(allgather, in_place, self.buf)
        self._mv = memoryview(self.buf.reshape(-1))  # type: ignore[arg-type]
        self._at = rank * (HEADER_BYTES + self.slot)
        self._headers = self.buf[:, :HEADER_BYTES]
        self._known: dict[tuple[Any, ...], Signature] = {}

    def signature(self, key: tuple[Any, ...], fold: int = 0) -> Signature:
        """The signature of ``key`` = (name, reduce op, dtype, root, bytes, shape), built
        once (a few us) and then looked up; ``fold`` (ROWS, BLOCKS) for a folded call
        (the same ``key`` always comes with the same ``fold``: the name says which)."""
        sig = self._known.get(key)
        return self._build(key, fold) if sig is None else sig

    def exchange(self, sig: Signature, seq: int) -> None:
        """Put ``sig``'s header in this rank's record, gather every rank's record (the
        slot as the caller filled it), raise :class:`DistBackendError` if any header
        differs (``seq``: the collective's number, for the message)."""
        at = self._at
        self._mv[at : at + HEADER_BYTES] = sig.header
        self._gather()
        if self._headers.tobytes() != sig.expected:
            raise self.mismatch(sig.name, seq)

    def _build(self, key: tuple[Any, ...], fold: int) -> Signature:
        name, redop, dtype, root, nbytes, shape = key
        h = np.zeros(HEADER_LEN, np.int64)
        h[0] = op_code(name)
        h[1] = -1 if redop is None else redop.value
        h[2] = 0 if dtype is None else dtype_code(dtype)
        h[3] = root
        h[4] = nbytes
        h[5] = 0 if shape is None else np.int64(shape_signature(shape) & 0x7FFFFFFFFFFFFFFF)
        sig = Signature(name, h.tobytes(), h.tobytes() * self.size)
        n, me, slot = self.size, self.rank, self.slot
        if fold == ROWS and nbytes <= slot:
            sig.rows = [self._view(r, 0, dtype, shape) for r in range(n)]
        elif fold == BLOCKS and n * nbytes <= slot:
            sig.rows = [self._view(r, me * nbytes, dtype, shape) for r in range(n)]
            sig.parts = [self._view(me, j * nbytes, dtype, shape) for j in range(n)]
        if len(self._known) >= _CACHE_SIZE:
            self._known.clear()
        self._known[key] = sig
        return sig

    def _view(self, rank: int, offset: int, dtype: np.dtype, shape: tuple[int, ...]) -> np.ndarray:
        start = HEADER_BYTES + offset
        nbytes = dtype.itemsize * int(np.prod(shape, dtype=np.int64))
        return self.buf[rank, start : start + nbytes].view(dtype).reshape(shape)

    def mismatch(self, name: str, seq: int) -> DistBackendError:
        """The error of a gathered exchange whose headers differ, naming the first rank
        whose header differs from this rank's and what differs."""
        headers = self._headers.copy().view(np.int64)
        me = self.rank
        other = next(r for r in range(self.size) if (headers[r] != headers[me]).any())
        n = self.global_ranks
        a, b = f"rank {n[me]}", f"rank {n[other]}"
        mine = tuple(int(v) for v in headers[me])
        theirs = tuple(int(v) for v in headers[other])
        return DistBackendError(
            f"{name}: mismatch between {a} and {b} in collective #{seq}: "
            + describe_mismatch(a, b, name, mine, theirs)
        )
