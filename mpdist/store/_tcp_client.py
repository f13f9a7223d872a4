"""The TCPStore client: one instance's connections to the server, shared by its threads.

A request is one frame out and one frame back on a connection from a small pool, so that
several threads may block on the server at once. ``close(reason)`` from any thread ends
every pending connect, retry pause and wait for an answer at once.
"""

from __future__ import annotations

import contextlib
import errno
import os
import selectors
import socket
import threading
import time

from mpdist import _auth
from mpdist.errors import DistNetworkError, DistStoreError
from mpdist.store import _protocol as proto
from mpdist.store._protocol import Op, ProtocolError

__all__ = ["Client"]


def _recv_exact(sock: socket.socket, n: int) -> bytearray:
    buf = bytearray(n)
    view = memoryview(buf)
    got = 0
    while got < n:
        k = sock.recv_into(view[got:])
        if k == 0:
            raise ConnectionResetError("connection closed by the TCPStore server")
        got += k
    return buf


class Client:
    """Connections of one TCPStore instance to the server; safe to share between threads.

    ``close(reason)`` from any thread ends every pending connect, retry pause and answer
    wait at once (it shuts their sockets down); with a reason, they and every later call
    raise an error naming the server's address and the reason. With ``key``, every new
    connection proves it holds the secret (``mpdist._auth``) before its first request.
    """

    def __init__(self, host: str, port: int, key: bytes | None = None) -> None:
        self.host = host
        self.port = port
        self.key = key
        self.idle: list[socket.socket] = []
        self.busy: set[socket.socket] = set()
        self.connecting: set[socket.socket] = set()
        self.lock = threading.Lock()
        self.closed = False
        self.abort_reason: str | None = None
        self.woken = threading.Event()  # set on close: ends a retry pause at once

    def open(self, connect_timeout: float | None) -> None:
        """Make the first connection (retrying until the master listens or the timeout)."""
        sock = self._connect(connect_timeout)
        with self.lock:
            if not self.closed:
                self.idle.append(sock)
                return
        sock.close()
        raise self.closed_error("connecting to the master")

    # ------------------------------------------------------------ connecting
    def _connect(self, timeout: float | None) -> socket.socket:
        deadline = None if timeout is None else time.monotonic() + timeout
        delay = 0.005
        while True:
            if self.closed:
                raise self.closed_error("connecting to the master")
            left = None if deadline is None else max(deadline - time.monotonic(), 0.001)
            try:
                sock = self._connect_once(left)
            except socket.gaierror as e:
                raise DistNetworkError(
                    f"TCPStore: cannot resolve host {self.host!r}: {e}"
                ) from None
            except OSError as e:
                if self.closed:
                    raise self.closed_error("connecting to the master") from None
                # The master may not be listening yet: retry until the deadline.
                if deadline is not None and time.monotonic() + delay >= deadline:
                    raise DistNetworkError(
                        f"TCPStore: timed out after {timeout:g} s (timeout) connecting to "
                        f"{self.host}:{self.port}: {e}"
                    ) from None
                self.woken.wait(delay)
                delay = min(delay * 2, 0.1)
                continue
            # Only the connect itself is retried; a failure after it is the caller's.
            try:
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            except BaseException:
                sock.close()
                raise
            return sock

    def _connect_once(self, timeout: float | None) -> socket.socket:
        """One connection attempt to each address of the host; the first that works."""
        last: OSError | None = None
        for family, kind, protocol, _, addr in socket.getaddrinfo(
            self.host, self.port, type=socket.SOCK_STREAM
        ):
            try:
                return self._attempt(family, kind, protocol, addr, timeout)
            except OSError as e:
                if self.closed:
                    raise
                last = e
        raise last if last is not None else OSError(f"no address for {self.host!r}")

    def _attempt(
        self, family: int, kind: int, protocol: int, addr: tuple, timeout: float | None
    ) -> socket.socket:
        sock = socket.socket(family, kind, protocol)
        try:
            # Non-blocking connect, and only then visible to close(): its shutdown then
            # always meets a socket whose SYN is out, which ends the wait below at once.
            sock.setblocking(False)
            err = sock.connect_ex(addr)
            if err not in (0, errno.EINPROGRESS, errno.EAGAIN, errno.EALREADY):
                raise OSError(err, os.strerror(err))
            with self.lock:
                if self.closed:
                    raise OSError(errno.ECONNABORTED, "the TCPStore client was closed")
                self.connecting.add(sock)
            try:
                if err:
                    with selectors.DefaultSelector() as sel:
                        sel.register(sock, selectors.EVENT_WRITE)
                        if not sel.select(timeout):
                            raise TimeoutError(errno.ETIMEDOUT, "timed out")
                    err = sock.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR)
                    if err:
                        raise OSError(err, os.strerror(err))
                sock.setblocking(True)
                if self.key is not None:
                    # Still in `connecting`: close() shuts it down, ending the handshake.
                    self._authenticate(sock, timeout)
            finally:
                with self.lock:
                    self.connecting.discard(sock)
            return sock
        except BaseException:
            sock.close()
            raise

    def _authenticate(self, sock: socket.socket, timeout: float | None) -> None:
        assert self.key is not None
        sock.settimeout(timeout)
        try:
            _auth.initiate(sock, self.key)
        except _auth.Refused as e:
            if self.closed:
                raise OSError(errno.ECONNABORTED, "the TCPStore client was closed") from None
            # Not retried: another attempt would meet the same server with the same secret.
            raise DistStoreError(
                f"TCPStore: authentication with the server at {self.host}:{self.port} "
                f"failed ({e}): the server has no secret or a different one "
                f"(secret=, {_auth.SECRET_ENV} or {_auth.SECRET_FILE_ENV} must agree)"
            ) from None
        finally:
            sock.settimeout(None)

    # ------------------------------------------------------------ errors
    def closed_error(self, what: str) -> DistStoreError:
        reason = self.abort_reason
        if reason is not None:
            return DistStoreError(
                f"TCPStore: {what} at {self.host}:{self.port} was aborted: {reason}"
            )
        return DistStoreError(f"TCPStore {self.host}:{self.port} is closed")

    # ------------------------------------------------------------ requests
    def call(
        self,
        op: Op,
        fields: list[bytes],
        reply_timeout: float | None,
        connect_timeout: float | None,
    ) -> tuple[int, list[bytes]]:
        """Send one request and return (status, fields) of the answer (None: no time limit)."""
        what = _describe(op)
        with self.lock:
            if self.closed:
                raise self.closed_error(what)
            sock = self.idle.pop() if self.idle else None
        if sock is None:
            sock = self._connect(connect_timeout)
        with self.lock:
            if self.closed:  # closed while we connected: close() never saw this socket
                sock.close()
                raise self.closed_error(what)
            self.busy.add(sock)
        ok = False
        try:
            sock.settimeout(reply_timeout)
            sock.sendall(proto.encode_frame(op, fields))
            magic, status, length = proto.HEADER.unpack(_recv_exact(sock, proto.HEADER.size))
            if magic != proto.MAGIC:
                raise ConnectionError("bad answer from the TCPStore server")
            payload = _recv_exact(sock, length)
            ok = True
            return status, proto.decode_fields(payload)
        except (OSError, ProtocolError) as e:
            if self.closed:
                raise self.closed_error(what) from None
            if isinstance(e, socket.timeout):
                raise DistNetworkError(
                    f"TCPStore: {op.name.lower()} timed out: no answer from the server at "
                    f"{self.host}:{self.port}"
                ) from None
            hint = ""
            if isinstance(e, ConnectionResetError) and self.key is None:
                hint = f" (if the server requires a secret: set {_auth.SECRET_ENV} or pass secret=)"
            raise DistNetworkError(
                f"TCPStore: lost the connection to the server at {self.host}:{self.port} "
                f"during {op.name.lower()}: {e}{hint}"
            ) from None
        finally:
            with self.lock:
                self.busy.discard(sock)
                if ok and not self.closed:
                    self.idle.append(sock)
                else:
                    sock.close()

    def close(self, reason: str | None = None) -> None:
        """Close every connection (idempotent, any thread); ``reason``: this is an abort."""
        with self.lock:
            if not self.closed:
                self.closed = True
                self.abort_reason = reason
            idle, self.idle = self.idle, []
            # Under the lock: their owners close them only after taking them out of these
            # sets under the lock, so a shutdown never meets a closed (reused) descriptor.
            # The shutdown wakes a thread blocked in connect or recv; it closes the socket.
            for s in (*self.busy, *self.connecting):
                with contextlib.suppress(OSError):
                    s.shutdown(socket.SHUT_RDWR)
        self.woken.set()
        for s in idle:
            s.close()


def _describe(op: Op) -> str:
    """What a request does, for an error: 'waiting for clients on the server', ..."""
    what = "waiting for clients" if op is Op.WAIT_COUNT else op.name.lower()
    return f"{what} on the server"
