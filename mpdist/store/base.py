"""The ``Store`` base class: argument checking and timeouts shared by every store.

A store is a small key/value service that ranks use to meet. The public methods
(``set``, ``get``, ``add``, ...) live here: they validate arguments (raising
``TypeError``/``ValueError`` at once, before anything is sent), turn the timeout
into seconds and then call a protected hook (``_set``, ``_get``, ...) with clean
arguments. A store written in Python subclasses ``Store`` and implements the
hooks; ``_set``, ``_get``, ``_add``, ``_compare_set``, ``_delete_key`` and
``_num_keys`` are required, the others have defaults built on those.

Hook conventions: keys are ``str``, values are ``bytes``, a timeout is a float in
seconds or ``None`` for "wait forever". A blocking hook that runs out of time
raises the error made by :meth:`Store._timeout_error`.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from datetime import timedelta
from typing import Any

from mpdist.errors import DistStoreError
from mpdist.timeouts import STORE_TIMEOUT, seconds

__all__ = ["DEFAULT_TIMEOUT", "Store", "compare_set_outcome", "parse_counter", "timeout_seconds"]

# A store's waits default to the store kind of timeout (mpdist.timeouts).
DEFAULT_TIMEOUT = STORE_TIMEOUT

# Granularity of the polling fallback used by the default _wait hook.
_DEFAULT_POLL_S = 0.001


def _check_key(key: Any, what: str = "key") -> str:
    if not isinstance(key, str):
        raise TypeError(f"store {what} must be a str, got {type(key).__name__}")
    if not key.isascii():
        # Keys travel as UTF-8 (files, sockets): reject what cannot be encoded now.
        try:
            key.encode()
        except UnicodeEncodeError:
            raise ValueError(f"store {what} {key!r} is not valid UTF-8 text") from None
    return key


def _check_keys(keys: Any) -> list[str]:
    if isinstance(keys, (str, bytes)) or not isinstance(keys, Sequence):
        raise TypeError(f"store keys must be a list of str, got {type(keys).__name__}")
    return [_check_key(k) for k in keys]


def _to_bytes(value: Any, what: str = "value") -> bytes:
    if isinstance(value, bytes):
        return value
    if isinstance(value, str):
        return value.encode()
    if isinstance(value, (bytearray, memoryview)):
        return bytes(value)
    if isinstance(value, list) and all(isinstance(b, int) and 0 <= b < 256 for b in value):
        # torch's stores accept a list of byte values
        return bytes(value)
    raise TypeError(f"store {what} must be bytes or str, got {type(value).__name__}")


def timeout_seconds(timeout: Any, what: str = "timeout") -> float | None:
    """A user timeout (timedelta or seconds) as float seconds, None for forever (mpdist.timeouts)."""
    return seconds(timeout, what)


def _check_timedelta(timeout: Any, what: str = "timeout") -> timedelta:
    secs = timeout_seconds(timeout, what)
    if isinstance(timeout, timedelta):
        return timeout
    return timedelta(0) if secs is None else timedelta(seconds=secs)


def parse_counter(key: str, raw: bytes) -> int:
    """The integer held by an ``add`` counter; a non-numeric value is a clear error."""
    try:
        return int(raw)
    except ValueError:
        raise DistStoreError(
            f"add: key {key!r} holds {raw[:40]!r}, which is not a decimal integer"
        ) from None


def compare_set_outcome(
    current: bytes | None, expected: bytes, desired: bytes
) -> tuple[bool, bytes]:
    """The ``compare_set`` rule, for a key holding ``current`` (None: missing): whether to
    write ``desired``, and what to return.

    Write when the value equals ``expected``, or when the key is missing and ``expected`` is
    empty; return ``desired`` if written, else the current value (``expected`` if missing).
    """
    if current == expected or (current is None and expected == b""):
        return True, desired
    return False, expected if current is None else current


class Store:
    """Base class of every store; subclass it and implement the ``_`` hooks.

    ``timeout`` is the default deadline of ``get``, ``wait`` and ``multi_get``
    (a ``timedelta``; ``timedelta(0)`` waits forever).
    """

    # Class-level defaults keep a subclass working even if its __init__ skips ours.
    _timeout: timedelta = DEFAULT_TIMEOUT
    _closed: bool = False

    def __init__(self, timeout: timedelta = DEFAULT_TIMEOUT) -> None:
        self._timeout = _check_timedelta(timeout)
        self._closed = False

    def has_extended_api(self) -> bool:
        """True: append, multi_get and multi_set are supported (as torch's stores say)."""
        return True

    # ------------------------------------------------------------------ timeouts
    @property
    def timeout(self) -> timedelta:
        """Default timeout of blocking operations."""
        return self._timeout

    def set_timeout(self, timeout: timedelta) -> None:
        """Change the default timeout of ``get``, ``wait`` and ``multi_get``."""
        self._timeout = _check_timedelta(timeout)

    def _timeout_s(self, timeout: Any = None) -> float | None:
        if timeout is None:
            return timeout_seconds(self.timeout)
        return timeout_seconds(timeout)

    @staticmethod
    def _timeout_error(op: str, keys: Sequence[str], timeout: float | None) -> DistStoreError:
        """The error a blocking hook raises when its deadline passes."""
        shown = ", ".join(repr(k) for k in keys)
        return DistStoreError(
            f"{op}: timed out after {timeout:g} s (store timeout) waiting for key(s) [{shown}]"
        )

    # ------------------------------------------------------------------ public API
    def set(self, key: str, value: bytes | str) -> None:
        """Store ``value`` under ``key`` (overwriting) and wake waiters."""
        self._set(_check_key(key), _to_bytes(value))

    def get(self, key: str) -> bytes:
        """Return the value of ``key``, blocking until it exists or the timeout passes."""
        return self._get(_check_key(key), self._timeout_s())

    def add(self, key: str, amount: int) -> int:
        """Atomically add ``amount`` to the decimal counter at ``key`` (missing = 0); return it."""
        _check_key(key)
        if not isinstance(amount, int) or isinstance(amount, bool):
            raise TypeError(f"store add amount must be an int, got {type(amount).__name__}")
        return self._add(key, amount)

    def compare_set(
        self, key: str, expected_value: bytes | str, desired_value: bytes | str
    ) -> bytes:
        """Set ``key`` to ``desired_value`` if it currently equals ``expected_value``.

        A missing key with ``expected_value == b""`` is set too. Returns the value the
        key holds afterwards, or ``expected_value`` if the key is missing and was not set.
        """
        _check_key(key)
        return self._compare_set(
            key,
            _to_bytes(expected_value, "expected_value"),
            _to_bytes(desired_value, "desired_value"),
        )

    def wait(self, keys: Sequence[str], timeout: timedelta | None = None) -> None:
        """Block until every key exists; ``DistStoreError`` after the timeout."""
        keys = _check_keys(keys)
        self._wait(keys, self._timeout_s(timeout))

    def check(self, keys: Sequence[str]) -> bool:
        """True if every key exists; never blocks."""
        return self._check(_check_keys(keys))

    def delete_key(self, key: str) -> bool:
        """Remove ``key``; True if it existed."""
        return self._delete_key(_check_key(key))

    def num_keys(self) -> int:
        """Number of keys in the store, internal ones included."""
        return self._num_keys()

    def append(self, key: str, value: bytes | str) -> None:
        """Append ``value`` to the value of ``key`` (creating it if missing)."""
        self._append(_check_key(key), _to_bytes(value))

    def multi_get(self, keys: Sequence[str]) -> list[bytes]:
        """Values of all ``keys``, waiting for them with one deadline."""
        keys = _check_keys(keys)
        return self._multi_get(keys, self._timeout_s())

    def multi_set(self, keys: Sequence[str], values: Sequence[bytes | str]) -> None:
        """Set every ``keys[i]`` to ``values[i]``; the lengths must match."""
        keys = _check_keys(keys)
        if isinstance(values, (str, bytes)) or not isinstance(values, Sequence):
            raise TypeError(f"store values must be a list, got {type(values).__name__}")
        if len(keys) != len(values):
            raise ValueError(
                f"multi_set: {len(keys)} keys but {len(values)} values; the lengths must match"
            )
        self._multi_set(keys, [_to_bytes(v) for v in values])

    def close(self) -> None:
        """Release this store's resources; idempotent."""
        if not self._closed:
            self._closed = True
            self._close()

    def __enter__(self) -> Store:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # ------------------------------------------------------------------ hooks
    def _set(self, key: str, value: bytes) -> None:
        raise NotImplementedError(f"{type(self).__name__} does not implement set")

    def _get(self, key: str, timeout: float | None) -> bytes:
        raise NotImplementedError(f"{type(self).__name__} does not implement get")

    def _add(self, key: str, amount: int) -> int:
        raise NotImplementedError(f"{type(self).__name__} does not implement add")

    def _compare_set(self, key: str, expected: bytes, desired: bytes) -> bytes:
        raise NotImplementedError(f"{type(self).__name__} does not implement compare_set")

    def _delete_key(self, key: str) -> bool:
        raise NotImplementedError(f"{type(self).__name__} does not implement delete_key")

    def _num_keys(self) -> int:
        raise NotImplementedError(f"{type(self).__name__} does not implement num_keys")

    def _check(self, keys: list[str]) -> bool:
        # A zero-length wait on each key: exists now or not.
        for key in keys:
            try:
                self._get(key, 1e-9)
            except DistStoreError:
                return False
        return True

    def _wait(self, keys: list[str], timeout: float | None) -> None:
        # Default: poll _check; concrete stores override this with a real wake-up.
        deadline = None if timeout is None else time.monotonic() + timeout
        while not self._check(keys):
            if deadline is not None and time.monotonic() >= deadline:
                missing = [k for k in keys if not self._check([k])]
                raise self._timeout_error("wait", missing, timeout)
            time.sleep(_DEFAULT_POLL_S)

    def _append(self, key: str, value: bytes) -> None:
        # Optimistic loop over compare_set; stores with a native append override it.
        while True:
            cur = self._get(key, 1e-9) if self._check([key]) else b""
            new = cur + value
            if self._compare_set(key, cur, new) == new:
                return

    def _multi_get(self, keys: list[str], timeout: float | None) -> list[bytes]:
        self._wait(keys, timeout)
        return [self._get(k, timeout) for k in keys]

    def _multi_set(self, keys: list[str], values: list[bytes]) -> None:
        for k, v in zip(keys, values, strict=True):
            self._set(k, v)

    def _close(self) -> None:
        pass
