"""Interim helper: run a function in N real rank processes with a FileStore rendezvous.

(The harness issue replaces this with ``mpdist.testing``.) Ranks are started through an
explicit ``forkserver`` context; each sends one record back over its own pipe: its result,
or the formatted traceback of what it raised. Every process is joined (or killed) before
``run`` returns.
"""

from __future__ import annotations

import multiprocessing as mp
import os
import time
import traceback
from collections.abc import Callable
from datetime import timedelta
from multiprocessing.connection import wait as wait_conns
from typing import Any

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
