"""Unsharded parameter storage whose memory FSDP can give back, and the per-rank meter of it.

Both FSDPs (``FullyShardedDataParallel``'s flat parameter and ``fully_shard``'s units) keep a
unit's unsharded parameters in a ``Storage``: a flat array in a private anonymous memory
map. The autograd graph keeps references to the arrays an op saved for backward, so
dropping references would free nothing; ``free`` instead tells the kernel to drop the map's
pages (``MADV_DONTNEED``: the array stays valid and reads zeros) and the next gather writes
into the same array, which the saved views see. That is torch's "resize the storage to
zero" on numpy. The map is private: on a shared anonymous map ``MADV_DONTNEED`` only unmaps
the pages from this process, and the kernel keeps them (and their values).

``live_unsharded_bytes`` / ``peak_unsharded_bytes`` count the bytes resident in storages
(and in all-gather buffers, which ``count`` is told about), per rank: per thread, so that
the threaded backend's ranks count apart.
"""

from __future__ import annotations

import mmap
import threading

import numpy as np

_meter = threading.local()


def count(nbytes: int) -> None:
    """``nbytes`` more (negative: fewer) unsharded bytes are live on this rank."""
    live = getattr(_meter, "live", 0) + nbytes
    _meter.live = live
    _meter.peak = max(getattr(_meter, "peak", 0), live)


def live_unsharded_bytes() -> int:
    """Bytes of unsharded parameters (and their all-gather buffers) resident on this rank."""
    return int(getattr(_meter, "live", 0))


def peak_unsharded_bytes(reset: bool = False) -> int:
    """The most ``live_unsharded_bytes`` has been since the last reset; ``reset`` starts over
    from what is live now."""
    peak = int(getattr(_meter, "peak", 0))
    if reset:
        _meter.peak = live_unsharded_bytes()
    return peak


_HUGE = 2 << 20  # a transparent huge page: refilling one costs one fault instead of 512


class Storage:
    """A flat array in an anonymous memory map whose pages can be given back to the kernel.

    Refilling freed pages costs a page fault each, which dominated a step (2.8 ms per 4 MiB
    unit on 4 KiB pages, 0.3 ms on 2 MiB ones); so a storage of a huge page or more starts
    on a huge-page boundary and asks for huge pages (``MADV_HUGEPAGE``, where the kernel has
    them; elsewhere nothing changes)."""

    def __init__(self, numel: int, dtype: np.dtype, resident: bool = True) -> None:
        self.nbytes = numel * dtype.itemsize
        huge = self.nbytes >= _HUGE and hasattr(mmap, "MADV_HUGEPAGE")
        size = max(self.nbytes, 1) + (_HUGE if huge else 0)
        self._map = mmap.mmap(-1, size, flags=mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS)
        self._offset = 0
        if huge:
            self._map.madvise(mmap.MADV_HUGEPAGE)
            self._offset = -np.frombuffer(self._map, dtype=np.uint8).ctypes.data % _HUGE
        self.array = np.frombuffer(self._map, dtype=dtype, count=numel, offset=self._offset)
        self.resident = resident
        if resident:
            count(self.nbytes)

    def materialize(self) -> None:
        """Count the pages as resident again (they come back, zeroed, when written)."""
        if not self.resident:
            self.resident = True
            count(self.nbytes)

    def free(self) -> None:
        """Give the pages back; the array stays valid and reads zeros until refilled."""
        if self.resident:
            self.resident = False
            count(-self.nbytes)
            if self.nbytes >= mmap.PAGESIZE:
                self._map.madvise(mmap.MADV_DONTNEED, self._offset, self.nbytes)
