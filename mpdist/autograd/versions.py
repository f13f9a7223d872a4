"""Version counters for in-place writes: which memory was written since a given moment.

In-place writes made through Tensor methods are tracked per memory owner (the ndarray at the
root of a view chain, so views and detached aliases count as one, as torch's views share their
base's version counter). The graph records the version when it records a node and, before
differentiating that node, refuses if an array it read or wrote was written since (see
``graph.Node.check_unmodified``). Writes through ``.data`` (numpy itself) are not tracked, as
in torch.

Writes are numbered by one global serial. ``_last_write`` maps id(memory owner) to the serial
of its latest write; a finalizer drops the entry when the owner dies, before its id can be
reused. Taking the current version costs one read, and checking against it costs nothing
unless some write happened since.
"""

from __future__ import annotations

import threading
import weakref

import numpy as np

_serial = 0
_last_write: dict[int, int] = {}
_write_lock = threading.Lock()


def _owner(a: np.ndarray) -> np.ndarray:
    """The ndarray that owns ``a``'s memory (``a`` itself unless it is a view)."""
    while isinstance(a.base, np.ndarray):
        a = a.base
    return a


def note_inplace_write(a: np.ndarray) -> None:
    """Record an in-place write into ``a`` (and so into every view of its memory)."""
    global _serial
    owner = _owner(a)
    key = id(owner)
    with _write_lock:
        if key not in _last_write:
            weakref.finalize(owner, _last_write.pop, key, None)
        _serial += 1
        _last_write[key] = _serial


def current_version() -> int:
    """The serial of the latest tracked write anywhere (0 before the first)."""
    return _serial


def written_since(a: np.ndarray, version: int) -> bool:
    """True when ``a``'s memory was written in place after ``current_version()`` was
    ``version``."""
    return _last_write.get(id(_owner(a)), -1) > version
