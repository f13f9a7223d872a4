"""Fixtures for the store tests: one factory per store kind, and leak checks."""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator
from datetime import timedelta

import pytest

import mpdist.store as st

KINDS = ["hash", "file", "tcp"]
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
    elif kind == "tcp":
        s = st.TCPStore("127.0.0.1", 0, is_master=True, timeout=timeout, wait_for_workers=False)
    else:  # pragma: no cover
        raise AssertionError(kind)
    return s, [s]


@pytest.fixture(params=ALL_KINDS)
def kind(request) -> str:
    """Each store kind, bare and behind a PrefixStore."""
    k = request.param
    base = k.removeprefix("prefix-")
    if not hasattr(st, {"hash": "HashStore", "file": "FileStore", "tcp": "TCPStore"}[base]):
        pytest.skip(f"{base} store not built yet")
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
