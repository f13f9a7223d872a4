"""Helpers of the store tests: functions run in child processes (importable by spawn), the
parent's side of those runs, and checks that test_file and test_tcp share."""

from __future__ import annotations

import contextlib
import gc
import hashlib
import multiprocessing as mp
import multiprocessing.connection as mp_connection
import threading
import time
from collections.abc import Iterator
from datetime import timedelta

from mpdist.errors import DistStoreError
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


def run_all(procs: list) -> None:
    """Start every process and join every one of them, whatever happens."""
    try:
        for p in procs:
            p.start()
    finally:
        join_all(procs)


def join_all(procs: list, limit: float = 60.0) -> None:
    """Join every started process; if one fails (or the limit passes) kill the rest.

    All must exit 0. Failing fast matters: the others may be blocked on keys the
    failed one would have set.
    """
    started = [p for p in procs if p.pid is not None]
    deadline = time.monotonic() + limit
    try:
        pending = list(started)
        while pending:
            left = deadline - time.monotonic()
            if left <= 0:
                break
            mp_connection.wait([p.sentinel for p in pending], timeout=left)
            for p in [p for p in pending if p.exitcode is not None]:
                pending.remove(p)
                if p.exitcode != 0:
                    pending = []
                    break
    finally:
        for p in started:
            if p.exitcode is None:
                p.kill()
            p.join()
    assert [p.exitcode for p in procs] == [0] * len(procs)


def wait_keys_or_child_death(s, keys: list[str], procs: list, limit: float = 60.0) -> None:
    """``s.wait(keys)``, but give up as soon as a child has exited with an error."""
    deadline = time.monotonic() + limit
    while True:
        try:
            s.wait(keys, timedelta(milliseconds=250))
            return
        except DistStoreError:
            dead = [p.exitcode for p in procs if p.exitcode not in (None, 0)]
            if dead or time.monotonic() > deadline:
                raise AssertionError(f"children did not get ready; exit codes {dead}") from None


def adds_from_eight_processes(s, spec) -> None:
    """8 processes x 500 add(ctr, 1) started together; the counter must read 4000."""
    ctx = mp.get_context("spawn")
    procs = [ctx.Process(target=adder, args=(spec, i, 500)) for i in range(8)]
    try:
        for p in procs:
            p.start()
        wait_keys_or_child_death(s, [f"ready/{i}" for i in range(8)], procs)
        s.set("go", b"1")
    finally:
        join_all(procs)
    assert s.get("ctr") == b"4000"


def big_values_from_another_process(s, spec) -> None:
    """One process sets 1 MiB values while two others get them: all arrive intact."""
    ctx = mp.get_context("spawn")
    n, size = 6, 1 << 20
    procs = [
        ctx.Process(target=big_reader, args=(spec, 0, n, size)),
        ctx.Process(target=big_reader, args=(spec, 1, n, size)),
        ctx.Process(target=big_writer, args=(spec, n, size)),
    ]
    run_all(procs)
    seen = s.multi_get([f"seen/{r}/{i}" for r in range(2) for i in range(n)])
    assert seen == [b"ok"] * (2 * n)
    assert all(s.get(f"big/{i}") == big_value(i, size) for i in range(n))


@contextlib.contextmanager
def no_new_fds() -> Iterator[None]:
    """Fail if more file descriptors are open after the block than before it."""
    import psutil  # here, not at the top: the child processes importing this module need not

    proc = psutil.Process()
    gc.collect()  # so that a socket dying late of an earlier test does not count
    fds = proc.num_fds()
    yield
    assert proc.num_fds() <= fds, "file descriptors left open"


def get_interrupted_by_close(s: Store) -> BaseException | None:
    """Close ``s`` while another thread waits in ``s.get`` for a key nobody sets; return the
    ``DistStoreError`` that get raised, or None if it raised none."""
    errors: list[BaseException] = []

    def blocked() -> None:
        try:
            s.get("never")
        except DistStoreError as e:
            errors.append(e)

    t = threading.Thread(target=blocked)
    t.start()
    s.close()
    t.join()
    return errors[0] if errors else None


_KEEP_ALIVE: list = []


def open_and_leave(path: str, world_size: int) -> None:
    """Open a FileStore, write a key and exit with it still alive (cleanup at exit)."""
    s = FileStore(path, world_size, timeout=TIMEOUT)
    s.set("child", b"was here")
    _KEEP_ALIVE.append(s)  # not collected before the process ends
