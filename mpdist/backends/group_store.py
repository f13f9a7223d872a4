"""GroupStore: the store view a process group is built on, whose waits can be aborted.

A group's ranks meet through the rendezvous store while the group is being built (the
transport publishes and looks up addresses there), and ``monitored_barrier`` waits on it
afterwards. A blocking store call cannot be interrupted from another thread, so the harness
could not abort a rank stuck in ``new_group`` waiting for a peer that never comes: it waited
out the store timeout. Here every blocking wait is cut into short slices of the underlying
store's own wait (which returns at once when the key arrives), and ``abort(reason)`` makes
the current and every later wait raise ``DistBackendError(reason)`` within one slice.
``abort`` also runs the callbacks registered with ``add_abort_callback`` (the transport's
own ``abort``, so a transport that is connecting its mesh stops too).

With ``timeout``, a wait without its own deadline lasts the group's timeout rather than the
underlying store's (as gloo's rendezvous does): a rank waiting while its group is built for a
peer that never comes (stopped, or gone with ``sys.exit(0)``) fails after the group's timeout.
"""

from __future__ import annotations

import contextlib
import threading
import time
from collections.abc import Callable
from datetime import timedelta

from mpdist.errors import DistBackendError, DistStoreError
from mpdist.store import PrefixStore, Store

__all__ = ["GroupStore"]

# How long one slice of a wait lasts: the longest an abort waits to be noticed. Short
# enough to feel prompt, long enough that a TCPStore waiter costs a few requests a second.
_SLICE_S = 0.05


class GroupStore(PrefixStore):
    """``PrefixStore(prefix, store)`` whose blocking waits ``abort(reason)`` interrupts."""

    def __init__(self, prefix: str, store: Store, timeout: timedelta | None = None) -> None:
        super().__init__(prefix, store)
        self._group_timeout = timeout
        self._abort_lock = threading.Lock()
        self._abort_reason: str | None = None
        self._on_abort: list[Callable[[str], object]] = []
        # every callback ever added: registering the same one again is a no-op, so a caller
        # need not know whether someone registered it before
        self._registered: list[Callable[[str], object]] = []

    @property
    def timeout(self) -> timedelta:
        """The group's timeout when given, else the underlying store's."""
        return self._store.timeout if self._group_timeout is None else self._group_timeout

    # ------------------------------------------------------------------ abort
    def abort(self, reason: str) -> None:
        """From any thread: every pending and later wait raises ``DistBackendError(reason)``;
        the registered callbacks run once, with ``reason``."""
        with self._abort_lock:
            if self._abort_reason is not None:
                return
            self._abort_reason = str(reason)
            callbacks, self._on_abort = self._on_abort, []
        for cb in callbacks:
            # one failing callback must not keep the others from aborting
            with contextlib.suppress(Exception):
                cb(self._abort_reason)

    def add_abort_callback(self, callback: Callable[[str], object]) -> None:
        """Run ``callback(reason)`` on abort; at once if the store was aborted already. A
        callback registered before (an equal one: the same bound method) is not added or run
        again."""
        with self._abort_lock:
            if callback in self._registered:
                return
            self._registered.append(callback)
            reason = self._abort_reason
            if reason is None:
                self._on_abort.append(callback)
                return
        callback(reason)

    @property
    def aborted(self) -> bool:
        """True once ``abort`` was called."""
        return self._abort_reason is not None

    def _raise_if_aborted(self) -> None:
        reason = self._abort_reason
        if reason is not None:
            raise DistBackendError(reason)

    # ------------------------------------------------------------------ sliced waits
    def _sliced_wait(self, op: str, keys: list[str], timeout: float | None) -> None:
        deadline = None if timeout is None else time.monotonic() + timeout
        while True:
            self._raise_if_aborted()
            left = None if deadline is None else deadline - time.monotonic()
            if left is not None and left <= 0:
                if super()._check(keys):
                    return
                raise self._timeout_error(op, self._ks(keys), timeout)
            try:
                super()._wait(keys, _SLICE_S if left is None else min(_SLICE_S, left))
                return
            except DistStoreError:
                # the slice ran out (a broken or closed store raises from _check itself)
                if super()._check(keys):
                    return

    def _get(self, key: str, timeout: float | None) -> bytes:
        self._sliced_wait("get", [key], timeout)
        return super()._get(key, timeout)

    def _wait(self, keys: list[str], timeout: float | None) -> None:
        self._sliced_wait("wait", keys, timeout)

    def _multi_get(self, keys: list[str], timeout: float | None) -> list[bytes]:
        self._sliced_wait("multi_get", keys, timeout)
        return super()._multi_get(keys, timeout)
