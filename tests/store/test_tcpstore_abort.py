"""A TCPStore still being built (a client waiting for its master, a master waiting for its
clients) can be aborted from another thread: ``abort_pending(reason)`` (the hook the
harness's abort reaches, as no process group exists yet) or ``TCPStore.abort(reason)``. The
wait raises ``DistStoreError`` naming the master's address and the reason, and leaves no
socket or thread behind.

Promptness is not timed: the stores wait up to 60 s, the test thread is joined for 30 s
at most, and a construction that did not notice the abort would still be running then."""

from __future__ import annotations

import contextlib
import socket
import threading
import time
from collections.abc import Callable, Iterator
from datetime import timedelta

import pytest

from mpdist.errors import DistStoreError
from mpdist.store import TCPStore
from mpdist.store import rendezvous as rdv
from mpdist.store import tcp as tcp_mod

LOCAL = "127.0.0.1"
LONG = timedelta(seconds=60)
JOIN_S = 30.0
REASON = "aborted by the harness: rank 0 failed"


@contextlib.contextmanager
def _reserved_port() -> Iterator[int]:
    """A port nobody listens on (bound, not listening: connects are refused); nobody else
    can take it, but a master (SO_REUSEADDR) may listen on it."""
    with socket.socket() as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        s.bind((LOCAL, 0))
        yield s.getsockname()[1]


@contextlib.contextmanager
def _unanswering_port() -> Iterator[int]:
    """A port whose listener's accept queue is full: a connect stays in flight (SYN sent,
    no answer) instead of being refused, so the abort has to end the connect itself."""
    with socket.socket() as listener:
        listener.bind((LOCAL, 0))
        listener.listen(0)
        port = listener.getsockname()[1]
        fillers: list[socket.socket] = []
        try:
            while True:
                s = socket.socket()
                fillers.append(s)
                # Connects complete while the queue has room; the first one left hanging
                # shows it is full. (Should one merely be slow, the store connects and
                # then waits for an answer instead: aborted all the same, see below.)
                s.settimeout(0.2)
                try:
                    s.connect((LOCAL, port))
                except TimeoutError:
                    break
            yield port
        finally:
            for s in fillers:
                s.close()


class _Attempt:
    """Runs ``build()`` in a thread; keeps its result or error."""

    def __init__(self, build: Callable[[], object]) -> None:
        self.result: object = None
        self.error: BaseException | None = None
        self.thread = threading.Thread(target=self._run, args=(build,), name="building store")
        self.thread.start()

    def _run(self, build: Callable[[], object]) -> None:
        try:
            self.result = build()
        except BaseException as e:
            self.error = e

    def finish(self) -> BaseException:
        self.thread.join(JOIN_S)
        assert not self.thread.is_alive(), "the aborted store kept waiting"
        assert self.result is None, "the store was built despite the abort"
        assert self.error is not None
        return self.error


def _abort_once_pending(
    attempt: _Attempt, abort: Callable[[str], int] = tcp_mod.abort_pending
) -> None:
    """Call ``abort`` as soon as the store is registered (it is, before its first
    connect); exactly one call does the abort."""
    deadline = time.monotonic() + JOIN_S
    while abort(REASON) == 0:
        assert attempt.thread.is_alive(), f"the store gave up by itself: {attempt.error!r}"
        assert time.monotonic() < deadline, "the store never started connecting"
        time.sleep(0.001)


@pytest.mark.parametrize("master", ["refusing", "not answering"])
def test_client_waiting_for_its_master_is_aborted(master, unchanged):
    ports = _reserved_port() if master == "refusing" else _unanswering_port()
    with ports as port:
        attempt = _Attempt(lambda: TCPStore(LOCAL, port, world_size=2, timeout=LONG))
        _abort_once_pending(attempt)
        err = attempt.finish()
        assert isinstance(err, DistStoreError)
        text = f"TCPStore: connecting to the master at {LOCAL}:{port} was aborted: {REASON}"
        if master == "refusing":
            assert str(err) == text
        else:
            assert str(err).startswith("TCPStore: ")
            assert str(err).endswith(f" at {LOCAL}:{port} was aborted: {REASON}")
    assert tcp_mod.abort_pending("nothing left") == 0
    unchanged()


def test_master_waiting_for_its_clients_is_aborted(unchanged):
    with _reserved_port() as port:
        attempt = _Attempt(
            lambda: TCPStore(LOCAL, port, world_size=3, is_master=True, timeout=LONG)
        )
        _abort_once_pending(attempt)
        err = attempt.finish()
        assert isinstance(err, DistStoreError)
        # the abort may also come while the master still connects to its own server
        assert str(err) in (
            f"TCPStore: waiting for clients on the server at {LOCAL}:{port} was aborted: {REASON}",
            f"TCPStore: connecting to the master at {LOCAL}:{port} was aborted: {REASON}",
            f"TCPStore: add on the server at {LOCAL}:{port} was aborted: {REASON}",
        )
        with socket.socket() as s:
            # the server's listener is closed: another one may listen on the port
            s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            s.bind((LOCAL, port))
            s.listen()
    unchanged()


def test_rendezvous_of_a_rank_waiting_for_rank_0_is_aborted(unchanged):
    with _reserved_port() as port:
        url = f"tcp://{LOCAL}:{port}?rank=1&world_size=2"
        attempt = _Attempt(lambda: rdv.rendezvous(url, timeout=LONG))
        _abort_once_pending(attempt, rdv.abort_pending)
        err = attempt.finish()
        assert isinstance(err, DistStoreError)
        assert f"{LOCAL}:{port}" in str(err) and REASON in str(err)
    unchanged()


def test_env_rendezvous_of_a_rank_waiting_for_rank_0_is_aborted(unchanged):
    with _reserved_port() as port:
        env = {"RANK": "1", "WORLD_SIZE": "2", "MASTER_ADDR": LOCAL, "MASTER_PORT": str(port)}
        attempt = _Attempt(lambda: rdv.rendezvous("env://", timeout=LONG, environ=env))
        _abort_once_pending(attempt, rdv.abort_pending)
        err = attempt.finish()
        assert f"{LOCAL}:{port}" in str(err) and REASON in str(err)
    unchanged()


def test_abort_of_a_built_store_ends_its_pending_and_later_requests(unchanged):
    with TCPStore(LOCAL, 0, is_master=True, timeout=LONG, wait_for_workers=False) as m:
        client = TCPStore(LOCAL, m.port, timeout=LONG)
        assert tcp_mod.abort_pending(REASON) == 0  # built stores are not pending
        attempt = _Attempt(lambda: client.get("never-set"))
        # abort once the get is parked on the server (its key is waited for there)
        server = m._server
        assert server is not None
        deadline = time.monotonic() + JOIN_S
        while not server.by_key.get("never-set"):
            assert time.monotonic() < deadline and attempt.thread.is_alive()
            time.sleep(0.001)
        client.abort(REASON)
        err = attempt.finish()
        assert str(err) == f"TCPStore: get on the server at {LOCAL}:{m.port} was aborted: {REASON}"
        with pytest.raises(DistStoreError, match=f"set on the server .* aborted: {REASON}"):
            client.set("k", b"v")
        client.close()
        client.close()
        # the master's own instance is untouched
        m.set("k", b"v")
        assert m.get("k") == b"v"
    unchanged()


def test_abort_pending_with_nothing_pending_and_bad_reason():
    assert tcp_mod.abort_pending("no store is being built") == 0
    with pytest.raises(TypeError, match="reason must be a str"):
        tcp_mod.abort_pending(3)  # type: ignore[arg-type]


def test_a_store_built_after_an_abort_is_not_affected(unchanged):
    # the abort reaches the stores pending at that moment only (the harness repeats it)
    assert tcp_mod.abort_pending(REASON) == 0
    with (
        TCPStore(LOCAL, 0, is_master=True, timeout=LONG, wait_for_workers=False) as m,
        TCPStore(LOCAL, m.port, timeout=LONG) as c,
    ):
        c.set("a", b"1")
        assert m.get("a") == b"1"
    unchanged()
