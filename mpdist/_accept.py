"""Accepting without spinning: which accept errors are one client's, and a listener's rest.

``accept`` fails in two ways. A failure that concerns one client (accept(2) lists the network
errors it may pass on, like a connection reset before it was accepted) uses that connection
up: try the next one. Any other failure (out of descriptors, EMFILE / ENFILE, or memory; a
listener shut down under its owner) repeats at once while the listener still polls readable,
so a loop that polls it again spins a core. Such a listener rests: its owner stops polling it
for :class:`ListenerRest`'s delay (10 ms, doubling to 0.5 s while accepts keep failing), and
the connection waits in the kernel's backlog until a descriptor frees up. A listener that no
longer listens (:func:`listener_gone`) will never accept again: an owner that needs it fails.
"""

from __future__ import annotations

import errno
import time

__all__ = ["ListenerRest", "listener_gone", "one_client"]

_ONE_CLIENT = frozenset(
    getattr(errno, name)
    for name in (
        "ECONNABORTED",
        "EPROTO",
        "EPERM",
        "ENETDOWN",
        "ENOPROTOOPT",
        "EHOSTDOWN",
        "ENONET",
        "EHOSTUNREACH",
        "EOPNOTSUPP",
        "ENETUNREACH",
    )
    if hasattr(errno, name)
)
# accept errors that say the listener itself no longer listens (shut down, closed)
_GONE = frozenset({errno.EINVAL, errno.EBADF, errno.ENOTSOCK})
_FIRST_REST_S = 0.01
_MAX_REST_S = 0.5


def one_client(error: OSError) -> bool:
    """Whether a failed accept concerned one client only (its connection is used up)."""
    return error.errno in _ONE_CLIENT


def listener_gone(error: OSError) -> bool:
    """Whether a failed accept says the listener no longer listens: no rest will help."""
    return error.errno in _GONE


class ListenerRest:
    """When a listener whose accept would fail again at once is polled again."""

    def __init__(self) -> None:
        self.until = 0.0  # monotonic time the rest ends; 0.0: not resting
        self._next = _FIRST_REST_S

    def start(self) -> None:
        """Accept failed (not one client's): rest, longer each time in a row."""
        self.until = time.monotonic() + self._next
        self._next = min(2 * self._next, _MAX_REST_S)

    def accepted(self) -> None:
        """Accept worked: the next rest is short again."""
        self._next = _FIRST_REST_S

    def left(self, now: float) -> float | None:
        """Seconds of rest left (0.0: over, poll the listener again), None when not resting."""
        if not self.until:
            return None
        return max(0.0, self.until - now)

    def end(self) -> None:
        """The owner polls the listener again."""
        self.until = 0.0
