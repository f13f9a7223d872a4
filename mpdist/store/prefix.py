"""``PrefixStore``: a view of another store whose keys all start with ``prefix/``.

Process groups use it to give every group its own namespace in one shared store.
"""

from __future__ import annotations

from datetime import timedelta

from mpdist.store.base import Store

__all__ = ["PrefixStore"]


class PrefixStore(Store):
    """Every key ``k`` becomes ``f"{prefix}/{k}"`` in ``store``.

    The timeout is the underlying store's (``set_timeout`` changes it there, as in
    torch); ``num_keys`` counts the underlying store's keys; ``close`` leaves the
    underlying store open.
    """

    def __init__(self, prefix: str, store: Store) -> None:
        if not isinstance(prefix, str):
            raise TypeError(f"PrefixStore prefix must be a str, got {type(prefix).__name__}")
        if not isinstance(store, Store):
            raise TypeError(f"PrefixStore store must be a Store, got {type(store).__name__}")
        self._prefix = prefix
        self._store = store
        self._closed = False

    @property
    def underlying_store(self) -> Store:
        """The store this view writes into."""
        return self._store

    @property
    def prefix(self) -> str:
        """The prefix (without the trailing ``/``)."""
        return self._prefix

    @property
    def timeout(self) -> timedelta:
        """The underlying store's default timeout."""
        return self._store.timeout

    def set_timeout(self, timeout: timedelta) -> None:
        """Set the underlying store's default timeout."""
        self._store.set_timeout(timeout)

    def _k(self, key: str) -> str:
        return f"{self._prefix}/{key}"

    def _ks(self, keys: list[str]) -> list[str]:
        return [f"{self._prefix}/{k}" for k in keys]

    # Timeout errors of the underlying store name the full (prefixed) keys, which
    # is what a person debugging a hang wants to grep for.
    def _set(self, key: str, value: bytes) -> None:
        self._store._set(self._k(key), value)

    def _get(self, key: str, timeout: float | None) -> bytes:
        return self._store._get(self._k(key), timeout)

    def _add(self, key: str, amount: int) -> int:
        return self._store._add(self._k(key), amount)

    def _compare_set(self, key: str, expected: bytes, desired: bytes) -> bytes:
        return self._store._compare_set(self._k(key), expected, desired)

    def _wait(self, keys: list[str], timeout: float | None) -> None:
        self._store._wait(self._ks(keys), timeout)

    def _check(self, keys: list[str]) -> bool:
        return self._store._check(self._ks(keys))

    def _delete_key(self, key: str) -> bool:
        return self._store._delete_key(self._k(key))

    def _num_keys(self) -> int:
        return self._store._num_keys()

    def _append(self, key: str, value: bytes) -> None:
        self._store._append(self._k(key), value)

    def _multi_get(self, keys: list[str], timeout: float | None) -> list[bytes]:
        return self._store._multi_get(self._ks(keys), timeout)

    def _multi_set(self, keys: list[str], values: list[bytes]) -> None:
        self._store._multi_set(self._ks(keys), values)
