"""Helpers for the transport and algorithm tests: a tiny store and a runner of ranks as threads."""

from __future__ import annotations

import contextlib
import glob
import os
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

import psutil
import pytest

from mpdist.algorithms import Communicator
from mpdist.transport import LocalTransport, TcpTransport

KINDS = ["local", "tcp", "tcp-nobox", "tcp-noshm"]


class DictStore:
    """The slice of the store API the transports use: set, blocking get, add, check."""

    def __init__(self, timeout: float = 30.0) -> None:
        self._data: dict[str, bytes] = {}
        self._cond = threading.Condition()
        self._abort_reason: str | None = None
        self.timeout = timeout

    def abort(self, reason: str) -> None:
        """Make every pending and future ``get`` of a missing key raise at once."""
        with self._cond:
            self._abort_reason = reason
            self._cond.notify_all()

    def set(self, key: str, value: bytes | str) -> None:
        with self._cond:
            self._data[key] = value.encode() if isinstance(value, str) else bytes(value)
            self._cond.notify_all()

    def get(self, key: str) -> bytes:
        deadline = time.monotonic() + self.timeout
        with self._cond:
            while key not in self._data:
                if self._abort_reason is not None:
                    raise TimeoutError(f"waiting for key {key!r}: {self._abort_reason}")
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
    t = TcpTransport(
        store, rank, size, timeout, rank_names=rank_names, shm=kind != "tcp-noshm",
        mailbox=kind == "tcp",
    )  # fmt: skip
    return t.connect()


def run_ranks(
    size: int,
    fn: Callable[[Communicator], Any],
    kind: str = "local",
    timeout: float = 20.0,
    raise_first: bool = True,
    rank_names: list[int] | None = None,
) -> list[Any]:
    """Run ``fn(comm)`` on ``size`` ranks (threads); returns each rank's result or exception.

    The first rank whose ``fn`` raises aborts the others' transports (and the store they
    meet through), so they raise at once instead of waiting out ``timeout``; with
    ``raise_first`` that first exception is raised here. The transports are closed together
    once every rank's ``fn`` has returned or raised.
    """
    store = DictStore()
    results: list[Any] = [None] * size
    transports: list[Any] = [None] * size
    failed: list[int] = []  # ranks in the order they failed
    reason: list[str] = []  # why the first one failed (what the others are aborted with)
    lock = threading.Lock()
    all_done = threading.Barrier(size)

    def abort_all(why: str) -> None:
        with lock:
            reason.append(why)
            store.abort(why)
            for t in transports:
                if t is not None:
                    t.abort(why)

    def body(rank: int) -> None:
        t = None
        try:
            t = make_transport(kind, store, rank, size, timeout, rank_names)
            with lock:
                transports[rank] = t
                if reason:  # another rank failed while this one was meeting its peers
                    t.abort(reason[0])
            results[rank] = fn(Communicator(t, timeout))
        except BaseException as e:  # reported to the caller
            results[rank] = e
            with lock:
                failed.append(rank)
                first = len(failed) == 1
            if first:
                abort_all(f"rank {rank} failed: {type(e).__name__}: {e}")
        finally:
            # close together once every rank is done, as a job destroys its group at the
            # end: a rank that closed early could make a peer see "lost its connection"
            # before the ERROR that explains it (see test_mismatched_*)
            with contextlib.suppress(threading.BrokenBarrierError):
                all_done.wait()
            with lock:
                transports[rank] = None
            if t is not None:
                t.close()

    threads = [
        threading.Thread(target=body, args=(r,), name=f"mpdist-mesh-rank-{r}") for r in range(size)
    ]
    for th in threads:
        th.start()
    for th in threads:
        th.join(timeout * 3)
        if th.is_alive():
            abort_all(f"{th.name} hung")
            all_done.abort()
            for other in threads:
                other.join(timeout)
            raise AssertionError(f"{th.name} hung")
    if raise_first and failed:
        raise results[failed[0]]
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


def leak_snapshot() -> tuple[set[tuple], set[threading.Thread]]:
    """(open inet sockets of this process, live threads): compare two snapshots with ``==``."""
    socks = {(c.fd, c.laddr, c.raddr) for c in psutil.Process().net_connections(kind="inet")}
    return socks, set(threading.enumerate())


def shm_files() -> set[str]:
    """Shared-memory ring files of this process (other processes may be making their own)."""
    return set(glob.glob(f"/dev/shm/mpdist-{os.getpid()}-*"))


@contextlib.contextmanager
def nothing_left_behind() -> Iterator[None]:
    """Fail if the block leaves a socket, thread, child process or ring file behind."""
    socks, threads = leak_snapshot()
    files = shm_files()
    children = _children()
    yield
    after_socks, after_threads = leak_snapshot()
    assert after_socks == socks, f"sockets left open: {after_socks - socks}"
    assert after_threads == threads, f"threads left running: {after_threads - threads}"
    assert shm_files() == files, f"ring files left: {shm_files() - files}"
    now = _children()
    assert now <= children, f"processes left running: {now - children}"


def _children() -> set[int]:
    """Child processes, without multiprocessing's own servers: the harness's forkserver (and
    its resource tracker) is started once and reused for the session, by design."""
    out = set()
    for p in psutil.Process().children(recursive=True):
        try:
            cmd = " ".join(p.cmdline())
        except psutil.Error:  # it exited meanwhile: not left behind
            continue
        if (
            "multiprocessing.forkserver" not in cmd
            and "multiprocessing.resource_tracker" not in cmd
        ):
            out.add(p.pid)
    return out


@pytest.fixture(autouse=True)
def _nothing_left_behind() -> Iterator[None]:
    """Autouse in the transport and algorithm tests (their conftests import it)."""
    with nothing_left_behind():
        yield
