"""Interim helpers: run a function in N real rank processes (FileStore rendezvous) or N threads.

(The harness issue replaces this with ``mpdist.testing``.) Ranks are started through an
explicit ``forkserver`` context; each sends one record back over its own pipe: its result,
or the formatted traceback of what it raised. Every process is joined (or killed) before
``run`` returns.
"""

from __future__ import annotations

import multiprocessing as mp
import os
import threading
import time
import traceback
from collections.abc import Callable
from datetime import timedelta
from multiprocessing.connection import wait as wait_conns
from typing import Any

import mpdist as dist
from mpdist.distributed import _abort_all_groups
from mpdist.store import HashStore

_CTX = mp.get_context("forkserver")
_CTX.set_forkserver_preload(["numpy", "mpdist"])


class RankFailed(AssertionError):
    """One or more ranks raised; the message holds every failing rank's traceback."""


def _child(
    fn: Callable[..., Any],
    rank: int,
    world_size: int,
    path: str,
    backend: str | None,
    pg_timeout: float,
    args: tuple,
    conn: Any,
) -> None:
    import mpdist as dist
    from mpdist.store import FileStore

    try:
        if backend is not None:
            dist.init_process_group(
                backend,
                store=FileStore(path, world_size),
                rank=rank,
                world_size=world_size,
                timeout=timedelta(seconds=pg_timeout),
            )
        try:
            result = fn(rank, world_size, *args)
        finally:
            if backend is not None and dist.is_initialized():
                dist.destroy_process_group()
        conn.send(("ok", result))
    except BaseException as exc:  # reported to the parent, which fails the test
        conn.send(("error", f"{type(exc).__name__}: {exc}", traceback.format_exc()))
    finally:
        conn.close()


def run(
    fn: Callable[..., Any],
    world_size: int,
    tmp_path: Any,
    *,
    backend: str | None = "tcp",
    pg_timeout: float = 20.0,
    deadline: float = 60.0,
    args: tuple = (),
    may_die: frozenset[int] = frozenset(),
) -> list[Any]:
    """``fn(rank, world_size, *args)`` in ``world_size`` processes; the list of their results.

    With ``backend`` set, each rank runs inside ``init_process_group(backend, store=FileStore)``
    (destroyed afterwards). Ranks in ``may_die`` may exit without a record (result None).
    """
    path = os.path.join(str(tmp_path), f"store-{time.monotonic_ns()}")
    procs, conns = [], []
    try:
        for rank in range(world_size):
            parent, child = _CTX.Pipe(duplex=False)
            p = _CTX.Process(
                target=_child,
                args=(fn, rank, world_size, path, backend, pg_timeout, args, child),
                name=f"rank{rank}",
            )
            p.start()
            child.close()
            procs.append(p)
            conns.append(parent)
        records: list[Any] = [None] * world_size
        open_conns = {c: r for r, c in enumerate(conns)}
        end = time.monotonic() + deadline
        while open_conns:
            left = end - time.monotonic()
            if left <= 0:
                raise RankFailed(
                    f"ranks {sorted(open_conns.values())} did not report in {deadline} s"
                )
            for c in wait_conns(list(open_conns), timeout=left):
                r = open_conns.pop(c)
                try:
                    records[r] = c.recv()
                except EOFError:  # the rank died without a record
                    records[r] = ("died", procs[r].exitcode)
        failures = []
        results = []
        for r, rec in enumerate(records):
            if rec[0] == "ok":
                results.append(rec[1])
            elif rec[0] == "died" and r in may_die:
                results.append(None)
            elif rec[0] == "died":
                failures.append(f"--- rank {r} died without a result")
            else:
                failures.append(f"--- rank {r}: {rec[1]}\n{rec[2]}")
        if failures:
            raise RankFailed("\n".join(failures))
        return results
    finally:
        for p in procs:
            p.join(timeout=10)
        for p in procs:
            if p.is_alive():
                p.kill()
                p.join()
        for c in conns:
            c.close()


def run_threads(
    fn: Callable[..., Any], world_size: int, *args: Any, timeout: float = 20.0, init: bool = True
) -> list[Any]:
    """``fn(rank, world_size, *args)`` in ``world_size`` threads, each the rank of a threaded group.

    The first rank to raise aborts every group, so the others fail fast instead of
    waiting out the timeout; all tracebacks are reported.
    """
    store = HashStore()
    results: list[Any] = [None] * world_size
    errors: list[tuple[int, str]] = []  # in the order they happened

    def body(rank: int) -> None:
        try:
            if init:
                dist.init_process_group(
                    "threaded",
                    rank=rank,
                    world_size=world_size,
                    store=store,
                    timeout=timedelta(seconds=timeout),
                )
            try:
                results[rank] = fn(rank, world_size, *args)
            finally:
                if dist.is_initialized():
                    dist.destroy_process_group()
        except BaseException:
            errors.append((rank, traceback.format_exc()))
            _abort_all_groups(f"rank {rank} failed")

    threads = [threading.Thread(target=body, args=(r,), name=f"rank{r}") for r in range(world_size)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout + 10)
    assert not any(t.is_alive() for t in threads), "a rank thread hung"
    if errors:
        rank, tb = errors[0]  # the others were most likely aborted because of it
        others = sorted(r for r, _ in errors[1:])
        raise AssertionError(f"--- rank {rank} failed first (then ranks {others}):\n{tb}")
    return results
