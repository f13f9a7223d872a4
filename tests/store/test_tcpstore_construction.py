"""TCPStore construction is all-or-nothing: whatever step fails (the server's wake
socketpair, selector or thread; the client's connect or its handshake), everything created
before it is closed, the original error propagates, and the port is free again."""

from __future__ import annotations

import selectors
import socket
import threading
from collections.abc import Callable, Iterator
from datetime import timedelta

import psutil
import pytest

from mpdist.errors import DistNetworkError, DistStoreError
from mpdist.store import TCPStore

LOCAL = "127.0.0.1"
TIMEOUT = timedelta(seconds=30)


@pytest.fixture
def port() -> Iterator[int]:
    """A port held for the test by a bound socket that does not listen: nobody else can
    take it, a connect to it is refused, and a master (SO_REUSEADDR) may still listen on it."""
    with socket.socket() as holder:
        holder.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        holder.bind((LOCAL, 0))
        yield holder.getsockname()[1]


def _nobody_listens(port: int) -> bool:
    # Binding and listening fail while any socket still listens on the port.
    with socket.socket() as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind((LOCAL, port))
            s.listen()
        except OSError:
            return False
        return True


@pytest.fixture
def unchanged(port: int, unchanged: Callable[[], None]) -> Callable[[], None]:
    """The store tests' leak check, taken with the held ``port`` already open."""
    return unchanged


class _Boom(Exception):
    """Stands for any failure a step may raise (tests check it is the one propagated)."""


def _failing_socketpair(*a, **k):
    raise OSError(24, "Too many open files (injected)")


class _UnstartableThread(threading.Thread):
    def start(self) -> None:
        raise RuntimeError("can't start new thread (injected)")


def _failing_selector():
    raise OSError(24, "Too many open files (injected)")


class _UnregistrableSelector(selectors.DefaultSelector):  # type: ignore[misc,valid-type]
    """Registers the listener, then fails on the wake socket (the selector is open)."""

    def register(self, fileobj, events, data=None):
        if self.get_map() and len(self.get_map()) >= 1:
            raise OSError(12, "Cannot allocate memory (injected)")
        return super().register(fileobj, events, data)


SERVER_FAILURES = {
    "socketpair": (socket, "socketpair", _failing_socketpair, OSError, "injected"),
    "thread start": (threading, "Thread", _UnstartableThread, RuntimeError, "injected"),
    "selector": (selectors, "DefaultSelector", _failing_selector, OSError, "injected"),
    "register": (selectors, "DefaultSelector", _UnregistrableSelector, OSError, "injected"),
}


@pytest.mark.parametrize("step", list(SERVER_FAILURES))
def test_master_whose_server_cannot_start_leaves_nothing(step, port, monkeypatch, unchanged):
    module, name, replacement, exc, text = SERVER_FAILURES[step]
    monkeypatch.setattr(module, name, replacement)
    with pytest.raises(exc, match=text) as ei:
        TCPStore(LOCAL, port, is_master=True, timeout=TIMEOUT, wait_for_workers=False)
    monkeypatch.undo()
    # the traceback (which keeps the failed frames alive) is still held here: a leaked
    # socket cannot hide behind garbage collection
    assert ei.value is not None
    unchanged()
    assert _nobody_listens(port)


def test_master_whose_handshake_fails_leaves_nothing(port, monkeypatch, unchanged):
    def failing_add(self, key, amount):
        raise _Boom("handshake failed (injected)")

    monkeypatch.setattr(TCPStore, "_add", failing_add)
    with pytest.raises(_Boom):
        TCPStore(LOCAL, port, world_size=2, is_master=True, timeout=TIMEOUT)
    unchanged()
    assert _nobody_listens(port)


def test_client_whose_handshake_fails_leaves_nothing(monkeypatch, held, unchanged):
    with TCPStore(LOCAL, 0, is_master=True, timeout=TIMEOUT, wait_for_workers=False) as m:
        before = held()
        client_ends_before = {c.laddr for c in psutil.Process().net_connections("inet")}
        monkeypatch.setattr(TCPStore, "_add", lambda self, k, n: (_ for _ in ()).throw(_Boom()))
        with pytest.raises(_Boom):
            TCPStore(LOCAL, m.port, world_size=2, timeout=TIMEOUT)
        monkeypatch.undo()
        # (the server closes its end when it sees the client go: count the client's end only)
        ends = {c.laddr for c in psutil.Process().net_connections("inet") if c.raddr}
        assert not {e for e in ends if e not in client_ends_before}
        assert held().threads == before.threads
        # the server saw the client go and still serves
        m.set("k", b"v")
        assert m.get("k") == b"v"
    unchanged()


def test_client_failing_right_after_connecting_closes_its_socket(monkeypatch, held, unchanged):
    # A bare listening socket stands in for the master: the connect completes in the
    # kernel; the step after it (setting TCP_NODELAY) fails.
    with socket.socket() as fake_master:
        fake_master.bind((LOCAL, 0))
        fake_master.listen()
        port = fake_master.getsockname()[1]
        before = held()
        real = socket.socket.setsockopt

        def setsockopt(self, level, opt, *value):
            if level == socket.IPPROTO_TCP and opt == socket.TCP_NODELAY:
                raise OSError(22, "Invalid argument (injected)")
            return real(self, level, opt, *value)

        monkeypatch.setattr(socket.socket, "setsockopt", setsockopt)
        with pytest.raises(OSError, match="injected") as ei:
            TCPStore(LOCAL, port, timeout=TIMEOUT)
        monkeypatch.undo()
        assert ei.value is not None
        after = held()
        assert after.fds == before.fds
        assert after.threads == before.threads
    unchanged()


def test_client_that_cannot_reach_the_master_leaves_nothing(port, unchanged):
    with pytest.raises(DistNetworkError, match=f"{LOCAL}:{port}"):
        TCPStore(LOCAL, port, timeout=timedelta(milliseconds=50))
    unchanged()


def test_master_waiting_for_workers_in_vain_leaves_nothing(port, unchanged):
    with pytest.raises(DistStoreError, match="1/2 clients joined"):
        TCPStore(LOCAL, port, world_size=2, is_master=True, timeout=timedelta(milliseconds=50))
    unchanged()
    assert _nobody_listens(port)


def test_a_working_master_and_client_still_work_after_failures(monkeypatch, unchanged):
    monkeypatch.setattr(socket, "socketpair", _failing_socketpair)
    with pytest.raises(OSError):
        TCPStore(LOCAL, 0, is_master=True, timeout=TIMEOUT, wait_for_workers=False)
    monkeypatch.undo()
    with (
        TCPStore(LOCAL, 0, is_master=True, timeout=TIMEOUT, wait_for_workers=False) as m,
        TCPStore(LOCAL, m.port, timeout=TIMEOUT) as c,
    ):
        c.set("a", b"1")
        assert m.get("a") == b"1"
    unchanged()
