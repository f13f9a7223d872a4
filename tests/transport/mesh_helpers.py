"""Helpers for the transport and algorithm tests: a tiny store and a runner of ranks as threads."""

from __future__ import annotations

import glob
import os
import threading
import time
from collections.abc import Callable
from typing import Any

import psutil

from mpdist.algorithms import Communicator
from mpdist.transport import LocalTransport, TcpTransport

KINDS = ["local", "tcp", "tcp-noshm"]


class DictStore:
    """The slice of the store API the transports use: set, blocking get, add, check."""

    def __init__(self, timeout: float = 30.0) -> None:
        self._data: dict[str, bytes] = {}
        self._cond = threading.Condition()
        self.timeout = timeout

    def set(self, key: str, value: bytes | str) -> None:
        with self._cond:
            self._data[key] = value.encode() if isinstance(value, str) else bytes(value)
            self._cond.notify_all()

    def get(self, key: str) -> bytes:
        deadline = time.monotonic() + self.timeout
        with self._cond:
            while key not in self._data:
                left = deadline - time.monotonic()
                if left <= 0:
                    raise TimeoutError(f"timeout waiting for key {key!r}")
                self._cond.wait(left)
            return self._data[key]

    def add(self, key: str, n: int) -> int:
        with self._cond:
            v = int(self._data.get(key, b"0")) + n
            self._data[key] = str(v).encode()
            self._cond.notify_all()
            return v

    def check(self, keys: list[str]) -> bool:
        with self._cond:
            return all(k in self._data for k in keys)


def make_transport(
    kind: str, store: Any, rank: int, size: int, timeout: float = 20.0, rank_names=None
):
    if kind == "local":
        return LocalTransport(store, rank, size, timeout, rank_names=rank_names)
    return TcpTransport(store, rank, size, timeout, rank_names=rank_names, shm=kind == "tcp")


def run_ranks(
    size: int,
    fn: Callable[[Communicator], Any],
    kind: str = "local",
    timeout: float = 20.0,
    raise_first: bool = True,
    rank_names: list[int] | None = None,
) -> list[Any]:
    """Run ``fn(comm)`` on ``size`` ranks (threads); returns each rank's result or exception."""
    store = DictStore()
    results: list[Any] = [None] * size

    def body(rank: int) -> None:
        t = None
        try:
            t = make_transport(kind, store, rank, size, timeout, rank_names)
            results[rank] = fn(Communicator(t, timeout))
        except BaseException as e:  # reported to the caller
            results[rank] = e
        finally:
            if t is not None:
                t.close()

    threads = [threading.Thread(target=body, args=(r,), name=f"rank{r}") for r in range(size)]
    for th in threads:
        th.start()
    for th in threads:
        th.join(timeout * 3)
        assert not th.is_alive(), "a rank thread hung"
    if raise_first:
        for res in results:
            if isinstance(res, BaseException):
                raise res
    return results


class DirStore:
    """A cross-process store: one file per key in a directory (set/get/add/check)."""

    def __init__(self, path: str, timeout: float = 30.0) -> None:
        self.path = path
        self.timeout = timeout

    def _f(self, key: str) -> str:
        return os.path.join(self.path, key.replace("/", "_"))

    def set(self, key: str, value: bytes | str) -> None:
        data = value.encode() if isinstance(value, str) else bytes(value)
        tmp = f"{self._f(key)}.tmp{os.getpid()}.{threading.get_ident()}"
        with open(tmp, "wb") as f:
            f.write(data)
        os.replace(tmp, self._f(key))

    def get(self, key: str) -> bytes:
        deadline = time.monotonic() + self.timeout
        while True:
            try:
                with open(self._f(key), "rb") as f:
                    return f.read()
            except FileNotFoundError:
                if time.monotonic() > deadline:
                    raise TimeoutError(f"timeout waiting for key {key!r}") from None
                time.sleep(0.002)  # polling a directory: there is nothing to block on

    def check(self, keys: list[str]) -> bool:
        return all(os.path.exists(self._f(k)) for k in keys)


def leak_snapshot() -> tuple[int, set[str]]:
    """(open inet sockets of this process, names of live threads)."""
    proc = psutil.Process()
    return len(proc.net_connections(kind="inet")), {t.name for t in threading.enumerate()}


def shm_files() -> set[str]:
    """Shared-memory ring files of this process (other processes may be making their own)."""
    return set(glob.glob(f"/dev/shm/mpdist-{os.getpid()}-*"))
