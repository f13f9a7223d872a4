"""Fixtures for the store tests: one factory per store kind, and leak checks."""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator
from datetime import timedelta

import pytest

import mpdist.store as st

KINDS = ["hash", "file", "tcp", "subclass"]


class MinimalStore(st.Store):
    """A store written in Python with only the required hooks: the base supplies the rest
    (wait, check, append, multi_get, multi_set, argument checks, timeouts)."""

    def __init__(self, timeout: timedelta) -> None:
        super().__init__(timeout)
        self.data: dict[str, bytes] = {}
        self.cond = threading.Condition()

    def _set(self, key: str, value: bytes) -> None:
        with self.cond:
            self.data[key] = value
            self.cond.notify_all()

    def _get(self, key: str, timeout: float | None) -> bytes:
        with self.cond:
            if not self.cond.wait_for(lambda: key in self.data, timeout):
                raise self._timeout_error("get", [key], timeout)
            return self.data[key]

    def _add(self, key: str, amount: int) -> int:
        with self.cond:
            new = st.base.parse_counter(key, self.data.get(key, b"0")) + amount
            self._set(key, str(new).encode())
            return new

    def _compare_set(self, key: str, expected: bytes, desired: bytes) -> bytes:
        with self.cond:
            cur = self.data.get(key)
            if (cur is None and expected == b"") or cur == expected:
                self._set(key, desired)
                return desired
            return expected if cur is None else cur

    def _delete_key(self, key: str) -> bool:
        with self.cond:
            return self.data.pop(key, None) is not None

    def _num_keys(self) -> int:
        return len(self.data)


ALL_KINDS = KINDS + [f"prefix-{k}" for k in KINDS]


def _make(kind: str, tmp_path, timeout: timedelta) -> tuple[st.Store, list[st.Store]]:
    """Build a store of ``kind``; returns it and everything to close afterwards."""
    if kind.startswith("prefix-"):
        base, closers = _make(kind[len("prefix-") :], tmp_path, timeout)
        return st.PrefixStore("pfx", base), closers
    if kind == "hash":
        s = st.HashStore(timeout=timeout)
    elif kind == "file":
        s = st.FileStore(str(tmp_path / "store"), world_size=-1, timeout=timeout)
    elif kind == "subclass":
        s = MinimalStore(timeout)
    elif kind == "tcp":
        s = st.TCPStore("127.0.0.1", 0, is_master=True, timeout=timeout, wait_for_workers=False)
    else:  # pragma: no cover
        raise AssertionError(kind)
    return s, [s]


@pytest.fixture(params=ALL_KINDS)
def kind(request) -> str:
    """Each store kind, bare and behind a PrefixStore."""
    k = request.param
    return k


@pytest.fixture
def make_store(kind, tmp_path) -> Iterator[Callable[..., st.Store]]:
    """Factory ``make_store(timeout=...)`` of the parametrized kind; closes what it made."""
    made: list[st.Store] = []

    def factory(timeout: timedelta = timedelta(seconds=30)) -> st.Store:
        s, closers = _make(kind, tmp_path, timeout)
        made.extend(closers)
        return s

    yield factory
    for s in made:
        s.close()


@pytest.fixture
def store(make_store) -> st.Store:
    """One store of the parametrized kind."""
    return make_store()


@pytest.fixture
def no_leaks() -> Iterator[None]:
    """Fail if the test leaves a thread or an inet socket of this process behind."""
    import psutil

    proc = psutil.Process()
    threads_before = set(threading.enumerate())
    conns_before = {c.laddr for c in proc.net_connections(kind="inet")}
    yield
    extra_threads = [t for t in threading.enumerate() if t not in threads_before and t.is_alive()]
    assert not extra_threads, f"threads left behind: {extra_threads}"
    extra = [c for c in proc.net_connections(kind="inet") if c.laddr not in conns_before]
    assert not extra, f"sockets left behind: {extra}"


class _Held:
    """What this process holds now: open fds, live threads, inet connections."""

    def __init__(self) -> None:
        import psutil

        proc = psutil.Process()
        self.fds = proc.num_fds()
        self.threads = {t for t in threading.enumerate() if t.is_alive()}
        self.conns = sorted(str(c.laddr) + str(c.raddr) for c in proc.net_connections("inet"))


@pytest.fixture
def held() -> Callable[[], _Held]:
    """A snapshot of what this process holds (fds, threads, inet connections)."""
    return _Held


@pytest.fixture
def unchanged(held: Callable[[], _Held]) -> Callable[[], None]:
    """``check()`` asserts the process holds exactly what it held at the start."""
    before = held()

    def check() -> None:
        after = held()
        assert after.threads == before.threads, f"threads: {after.threads - before.threads}"
        assert after.conns == before.conns
        assert after.fds == before.fds

    return check
