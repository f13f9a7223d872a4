"""``HashStore``: an in-process store (a dict and a condition variable), thread-safe."""

from __future__ import annotations

import threading
import time
from datetime import timedelta

from mpdist.store.base import DEFAULT_TIMEOUT, Store, compare_set_outcome, parse_counter

__all__ = ["HashStore"]


class HashStore(Store):
    """A store living in this process; ranks that are threads share one instance."""

    def __init__(self, timeout: timedelta = DEFAULT_TIMEOUT) -> None:
        super().__init__(timeout)
        self._data: dict[str, bytes] = {}
        self._cond = threading.Condition(threading.Lock())

    def _set(self, key: str, value: bytes) -> None:
        with self._cond:
            self._data[key] = value
            self._cond.notify_all()

    def _wait_locked(self, op: str, keys: list[str], timeout: float | None) -> None:
        # Called with self._cond held.
        deadline = None if timeout is None else time.monotonic() + timeout
        while True:
            missing = [k for k in keys if k not in self._data]
            if not missing:
                return
            if deadline is None:
                self._cond.wait()
                continue
            left = deadline - time.monotonic()
            if left <= 0:
                raise self._timeout_error(op, missing, timeout)
            self._cond.wait(left)

    def _get(self, key: str, timeout: float | None) -> bytes:
        with self._cond:
            self._wait_locked("get", [key], timeout)
            return self._data[key]

    def _wait(self, keys: list[str], timeout: float | None) -> None:
        with self._cond:
            self._wait_locked("wait", keys, timeout)

    def _multi_get(self, keys: list[str], timeout: float | None) -> list[bytes]:
        with self._cond:
            self._wait_locked("multi_get", keys, timeout)
            return [self._data[k] for k in keys]

    def _check(self, keys: list[str]) -> bool:
        with self._cond:
            return all(k in self._data for k in keys)

    def _add(self, key: str, amount: int) -> int:
        with self._cond:
            new = parse_counter(key, self._data.get(key, b"0")) + amount
            self._data[key] = str(new).encode()
            self._cond.notify_all()
            return new

    def _compare_set(self, key: str, expected: bytes, desired: bytes) -> bytes:
        with self._cond:
            write, result = compare_set_outcome(self._data.get(key), expected, desired)
            if write:
                self._data[key] = desired
                self._cond.notify_all()
            return result

    def _delete_key(self, key: str) -> bool:
        with self._cond:
            return self._data.pop(key, None) is not None

    def _num_keys(self) -> int:
        with self._cond:
            return len(self._data)

    def _append(self, key: str, value: bytes) -> None:
        with self._cond:
            self._data[key] = self._data.get(key, b"") + value
            self._cond.notify_all()

    def _multi_set(self, keys: list[str], values: list[bytes]) -> None:
        with self._cond:
            self._data.update(zip(keys, values, strict=True))
            self._cond.notify_all()
