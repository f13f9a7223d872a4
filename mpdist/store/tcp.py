"""``TCPStore``: a store served over TCP by a thread of the master rank.

The master runs :class:`_Server`, one thread around a ``selectors`` loop that owns
the dict. Requests that must block (``get``, ``wait``, ``multi_get``) are parked on
the server until their keys are set or their deadline passes, so clients never
poll: a client sends one frame and blocks reading the answer. Each client keeps a
small pool of connections so that several threads may block at once.

A connection that sends anything that is not a valid frame (see ``_protocol``) is
closed; the server and its other clients carry on.
"""

from __future__ import annotations

import contextlib
import errno
import heapq
import itertools
import os
import selectors
import socket
import threading
import time
import weakref
from datetime import timedelta

from mpdist import aborts
from mpdist.errors import DistNetworkError, DistStoreError
from mpdist.store import _protocol as proto
from mpdist.store._protocol import Op, ProtocolError, Status
from mpdist.store.base import DEFAULT_TIMEOUT, Store, compare_set_outcome

__all__ = ["INIT_KEY", "TCPStore", "abort_pending"]

# Counter every instance bumps when world_size is given; num_keys counts it.
INIT_KEY = "init/"

# Extra time a client waits for the server's own timeout answer before it gives up
# on the connection (the server, not the client, decides that a wait timed out).
_GRACE_S = 5.0
_RECV_CHUNK = 1 << 20
_MAX_SELECT_S = 60.0


class _Waiter:
    """A parked request: answer it once every key exists or the deadline passes."""

    __slots__ = ("conn", "op", "keys", "count", "deadline", "timeout", "done")

    def __init__(
        self, conn: _Conn, op: Op, keys: list[str], count: int, timeout: float | None
    ) -> None:
        self.conn = conn
        self.op = op
        self.keys = keys
        self.count = count
        self.timeout = timeout
        self.deadline = None if timeout is None else time.monotonic() + timeout
        self.done = False


class _Conn:
    """Server-side state of one client connection."""

    __slots__ = ("sock", "inbuf", "outbuf", "waiter", "writing")

    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock
        self.inbuf = bytearray()
        self.outbuf = bytearray()
        self.waiter: _Waiter | None = None
        self.writing = False


class _Server:
    """The master's store server: a listening socket and one selector thread."""

    def __init__(self, host: str, port: int) -> None:
        listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        try:
            # SO_REUSEADDR lets a restarted master reuse a port whose old connections
            # sit in TIME_WAIT; on Linux a port another socket listens on still fails.
            listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            listener.bind((host, port))
            listener.listen(512)
        except OSError as e:
            listener.close()
            why = "the port is already in use" if e.errno == errno.EADDRINUSE else str(e)
            raise DistNetworkError(f"TCPStore: cannot listen on {host}:{port}: {why}") from e
        # All or nothing: if any later step fails (no fd left for the socketpair, no
        # thread), what was made so far is closed and the port is free again.
        made: list[socket.socket | selectors.BaseSelector] = [listener]
        try:
            listener.setblocking(False)
            self.listener = listener
            self.port = listener.getsockname()[1]
            self.sel = selectors.DefaultSelector()
            made.append(self.sel)
            self.wake_r, self.wake_w = socket.socketpair()
            made += (self.wake_r, self.wake_w)
            self.wake_r.setblocking(False)
            self.sel.register(listener, selectors.EVENT_READ, None)
            self.sel.register(self.wake_r, selectors.EVENT_READ, None)
            self.data: dict[str, bytes] = {}
            self.by_key: dict[str, list[_Waiter]] = {}
            self.deadlines: list[tuple[float, int, _Waiter]] = []
            self.seq = itertools.count()
            self.conns: dict[socket.socket, _Conn] = {}
            self.stopping = False
            self.thread = threading.Thread(
                target=self._run, name=f"mpdist-tcpstore-server:{self.port}", daemon=True
            )
            self.thread.start()
        except BaseException:
            for obj in reversed(made):
                with contextlib.suppress(OSError):
                    obj.close()
            raise

    # ------------------------------------------------------------ lifetime
    def stop(self) -> None:
        """Stop the thread and close every socket; idempotent, any thread."""
        if self.stopping:
            return
        self.stopping = True
        with contextlib.suppress(OSError):
            self.wake_w.send(b"x")
        if threading.current_thread() is not self.thread:
            self.thread.join()

    def _cleanup(self) -> None:
        for conn in list(self.conns.values()):
            self._drop(conn)
        self.sel.close()
        self.listener.close()
        self.wake_r.close()
        self.wake_w.close()

    # ------------------------------------------------------------ loop
    def _run(self) -> None:
        try:
            while not self.stopping:
                # Wake at least once a minute: the loop never sleeps on an unbounded value.
                timeout = _MAX_SELECT_S
                if self.deadlines:
                    timeout = min(timeout, max(0.0, self.deadlines[0][0] - time.monotonic()))
                for key, mask in self.sel.select(timeout):
                    sock = key.fileobj
                    if sock is self.listener:
                        self._accept()
                    elif sock is self.wake_r:
                        with contextlib.suppress(OSError):
                            self.wake_r.recv(64)
                    else:
                        conn = self.conns.get(sock)  # type: ignore[arg-type]
                        if conn is None:
                            continue
                        try:
                            if mask & selectors.EVENT_WRITE:
                                self._flush(conn)
                            if mask & selectors.EVENT_READ and sock in self.conns:
                                self._read(conn)
                        except Exception:
                            # Whatever one connection did, it must not take the server
                            # (and every other client) down with it.
                            self._drop(conn)
                self._expire()
        finally:
            self._cleanup()

    def _accept(self) -> None:
        while True:
            try:
                sock, _ = self.listener.accept()
            except (BlockingIOError, InterruptedError):
                return
            except OSError:
                return
            sock.setblocking(False)
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            conn = _Conn(sock)
            self.conns[sock] = conn
            self.sel.register(sock, selectors.EVENT_READ, None)

    def _drop(self, conn: _Conn) -> None:
        if conn.waiter is not None:
            conn.waiter.done = True
            conn.waiter = None
        self.conns.pop(conn.sock, None)
        with contextlib.suppress(KeyError, ValueError):
            self.sel.unregister(conn.sock)
        conn.sock.close()

    def _read(self, conn: _Conn) -> None:
        try:
            chunk = conn.sock.recv(_RECV_CHUNK)
        except (BlockingIOError, InterruptedError):
            return
        except OSError:
            self._drop(conn)
            return
        if not chunk:
            self._drop(conn)
            return
        conn.inbuf += chunk
        self._process(conn)

    def _process(self, conn: _Conn) -> None:
        # One request at a time per connection: a parked request holds the rest back.
        buf = conn.inbuf
        hdr = proto.HEADER.size
        while conn.waiter is None and conn.sock in self.conns and len(buf) >= hdr:
            magic, code, length = proto.HEADER.unpack_from(buf, 0)
            if magic != proto.MAGIC or code not in Op._value2member_map_:
                self._drop(conn)  # garbage: this connection goes, nobody else notices
                return
            if len(buf) < hdr + length:
                return
            payload = bytes(memoryview(buf)[hdr : hdr + length])
            del buf[: hdr + length]
            try:
                self._handle(conn, Op(code), proto.decode_fields(payload))
            except Exception:
                # Malformed fields (ProtocolError, bad UTF-8, bad numbers) or anything
                # else: the sender is dropped, the server carries on.
                self._drop(conn)
                return

    # ------------------------------------------------------------ replies
    def _reply(self, conn: _Conn, status: Status, fields: list[bytes]) -> None:
        if conn.sock not in self.conns:
            return
        conn.outbuf += proto.encode_frame(status, fields)
        self._flush(conn)

    def _flush(self, conn: _Conn) -> None:
        while conn.outbuf:
            try:
                sent = conn.sock.send(conn.outbuf)
            except (BlockingIOError, InterruptedError):
                break
            except OSError:
                self._drop(conn)
                return
            del conn.outbuf[:sent]
        want = bool(conn.outbuf)
        if want != conn.writing:
            conn.writing = want
            events = selectors.EVENT_READ | (selectors.EVENT_WRITE if want else 0)
            self.sel.modify(conn.sock, events, None)

    # ------------------------------------------------------------ operations
    def _handle(self, conn: _Conn, op: Op, f: list[bytes]) -> None:
        data = self.data
        if op is Op.SET:
            key, value = _args(f, 2)
            data[key.decode()] = value
            self._changed(key.decode())
            self._reply(conn, Status.OK, [])
        elif op in (Op.GET, Op.WAIT, Op.MULTI_GET):
            if not f:
                raise ProtocolError("missing timeout")
            timeout = proto.decode_timeout(f[0])
            keys = [k.decode() for k in f[1:]]
            if op is Op.GET and len(keys) != 1:
                raise ProtocolError("GET takes one key")
            self._park(_Waiter(conn, op, keys, 0, timeout))
        elif op is Op.WAIT_COUNT:
            t, key, n = _args(f, 3)
            self._park(_Waiter(conn, op, [key.decode()], int(n), proto.decode_timeout(t)))
        elif op is Op.ADD:
            key_b, amount = _args(f, 2)
            key = key_b.decode()
            raw = data.get(key, b"0")
            try:
                new = int(raw) + int(amount)
            except ValueError:
                msg = f"add: key {key!r} holds {raw[:40]!r}, which is not a decimal integer"
                self._reply(conn, Status.ERROR, [msg.encode()])
                return
            data[key] = str(new).encode()
            self._changed(key)
            self._reply(conn, Status.OK, [data[key]])
        elif op is Op.COMPARE_SET:
            key_b, expected, desired = _args(f, 3)
            key = key_b.decode()
            write, result = compare_set_outcome(data.get(key), expected, desired)
            if write:
                data[key] = desired
                self._changed(key)
            self._reply(conn, Status.OK, [result])
        elif op is Op.CHECK:
            ok = all(k.decode() in data for k in f)
            self._reply(conn, Status.OK, [b"1" if ok else b"0"])
        elif op is Op.DELETE_KEY:
            (key,) = _args(f, 1)
            found = data.pop(key.decode(), None) is not None
            self._reply(conn, Status.OK, [b"1" if found else b"0"])
        elif op is Op.NUM_KEYS:
            _args(f, 0)
            self._reply(conn, Status.OK, [str(len(data)).encode()])
        elif op is Op.APPEND:
            key_b, value = _args(f, 2)
            key = key_b.decode()
            data[key] = data.get(key, b"") + value
            self._changed(key)
            self._reply(conn, Status.OK, [])
        elif op is Op.MULTI_SET:
            if len(f) % 2:
                raise ProtocolError("MULTI_SET takes key/value pairs")
            keys = [k.decode() for k in f[0::2]]
            for key, value in zip(keys, f[1::2], strict=True):
                data[key] = value
            for key in keys:
                self._changed(key)
            self._reply(conn, Status.OK, [])
        else:  # pragma: no cover - Op is exhaustive above
            raise ProtocolError(f"unknown op {op}")

    def _ready(self, w: _Waiter) -> bool:
        if w.op is Op.WAIT_COUNT:
            raw = self.data.get(w.keys[0], b"0")
            try:
                return int(raw) >= w.count
            except ValueError:
                return False
        return all(k in self.data for k in w.keys)

    def _answer(self, w: _Waiter) -> None:
        w.done = True
        w.conn.waiter = None
        if w.op is Op.WAIT:
            self._reply(w.conn, Status.OK, [])
        elif w.op is Op.WAIT_COUNT:
            self._reply(w.conn, Status.OK, [self.data.get(w.keys[0], b"0")])
        else:
            self._reply(w.conn, Status.OK, [self.data[k] for k in w.keys])
        if w.conn.sock in self.conns and w.conn.inbuf:
            self._process(w.conn)

    def _park(self, w: _Waiter) -> None:
        if self._ready(w):
            self._answer(w)
            return
        w.conn.waiter = w
        self._register(w)
        if w.deadline is not None:
            heapq.heappush(self.deadlines, (w.deadline, next(self.seq), w))

    def _register(self, w: _Waiter) -> None:
        for k in w.keys:
            if w.op is Op.WAIT_COUNT or k not in self.data:
                self.by_key.setdefault(k, []).append(w)

    def _changed(self, key: str) -> None:
        waiters = self.by_key.pop(key, None)
        if not waiters:
            return
        for w in waiters:
            if w.done:
                continue
            if self._ready(w):
                self._answer(w)
            elif w.op is Op.WAIT_COUNT:
                self.by_key.setdefault(key, []).append(w)
            else:
                # Still missing some key (maybe one deleted since it parked): register it
                # again under every missing key; a duplicate entry is skipped via w.done.
                self._register(w)

    def _expire(self) -> None:
        now = time.monotonic()
        while self.deadlines and self.deadlines[0][0] <= now:
            _, _, w = heapq.heappop(self.deadlines)
            if w.done:
                continue
            w.done = True
            w.conn.waiter = None
            if w.op is Op.WAIT_COUNT:
                fields = [self.data.get(w.keys[0], b"0")]
            else:
                fields = [k.encode() for k in w.keys if k not in self.data]
            self._reply(w.conn, Status.TIMEOUT, fields)
            if w.conn.sock in self.conns and w.conn.inbuf:
                self._process(w.conn)


def _args(fields: list[bytes], n: int) -> list[bytes]:
    if len(fields) != n:
        raise ProtocolError(f"expected {n} fields, got {len(fields)}")
    return fields


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


class _Client:
    """Connections of one TCPStore instance to the server; safe to share between threads.

    ``close(reason)`` from any thread ends every pending connect, retry pause and answer
    wait at once (it shuts their sockets down); with a reason, they and every later call
    raise an error naming the server's address and the reason.
    """

    def __init__(self, host: str, port: int) -> None:
        self.host = host
        self.port = port
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
        raise self._closed_error("connecting to the master")

    # ------------------------------------------------------------ connecting
    def _connect(self, timeout: float | None) -> socket.socket:
        deadline = None if timeout is None else time.monotonic() + timeout
        delay = 0.005
        while True:
            if self.closed:
                raise self._closed_error("connecting to the master")
            left = None if deadline is None else max(deadline - time.monotonic(), 0.001)
            try:
                sock = self._connect_once(left)
            except socket.gaierror as e:
                raise DistNetworkError(
                    f"TCPStore: cannot resolve host {self.host!r}: {e}"
                ) from None
            except OSError as e:
                if self.closed:
                    raise self._closed_error("connecting to the master") from None
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
            finally:
                with self.lock:
                    self.connecting.discard(sock)
            sock.setblocking(True)
            return sock
        except BaseException:
            sock.close()
            raise

    # ------------------------------------------------------------ errors
    def _closed_error(self, what: str) -> DistStoreError:
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
                raise self._closed_error(what)
            sock = self.idle.pop() if self.idle else None
        if sock is None:
            sock = self._connect(connect_timeout)
        with self.lock:
            if self.closed:  # closed while we connected: close() never saw this socket
                sock.close()
                raise self._closed_error(what)
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
                raise self._closed_error(what) from None
            if isinstance(e, socket.timeout):
                raise DistNetworkError(
                    f"TCPStore: {op.name.lower()} timed out: no answer from the server at "
                    f"{self.host}:{self.port}"
                ) from None
            raise DistNetworkError(
                f"TCPStore: lost the connection to the server at {self.host}:{self.port} "
                f"during {op.name.lower()}: {e}"
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


def abort_pending(reason: str) -> int:
    """Abort every TCPStore of this process still being constructed; return how many.

    That is, every instance still connecting to its master (retrying until the master
    listens), joining it, or, as master, waiting for its clients: the rendezvous of
    ``init_process_group`` with ``env://`` or ``tcp://``. Each raises ``DistStoreError``
    naming the master's address and ``reason``. Safe from any thread. (A constructing
    TCPStore is registered in mpdist.aborts, so the harness's abort reaches it too.)
    """
    if not isinstance(reason, str):
        raise TypeError(f"abort reason must be a str, got {type(reason).__name__}")
    stores = [t.obj for t in aborts.targets() if isinstance(t.obj, TCPStore)]
    for store in stores:
        store.abort(reason)
    return len(stores)


def _shutdown(client: _Client | None, server: _Server | None) -> None:
    if client is not None:
        client.close()
    if server is not None:
        server.stop()


class TCPStore(Store):
    """A store served over TCP; the master (``is_master=True``) runs the server.

    ``port=0`` on the master lets the OS pick a free port, reported by ``.port``.
    With ``world_size`` given, every instance counts itself in the ``"init/"`` key and
    the master (if ``wait_for_workers``) waits until ``world_size`` instances joined.
    """

    def __init__(
        self,
        host_name: str,
        port: int,
        world_size: int | None = None,
        is_master: bool = False,
        timeout: timedelta = DEFAULT_TIMEOUT,
        wait_for_workers: bool = True,
    ) -> None:
        if not isinstance(host_name, str):
            raise TypeError(f"TCPStore host must be a str, got {type(host_name).__name__}")
        if not isinstance(port, int) or isinstance(port, bool):
            raise TypeError(f"TCPStore port must be an int, got {type(port).__name__}")
        if not 0 <= port <= 65535:
            raise ValueError(f"TCPStore port must be in 0..65535, got {port}")
        if world_size is not None and (
            not isinstance(world_size, int) or isinstance(world_size, bool)
        ):
            raise TypeError(f"TCPStore world_size must be an int, got {type(world_size).__name__}")
        if world_size is not None and world_size < 1:
            raise ValueError(f"TCPStore world_size must be >= 1, got {world_size}")
        if not is_master and port == 0:
            raise ValueError("TCPStore: a client needs the master's port (port=0 is master-only)")
        super().__init__(timeout)
        self._host = host_name
        self._world_size = world_size
        self._is_master = bool(is_master)
        self._port = port
        # The client exists (holding nothing) before anything can block, so that
        # abort() can end the construction from another thread at any point.
        self._client: _Client | None = _Client(host_name, port)
        self._server: _Server | None = None
        # Registered while it is built: an abort (mpdist.aborts) ends the construction.
        aborts.register(self, self.abort, f"TCPStore {host_name}:{port}")
        try:
            if is_master:
                # "localhost" and friends bind loopback; only an explicit address listens wider.
                self._server = _Server(host_name, port)
                self._port = self._client.port = self._server.port
            self._client.open(self._timeout_s())
            if world_size is not None:
                self._add(INIT_KEY, 1)
                if is_master and wait_for_workers:
                    self._wait_for_workers(world_size)
            aborts.unregister(self)
            if self._client.closed:  # aborted after its last wait: no half-dead store
                raise self._client._closed_error("connecting to the master")
            self._finalizer = weakref.finalize(self, _shutdown, self._client, self._server)
        except BaseException:
            # All or nothing: every socket and the server thread go, the error propagates.
            aborts.unregister(self)
            _shutdown(self._client, self._server)
            raise

    def abort(self, reason: str) -> None:
        """From any thread: this instance's pending and later requests raise at once.

        A construction still connecting to the master (or, on the master, waiting for its
        clients) raises ``DistStoreError`` naming the master's address and ``reason``, and
        leaves no socket or thread behind. On a built master the server goes on serving
        the other instances until ``close()``.
        """
        if not isinstance(reason, str):
            raise TypeError(f"abort reason must be a str, got {type(reason).__name__}")
        client = self._client
        if client is not None:
            client.close(reason)

    def _wait_for_workers(self, world_size: int) -> None:
        timeout = self._timeout_s()
        status, f = self._call(
            Op.WAIT_COUNT,
            [proto.encode_timeout(timeout), INIT_KEY.encode(), str(world_size).encode()],
            wait=timeout,
        )
        if status == Status.TIMEOUT:
            joined = int(f[0]) if f and f[0].lstrip(b"-").isdigit() else 0
            raise DistStoreError(
                f"Timed out after {timeout:g} seconds waiting for clients. "
                f"{joined}/{world_size} clients joined."
            )

    @property
    def host(self) -> str:
        """The server's host."""
        return self._host

    @property
    def port(self) -> int:
        """The server's port (the one the OS picked when created with port 0)."""
        return self._port

    @property
    def world_size(self) -> int | None:
        """The number of instances the master waits for, or None."""
        return self._world_size

    @property
    def is_master(self) -> bool:
        """True for the instance that runs the server."""
        return self._is_master

    def __repr__(self) -> str:
        role = "master" if self._is_master else "client"
        return f"TCPStore({self._host!r}, {self._port}, {role})"

    # ------------------------------------------------------------ plumbing
    def _call(
        self, op: Op, fields: list[bytes], wait: float | None | bool = False
    ) -> tuple[int, list[bytes]]:
        # wait=False: a quick op, bounded by the store timeout; else the op may park on
        # the server for `wait` seconds (None: forever) and we allow a grace on top.
        if self._closed or self._client is None:
            raise DistStoreError(f"TCPStore {self._host}:{self._port} is closed")
        connect_timeout = self._timeout_s()
        if wait is False:
            reply_timeout = connect_timeout
        else:
            reply_timeout = None if wait is None else float(wait) + _GRACE_S
        status, f = self._client.call(op, fields, reply_timeout, connect_timeout)
        if status == Status.ERROR:
            raise DistStoreError(f[0].decode(errors="replace") if f else "TCPStore server error")
        return status, f

    def _blocking(self, op: Op, name: str, keys: list[str], timeout: float | None) -> list[bytes]:
        status, f = self._call(
            op, [proto.encode_timeout(timeout)] + [k.encode() for k in keys], wait=timeout
        )
        if status == Status.TIMEOUT:
            missing = [k.decode(errors="replace") for k in f] or keys
            raise self._timeout_error(name, missing, timeout)
        return f

    # ------------------------------------------------------------ hooks
    def _set(self, key: str, value: bytes) -> None:
        self._call(Op.SET, [key.encode(), value])

    def _get(self, key: str, timeout: float | None) -> bytes:
        return self._blocking(Op.GET, "get", [key], timeout)[0]

    def _wait(self, keys: list[str], timeout: float | None) -> None:
        self._blocking(Op.WAIT, "wait", keys, timeout)

    def _multi_get(self, keys: list[str], timeout: float | None) -> list[bytes]:
        if not keys:
            return []
        return self._blocking(Op.MULTI_GET, "multi_get", keys, timeout)

    def _check(self, keys: list[str]) -> bool:
        return self._call(Op.CHECK, [k.encode() for k in keys])[1][0] == b"1"

    def _add(self, key: str, amount: int) -> int:
        return int(self._call(Op.ADD, [key.encode(), str(amount).encode()])[1][0])

    def _compare_set(self, key: str, expected: bytes, desired: bytes) -> bytes:
        return self._call(Op.COMPARE_SET, [key.encode(), expected, desired])[1][0]

    def _delete_key(self, key: str) -> bool:
        return self._call(Op.DELETE_KEY, [key.encode()])[1][0] == b"1"

    def _num_keys(self) -> int:
        return int(self._call(Op.NUM_KEYS, [])[1][0])

    def _append(self, key: str, value: bytes) -> None:
        self._call(Op.APPEND, [key.encode(), value])

    def _multi_set(self, keys: list[str], values: list[bytes]) -> None:
        fields: list[bytes] = []
        for k, v in zip(keys, values, strict=True):
            fields += (k.encode(), v)
        self._call(Op.MULTI_SET, fields)

    def _close(self) -> None:
        self._finalizer()
