"""Communicator: a transport plus the collective sequence counter, timeout and scratch buffers.

Every collective starts with ``comm.start(...)``, which numbers it and tells the transport
what this rank is about to do (so headers from peers can be checked), and ends with
``comm.finish()``. Scratch buffers are kept per slot and reused across calls.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from mpdist.algorithms.reduction import ReduceOp, reduce_into
from mpdist.transport.base import as_bytes
from mpdist.transport.header import dtype_code, op_code, shape_signature

__all__ = ["Communicator", "received", "reduce_received"]

_SMALL_KEPT = 64  # (dtype, count) receive buffers a communicator keeps for the latency path


def received(req: Any, fallback: np.ndarray) -> np.ndarray:
    """The data of a finished borrowing receive as an array shaped like ``fallback``:
    ``fallback`` itself if the transport filled it, else a view of the lent bytes (give
    them back with ``transport.release(req)`` once read)."""
    view = req.view
    if view is req.buf:
        return fallback
    return np.frombuffer(view, fallback.dtype)


def reduce_received(
    transport: Any,
    req: Any,
    fallback: np.ndarray,
    mine: np.ndarray,
    op: ReduceOp,
    mine_first: bool,
) -> None:
    """Reduce the data of the finished borrowing receive ``req`` (see ``received``) into
    ``mine``: ``op(mine, theirs)`` if ``mine_first`` else ``op(theirs, mine)``, the order
    both ends agree on so that their results are bitwise identical. Gives the bytes back."""
    theirs = received(req, fallback)
    if mine_first:
        reduce_into(mine, mine, theirs, op)
    else:
        reduce_into(mine, theirs, mine, op)
    del theirs  # no view of the lent bytes may outlive the release
    transport.release(req)


class Communicator:
    """Collective state of one group over ``transport`` (ranks are the transport's ranks)."""

    def __init__(self, transport: Any, timeout_s: float) -> None:
        self.transport = transport
        self.rank: int = transport.rank
        self.size: int = transport.size
        # every other rank, in order: the direct algorithms' partners (read, never changed)
        self.peers: list[int] = [i for i in range(self.size) if i != self.rank]
        self.timeout_s = float(timeout_s)
        self.seq = 0
        self.last_op: tuple[str, int] | None = None
        self._scratch: dict[int, np.ndarray] = {}
        self._small: dict[tuple[np.dtype, int, int], tuple[np.ndarray, memoryview]] = {}
        self._blocks: dict[tuple[np.dtype, int], tuple[list[np.ndarray], list[memoryview]]] = {}

    def start(
        self,
        op_name: str,
        dtype: np.dtype | None,
        total: int,
        shape: tuple[int, ...] | None,
        root: int = -1,
        redop: int = 0,
    ) -> None:
        """Enter a new collective (all ranks must call collectives in the same order)."""
        seq = self.seq + 1
        self.seq = seq
        self.last_op = (op_name, seq)
        self.transport.begin(
            seq,
            op_code(op_name),
            redop,
            dtype_code(dtype) if dtype is not None else 0,
            root,
            total,
            shape_signature(shape) if shape is not None else 0,
            op_name,
        )

    def finish(self) -> None:
        """Leave the current collective."""
        self.transport.end()

    def wait(self, reqs: list, op_name: str) -> None:
        """Wait for ``reqs`` with this communicator's timeout."""
        self.transport.wait(reqs, op_name, self.timeout_s)

    def window(self, chunk_bytes: int, quarters: int) -> int:
        """How many chunks of ``chunk_bytes`` an algorithm may have in flight to one peer:
        ``quarters`` quarters of what the transport holds per peer (``inflight_bytes``; the
        rest is room for the chunks it forwards meanwhile), at least 1; no limit where the
        transport has none."""
        limit = self.transport.inflight_bytes
        if not limit:
            return 1 << 62
        return max(1, limit * quarters // 4 // max(1, chunk_bytes))

    def scratch(self, slot: int, count: int, dtype: np.dtype) -> np.ndarray:
        """A flat reusable array of ``count`` items of ``dtype`` (contents undefined)."""
        nbytes = count * np.dtype(dtype).itemsize
        buf = self._scratch.get(slot)
        if buf is None or buf.nbytes < nbytes:
            buf = np.empty(max(nbytes, 64), dtype=np.uint8)
            self._scratch[slot] = buf
        return buf[:nbytes].view(dtype)

    def small_scratch(
        self, dtype: np.dtype, count: int, slot: int = 0
    ) -> tuple[np.ndarray, memoryview]:
        """A flat reusable array of ``count`` items of ``dtype`` and its bytes, kept per
        (dtype, count, slot): the latency path's buffers, found with one lookup. Apart
        from :meth:`scratch`'s slots; a bounded number of shapes are kept."""
        key = (dtype, count, slot)
        found = self._small.get(key)
        if found is None:
            if len(self._small) >= _SMALL_KEPT:
                self._small.clear()
            arr = np.empty(count, dtype)
            found = self._small[key] = (arr, as_bytes(arr))
        return found

    def small_blocks(
        self, dtype: np.dtype, count: int
    ) -> tuple[list[np.ndarray], list[memoryview]]:
        """One reusable flat block of ``count`` items of ``dtype`` per rank, and the bytes
        of the other ranks' blocks in :attr:`peers` order: where the latency path's
        direct algorithms receive, found with one lookup (as :meth:`small_scratch`)."""
        key = (dtype, count)
        found = self._blocks.get(key)
        if found is None:
            if len(self._blocks) >= _SMALL_KEPT:
                self._blocks.clear()
            rows = list(np.empty((self.size, count), dtype))
            found = self._blocks[key] = (rows, [as_bytes(rows[i]) for i in self.peers])
        return found

    def abort(self, reason: str) -> None:
        """Abort the transport (any thread)."""
        self.transport.abort(reason)

    def close(self) -> None:
        """Close the transport."""
        self.transport.close()
