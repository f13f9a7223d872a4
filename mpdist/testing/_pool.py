"""Worker reuse: rank processes that stay alive across the tests of one class.

A pool is keyed by (class, world size, start method). A failure or timeout
discards the pool's workers (they may hold a broken group or a stuck thread);
the next test of the class starts new ones. Pools are closed when their class
is done, at the end of the pytest session, and at interpreter exit.
"""

from __future__ import annotations

import atexit
import contextlib
import os
import shutil
import tempfile
import time
from multiprocessing import connection as mp_connection
from typing import Any

from mpdist import _proctree
from mpdist.testing import _records as records
from mpdist.testing._coordinator import RankSet, _Handle
from mpdist.testing._worker import TaskSpec, pool_main

# How long new workers may take to say they are up.
START_TIMEOUT = 60.0


class WorkerPool:
    """``world_size`` long-lived rank processes; one test at a time."""

    def __init__(self, ctx: Any, world_size: int) -> None:
        self.world_size = world_size
        self.handles: list[_Handle] = []
        self.broken = False
        # Store file of a group that with_comms keeps up across the class's tests.
        self.workdir = tempfile.mkdtemp(prefix="mpdist-pool-")
        self.group_file = os.path.join(self.workdir, "store")
        try:
            for rank in range(world_size):
                parent_conn, child_conn = ctx.Pipe(duplex=True)
                # The handle owns the parent end from here on, so discard() closes it.
                handle = _Handle(rank, None, parent_conn)
                self.handles.append(handle)
                try:
                    proc = ctx.Process(
                        target=pool_main, args=(rank, child_conn), name=f"mpdist-worker-{rank}"
                    )
                    proc.start()
                finally:
                    # The worker got its copy during start(), or never will: ours must go.
                    child_conn.close()
                handle.proc = proc
                handle.pid = proc.pid
            end = time.monotonic() + START_TIMEOUT
            for h in self.handles:
                while not h.pgid and h.conn_open and time.monotonic() < end:
                    if mp_connection.wait([h.conn, h.proc.sentinel], end - time.monotonic()):
                        h.drain()
                        if h.proc.exitcode is not None and not h.pgid:
                            break
                if not h.pgid:
                    raise RuntimeError(f"mpdist worker rank {h.rank} did not start")
        except BaseException:
            self.discard()
            raise

    def submit(self, spec: TaskSpec) -> RankSet:
        """Hand ``spec`` to every worker; the returned set is waited on like fresh ranks."""
        if self.broken:
            raise RuntimeError("this worker pool was discarded")
        spec.keep_group = True
        spec.group_file = self.group_file
        for h in self.handles:
            h.record = None
            h.dumped = False
            h.trace = None
            h.failing = None
            h.failed_seen = None
            h.reaped = False
            if not h.send(records.Task(spec)):
                h.exited = True
        return RankSet(spec, self.handles, pooled=True)

    def discard(self) -> None:
        """Kill the workers now (after a failure, a timeout, or Ctrl-C)."""
        self.broken = True
        pids = [h.proc.pid for h in self.handles if h.proc is not None]
        _proctree.kill_tree(pids, [h.pgid for h in self.handles if h.pgid], grace=0.5)
        self._release()

    def close(self) -> None:
        """Stop the workers politely, then make sure they are gone."""
        if self.broken:
            return
        self.broken = True
        for h in self.handles:
            h.send(records.Stop())
        for h in self.handles:
            h.proc.join(2.0)
        pids = [h.proc.pid for h in self.handles if h.proc.exitcode is None]
        _proctree.kill_tree(pids, [h.pgid for h in self.handles if h.pgid], grace=0.5)
        self._release()

    def _release(self) -> None:
        shutil.rmtree(self.workdir, ignore_errors=True)
        for h in self.handles:
            with contextlib.suppress(Exception):
                h.conn.close()
            with contextlib.suppress(Exception):
                h.proc.join(1.0)
                h.proc.close()
        self.handles = []


_pools: dict[Any, WorkerPool] = {}


def get_pool(key: Any, ctx: Any, world_size: int) -> WorkerPool:
    """The live pool for ``key``, started if there is none (or the last one was discarded)."""
    pool = _pools.get(key)
    if pool is None or pool.broken or pool.world_size != world_size:
        if pool is not None:
            pool.close()
        pool = WorkerPool(ctx, world_size)
        _pools[key] = pool
    return pool


def close_pool(key: Any) -> None:
    """Close the pool for ``key`` if there is one."""
    pool = _pools.pop(key, None)
    if pool is not None:
        pool.close()


def close_all() -> None:
    """Close every pool (end of session, interpreter exit)."""
    while _pools:
        _, pool = _pools.popitem()
        pool.close()


atexit.register(close_all)
