"""Functions run in child processes by the store tests (importable by spawn)."""

from __future__ import annotations

import hashlib
from datetime import timedelta

from mpdist.store import FileStore, Store

TIMEOUT = timedelta(seconds=30)


def open_store(spec: tuple) -> Store:
    """Open a client of the store described by ``spec`` ("file", path) or ("tcp", port)."""
    if spec[0] == "file":
        return FileStore(spec[1], -1, timeout=TIMEOUT)
    from mpdist.store import TCPStore

    return TCPStore("127.0.0.1", spec[1], None, False, TIMEOUT, wait_for_workers=False)


def adder(spec: tuple, idx: int, n: int) -> None:
    """Do ``n`` adds of 1 on the counter "ctr" once the parent says go."""
    with open_store(spec) as s:
        s.set(f"ready/{idx}", b"1")
        s.get("go")
        for _ in range(n):
            s.add("ctr", 1)


def big_value(i: int, size: int) -> bytes:
    """A deterministic, position-dependent payload (so a torn value is noticed)."""
    seed = hashlib.sha256(str(i).encode()).digest()
    return (seed * (size // len(seed) + 1))[:size]


def big_writer(spec: tuple, n: int, size: int) -> None:
    """Set ``n`` values of ``size`` bytes."""
    with open_store(spec) as s:
        for i in range(n):
            s.set(f"big/{i}", big_value(i, size))


def big_reader(spec: tuple, reader: int, n: int, size: int) -> None:
    """Get the ``n`` values as they arrive and report a digest of each (or what was wrong)."""
    with open_store(spec) as s:
        for i in range(n):
            v = s.get(f"big/{i}")
            ok = v == big_value(i, size)
            s.set(f"seen/{reader}/{i}", b"ok" if ok else f"bad len={len(v)}".encode())
