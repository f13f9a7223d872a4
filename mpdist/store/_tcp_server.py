"""The TCPStore server: one thread around a ``selectors`` loop that owns the key/value dict.

Requests that must block (``get``, ``wait``, ``multi_get``, a wait for a count) are parked
here until their keys are set or their deadline passes, so clients never poll: a client
sends one frame and blocks reading the answer. A connection that sends anything that is not
a valid frame (see ``_protocol``) is dropped; the server and its other clients carry on.

With a key, a connection must first prove it holds the secret (``mpdist._auth``'s handshake,
fed from this loop): until then the server reads only the fixed handshake sizes (never a
claimed length), answers no command, and drops, without an answer and counted in
``refused``, a connection that fails, stalls past the handshake timeout, or is the oldest of
too many mid-handshake.

Out of file descriptors (EMFILE/ENFILE), ``accept`` fails at once while the listener stays
readable: polling it would spin. The listener then rests (``mpdist._accept``): the
connection waits in the kernel's backlog until a descriptor frees up, and the other clients
are served meanwhile.
"""

from __future__ import annotations

import contextlib
import errno
import heapq
import itertools
import selectors
import socket
import threading
import time

from mpdist import _accept, _auth
from mpdist.errors import DistNetworkError
from mpdist.store import _protocol as proto
from mpdist.store._protocol import Op, ProtocolError, Status
from mpdist.store.base import compare_set_outcome

__all__ = ["Server"]

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

    __slots__ = ("sock", "inbuf", "outbuf", "waiter", "writing", "auth", "auth_deadline")

    def __init__(self, sock: socket.socket, auth: _auth.Responder | None) -> None:
        self.sock = sock
        self.inbuf = bytearray()
        self.outbuf = bytearray()
        self.waiter: _Waiter | None = None
        self.writing = False
        self.auth = auth  # None once authenticated (or when the server has no key)
        self.auth_deadline = 0.0


class Server:
    """The master's store server: a listening socket and one selector thread."""

    def __init__(self, host: str, port: int, key: bytes | None = None) -> None:
        self.key = key
        # Connections refused by the handshake (the counter tests read).
        self.refused = 0
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
            # Mid-handshake connections, oldest first (their deadlines in the same order).
            self.pending: dict[_Conn, None] = {}
            self.stopping = False
            self.rest = _accept.ListenerRest()  # out of descriptors: not polled a while
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
                if self.pending:
                    first = next(iter(self.pending)).auth_deadline
                    timeout = min(timeout, max(0.0, first - time.monotonic()))
                rest = self.rest.left(time.monotonic())
                if rest is not None:
                    timeout = min(timeout, rest)
                for key, mask in self.sel.select(timeout):
                    sock = key.fileobj
                    if sock is self.listener:
                        self._accept()
                    elif sock is self.wake_r:
                        with contextlib.suppress(OSError):
                            self.wake_r.recv(64)
                    else:
                        # Every registered fileobj is a socket (the selector types it
                        # int | HasFileno); a client's stays in conns until it is dropped.
                        conn = self.conns.get(sock) if isinstance(sock, socket.socket) else None
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
                if self.rest.left(time.monotonic()) == 0.0:
                    self.rest.end()
                    self.sel.register(self.listener, selectors.EVENT_READ, None)
        finally:
            self._cleanup()

    def _accept(self) -> None:
        while True:
            try:
                sock, _ = self.listener.accept()
            except (BlockingIOError, InterruptedError):
                return
            except OSError as e:
                if _accept.one_client(e):
                    continue
                # would fail again at once while the listener polls readable: rest it
                self.sel.unregister(self.listener)
                self.rest.start()
                return
            self.rest.accepted()
            sock.setblocking(False)
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            conn = _Conn(sock, None if self.key is None else _auth.Responder(self.key))
            self.conns[sock] = conn
            self.sel.register(sock, selectors.EVENT_READ, None)
            if conn.auth is not None:
                conn.auth_deadline = time.monotonic() + _auth.HANDSHAKE_TIMEOUT_S
                self.pending[conn] = None
                if len(self.pending) > _auth.MAX_PENDING:  # a flood: the oldest goes
                    self._refuse(next(iter(self.pending)))

    def _refuse(self, conn: _Conn) -> None:
        """Drop a connection that failed the handshake, without an answer; count it."""
        self.refused += 1
        _auth.note_refusal("tcpstore")
        self._drop(conn)

    def _drop(self, conn: _Conn) -> None:
        if conn.waiter is not None:
            conn.waiter.done = True
            conn.waiter = None
        self.conns.pop(conn.sock, None)
        self.pending.pop(conn, None)
        with contextlib.suppress(KeyError, ValueError):
            self.sel.unregister(conn.sock)
        conn.sock.close()

    def _read(self, conn: _Conn) -> None:
        auth = conn.auth
        # Before the handshake is done, read no more than its next message.
        want = _RECV_CHUNK if auth is None else auth.wanted - len(conn.inbuf)
        try:
            chunk = conn.sock.recv(want)
        except (BlockingIOError, InterruptedError):
            return
        except OSError:
            chunk = b""
        if not chunk:  # hung up (before the handshake was done: a refusal)
            if auth is None:
                self._drop(conn)
            else:
                self._refuse(conn)
            return
        conn.inbuf += chunk
        if auth is None:
            self._process(conn)
        elif not auth.plausible(conn.inbuf):
            self._refuse(conn)
        elif len(conn.inbuf) == auth.wanted:
            self._authenticate(conn, auth)

    def _authenticate(self, conn: _Conn, auth: _auth.Responder) -> None:
        message = bytes(conn.inbuf)
        conn.inbuf.clear()
        try:
            answer = auth.receive(message)
        except _auth.Refused:
            self._refuse(conn)
            return
        if auth.done:
            conn.auth = None
            self.pending.pop(conn, None)
        if answer:
            conn.outbuf += answer
            self._flush(conn)

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
        # Fields arrive as bytes; the tables (data, by_key) are keyed by the decoded str.
        # Hence key_b for a key field as received, key for its decoded form.
        data = self.data
        if op is Op.SET:
            key_b, value = _args(f, 2)
            key = key_b.decode()
            data[key] = value
            self._changed(key)
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
            t, key_b, n = _args(f, 3)
            self._park(_Waiter(conn, op, [key_b.decode()], int(n), proto.decode_timeout(t)))
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
            (key_b,) = _args(f, 1)
            found = data.pop(key_b.decode(), None) is not None
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
        while self.pending:
            oldest = next(iter(self.pending))
            if oldest.auth_deadline > now:
                break
            self._refuse(oldest)  # too slow to prove anything: a slow-loris or a stranger
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
