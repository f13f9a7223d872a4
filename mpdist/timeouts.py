"""Timeouts: one default per kind of wait, and one rule for what a timeout value means.

The kinds of wait and their defaults (torch's, where torch has one):

- a store's ``get`` / ``wait`` and its rendezvous: :data:`STORE_TIMEOUT`, 300 s;
- a process group's operations: :data:`GROUP_TIMEOUT`, 30 min;
- a multi-rank test's deadline in the harness: :data:`TEST_TIMEOUT`, 300 s.

The rule, for every timeout a user passes (:func:`seconds`): a ``timedelta`` or a
number of seconds; ``0`` (torch's "no timeout") and anything past about 31 years
(``timedelta.max``) mean *forever*; a negative value or NaN is a ``ValueError``;
anything else a ``TypeError``. ``None`` is never a duration: where an argument may be
None it means "the default of this kind of wait", decided by the caller.

    >>> seconds(timedelta(seconds=2))
    2.0
    >>> seconds(0) is None  # forever
    True
"""

from __future__ import annotations

from datetime import timedelta
from typing import Any

__all__ = ["FOREVER_S", "GROUP_TIMEOUT", "STORE_TIMEOUT", "TEST_TIMEOUT", "seconds"]

STORE_TIMEOUT = timedelta(seconds=300)
GROUP_TIMEOUT = timedelta(minutes=30)
TEST_TIMEOUT = timedelta(seconds=300)

# Longer than this is forever: it would overflow the timeouts of locks, selectors and sockets.
FOREVER_S = 1e9


def seconds(timeout: Any, what: str = "timeout") -> float | None:
    """``timeout`` (a timedelta or seconds) as float seconds, None for forever (see the rule above)."""
    if isinstance(timeout, timedelta):
        secs = timeout.total_seconds()
    elif isinstance(timeout, (int, float)) and not isinstance(timeout, bool):
        secs = float(timeout)
    else:
        raise TypeError(f"{what} must be a datetime.timedelta, got {type(timeout).__name__}")
    if secs != secs or secs < 0:  # NaN or negative
        raise ValueError(f"{what} must be >= 0, got {timeout!r}")
    return None if secs == 0 or secs > FOREVER_S else secs
