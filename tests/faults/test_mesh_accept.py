"""A mesh listener whose accept fails at once (out of descriptors, shut down) does not spin.

Rank 0 of a 2-rank mesh waits for rank 1's connection; its listener is shut down under it,
so accept fails with EINVAL while the listener polls readable (hung up) forever, as with
EMFILE while a connection waits in the backlog. The waiting thread must use little CPU,
and still end promptly when aborted, leaving no socket open.
"""

from __future__ import annotations

import socket
import threading
import time

import psutil

from mpdist.store import HashStore
from mpdist.transport.mesh import connect_full_mesh


def _thread_cpu(native_id: int) -> float:
    for t in psutil.Process().threads():
        if t.id == native_id:
            return t.user_time + t.system_time
    raise AssertionError(f"thread {native_id} is gone")


class _Aborted(Exception):
    pass


def test_listener_that_fails_accept_at_once_rests_and_aborts():
    store = HashStore()
    wake_r, wake_w = socket.socketpair()
    wake_r.setblocking(False)
    aborted = threading.Event()
    errors: list[BaseException] = []

    def check_abort() -> None:
        if aborted.is_set():
            raise _Aborted("aborted")

    def rank0() -> None:
        try:
            connect_full_mesh(
                store,
                0,
                2,
                b"g" * 16,
                b"k" * 32,
                0,
                deadline=time.monotonic() + 60,
                timeout_s=60,
                wake=wake_r,
                check_abort=check_abort,
                name=lambda r: r,
            )
        except BaseException as e:
            errors.append(e)

    before = {c.fd for c in psutil.Process().net_connections(kind="tcp")}
    t = threading.Thread(target=rank0, daemon=True)
    t.start()
    try:
        port = int(store.get("mpdist_tcp/addr/0").decode().rpartition(":")[2])
        (listener,) = [
            c
            for c in psutil.Process().net_connections(kind="tcp")
            if c.status == psutil.CONN_LISTEN and c.laddr.port == port
        ]
        s = socket.socket(fileno=listener.fd)
        try:
            s.shutdown(socket.SHUT_RDWR)  # accept: EINVAL from now on; polled: hung up
        finally:
            s.detach()
        assert t.native_id is not None
        time.sleep(0.2)
        cpu = _thread_cpu(t.native_id)
        time.sleep(1.0)
        spent = _thread_cpu(t.native_id) - cpu
        assert spent < 0.1, f"the waiting rank spent {spent:.3f} s of CPU in 1 s"
    finally:
        aborted.set()
        wake_w.send(b"x")
        t.join(10)
        wake_r.close()
        wake_w.close()
    assert not t.is_alive(), "the abort did not end the wait"
    assert len(errors) == 1 and isinstance(errors[0], _Aborted), errors
    left = {c.fd for c in psutil.Process().net_connections(kind="tcp")} - before
    assert not left, f"sockets left open: {left}"
