"""TcpTransport: the transport API over a full mesh of TCP connections on 127.0.0.1.

Construct, then ``connect()`` (Gloo's ``Context`` then ``connectFullMesh``): the constructor
only makes the local state, so the transport can be registered for ``abort()`` before
``connect()`` blocks meeting the peers (``mpdist.transport.mesh`` builds the mesh).

Data: non-blocking sockets driven by ``poll`` from the calling thread; headers and payloads
go out with ``sendmsg`` of memoryviews and come in with ``recv_into`` the destination
buffer, so payloads are never copied in Python unless they arrive before their receive is
posted (then they are stashed). Big payloads go through the shared-memory ring of the pair
instead (``mpdist.transport.shm``), and collective messages to a peer on this host through
the pair's mailbox (``mpdist.transport.mailbox``), with no system call; the TCP connection
then carries only point-to-point messages, errors, wake-ups and what did not fit. A
socketpair wakes a blocked poll on ``abort()``. Each peer's state is a ``tcp_peer.Peer``;
``tcp_rings.PairRings`` creates and attaches the pairs' rings and mailboxes.
"""

from __future__ import annotations

import contextlib
import os
import select
import socket
import time
from typing import Any

import numpy as np

from mpdist.errors import DistNetworkError
from mpdist.transport.base import Payload, RecvReq, SendReq, Transport
from mpdist.transport.header import (
    FLAG_SHM,
    HEADER,
    HEADER_SIZE,
    KIND_COLL,
    KIND_ERROR,
    KIND_WAKE,
    MAGIC,
    Header,
    HeaderFields,
)
from mpdist.transport.mailbox import INLINE_MAX, RECORD_HEAD, SUPPORTED, Mailbox, fence
from mpdist.transport.mesh import connect_full_mesh, group_token
from mpdist.transport.shm import Ring
from mpdist.transport.spin import Spin
from mpdist.transport.tcp_peer import Outgoing, Peer, drain, into_ring, undelivered
from mpdist.transport.tcp_rings import RING_BYTES, PairRings

__all__ = ["TcpTransport"]

_LOWAT_MIN = 128 << 10
_POOL_MIN = 64 << 10  # stash buffers at least this big are recycled ...
_POOL_CAP = 64 << 20  # ... up to this many bytes
_SHM_MIN = 16 << 10  # payloads at least this big go through the shared-memory ring
_LOWAT_CAP = 512 << 10
_CLOSE_DRAIN_S = 3.0  # close waits at most this long for peers to take what we sent
_POLLIN = select.POLLIN | select.POLLPRI | select.POLLHUP | select.POLLERR
_POLLOUT = select.POLLOUT
_POLLINOUT = _POLLIN | _POLLOUT
# A rank asleep on its mailboxes looks at them this often at first, whatever the wake-ups
# do, then half as often after each nap that nothing ended, down to once per
# _BOX_NAP_MAX_S: a rank blocked for a second wakes about 15 times, not 200 (each wake-up
# costs ~0.1 ms of CPU in Python: 200 of them were 3-5% of a core).
_BOX_NAP_S = 0.005
_BOX_NAP_MAX_S = 0.1
# How long sendrecv spins for the answer (yielding its core every few microseconds) before
# the general wait (which may spin again, then sleeps). Longer than the hiccups of a rank
# that is on time (a garbage collection, an interrupt: tens to hundreds of microseconds),
# whose cost as a fallback is a sleep and a wake-up on both sides.
# MPDIST_SPIN_US=0 (sleep at once) turns it off too.
_FAST_SPIN_S = 1e-3 if Spin.default().limit_s > 0 else 0.0
# Collective messages up to this size take sendrecv's latency path (through the ring above
# the mailbox's inline size): algorithms exchange them one sendrecv at a time.
_LATENCY_BYTES = 64 << 10
_EMPTY = memoryview(b"")
_WAKE = HEADER.pack(MAGIC, KIND_WAKE, 0, 0, 0, 0, -1, 0, 0, 0, 0, 0, 0, 0)


class TcpTransport(Transport):
    """The group's ranks connected pairwise over TCP (see the module docstring):
    ``TcpTransport(store, rank, size, timeout_s)``, then :meth:`connect`.

    ``store`` must be unique to the group (a PrefixStore); it needs ``set``, blocking ``get``.
    ``abort(reason)`` and ``close()`` work at any point, also on a transport that is still
    connecting or not connected yet.
    """

    latency_bytes = _LATENCY_BYTES if SUPPORTED else 0
    inflight_bytes = RING_BYTES  # past the pair's ring, payloads go over TCP

    def __init__(
        self,
        store: Any,
        rank: int,
        size: int,
        timeout_s: float,
        *,
        rank_names: list[int] | None = None,
        shm: bool | None = None,
        mailbox: bool | None = None,
    ) -> None:
        super().__init__(rank, size, timeout_s, rank_names)
        self._spin = Spin.default()
        self._nap_s = _BOX_NAP_S  # the next nap's length (see _BOX_NAP_S)
        self._peers: list[Peer | None] = [None] * size
        # the shared-memory rings and mailboxes of our pairs on this host (tcp_rings)
        self._rings = PairRings(rank, size, shm, mailbox)
        # stash buffers are recycled: fresh big buffers cost page faults on every use
        self._pool: dict[int, list[np.ndarray]] = {}
        self._pool_bytes = 0
        self._peer_flags: dict[int, int] = {}
        self._by_fd: dict[int, Peer] = {}
        self._inboxes: list[tuple[Peer, Mailbox]] = []  # every peer's mailbox to us
        self._poll = select.poll()
        self._wake_r, self._wake_w = socket.socketpair()
        self._wake_r.setblocking(False)
        self._wake_w.setblocking(False)
        self._poll.register(self._wake_r.fileno(), select.POLLIN)
        self._wake_fd = self._wake_r.fileno()
        self._store: Any = store
        self._gid = self._secret = b""
        self._connected = False

    # ------------------------------------------------------------------ setup
    def connect(self) -> TcpTransport:
        """Connect the full mesh (Gloo's ``connectFullMesh``); returns the transport.

        Blocks until every peer is connected, the timeout passes (``DistNetworkError``
        naming the ranks that never came) or ``abort(reason)`` is called from another
        thread, before or during the wait (``DistBackendError(reason)``). A transport whose
        connect failed is closed. Call it once, before any operation.
        """
        with self._lock:
            if self._closed:
                raise self._sticky()
            if self._connected:
                raise RuntimeError(f"rank {self._n(self.rank)}: connect() was called already")
            try:
                if self.size > 1:
                    self._check_abort()  # aborted before it began
                    self._connect_mesh()
            except BaseException:
                self.close()
                raise
            finally:
                self._store = None  # the store is for meeting the peers only
            self._connected = True
        return self

    def _connect_mesh(self) -> None:
        deadline = time.monotonic() + self.timeout_s
        self._gid, self._secret = group_token(self._store, self.rank)
        self._check_abort()  # close() or abort() while we waited in the store
        flags = self._rings.create(self._gid)
        links = connect_full_mesh(
            self._store,
            self.rank,
            self.size,
            self._gid,
            self._secret,
            flags,
            deadline=deadline,
            timeout_s=self.timeout_s,
            wake=self._wake_r,
            check_abort=self._check_abort,
            name=self._n,
        )
        for peer, link in sorted(links.items()):
            self._peer_flags[peer] = link.flags
            self._add_peer(peer, link.sock)
        self._inboxes.extend(self._rings.attach(self._peers, self._peer_flags))

    def _add_peer(self, peer: int, sock: socket.socket) -> None:
        p = Peer(peer, sock)
        self._peers[peer] = p
        self._by_fd[p.fd] = p
        self._poll.register(p.fd, _POLLIN)

    # ------------------------------------------------------------------ sending
    def _post(self, peer: int, fields: HeaderFields, buf: memoryview, req: SendReq) -> None:
        p = self._peers[peer]
        if p is None:
            self._check_connected()
            raise ValueError(
                f"rank {self._n(self.rank)} cannot send to rank {self._n(peer)} (itself or not in group)"
            )
        n = buf.nbytes
        box = p.tx_box
        if (
            box is not None
            and fields[1] == KIND_COLL
            and not p.closed
            and self._post_box(p, box, fields, buf)
        ):
            req.done = True
            return
        ring = p.tx_ring
        if ring is not None and n >= _SHM_MIN and not p.closed:
            announced = into_ring(ring, fields, buf)
            if announced is not None:
                req.done = True  # copied now, so the send is done
                self._send_header(p, HEADER.pack(*announced))
                return
        hb = HEADER.pack(*fields)
        if p.closed:
            return  # wait() reports the lost peer
        if p.txq:
            p.txq.append(Outgoing([hb, buf], req, False))
            return
        try:
            sent = p.sock.sendmsg([hb, buf]) if n else p.sock.send(hb)
        except (BlockingIOError, InterruptedError):
            sent = 0
        except OSError:
            self._stop_sending(p)
            return
        if sent == HEADER_SIZE + n:
            req.done = True
            return
        bufs = [hb[sent:], buf] if sent < HEADER_SIZE else [buf[sent - HEADER_SIZE :]]
        p.txq.append(Outgoing(bufs, req, sent > 0))
        self._want_write(p)

    def _post_box(self, p: Peer, box: Mailbox, fields: HeaderFields, buf: memoryview) -> bool:
        """Put a collective message into the peer's mailbox (its payload inline, or in the
        ring); False if there is no room now (then it goes on TCP)."""
        if buf.nbytes <= INLINE_MAX:
            asleep = box.put(fields, buf)
            if asleep is None:
                return False
        else:
            # room in the mailbox first: a payload put in the ring must be announced
            if p.tx_ring is None or box.slot() is None:
                return False
            announced = into_ring(p.tx_ring, fields, buf)
            if announced is None:
                return False
            asleep = box.put(announced, _EMPTY)
        if asleep:
            self._send_header(p, _WAKE)  # the peer has stopped spinning: wake its poll
        return True

    def sendrecv(
        self,
        step: int,
        dest: int | None,
        send: memoryview | None,
        source: int | None,
        recv: memoryview | None,
        op_name: str,
        timeout_s: float,
    ) -> None:
        # The latency path of a collective message between ranks of a host: the record
        # goes straight into the peer's mailbox, and the answer is taken straight from
        # ours when it comes within a short spin and is exactly the record expected (its
        # header the one this rank would send, but for the payload length and where a
        # payload in the ring lies). In every other case (no mailbox, a full one, a
        # stash, a late or unexpected record) the general path takes over from where this
        # one stopped, and says what is wrong.
        sent: SendReq | None = None  # a send that took the general path
        fields: HeaderFields | None = None
        if dest is not None:
            assert send is not None
            p = self._peers[dest]
            fields = self.coll_fields(step, send.nbytes)
            box = p.tx_box if p is not None and not p.closed else None
            if (
                p is None
                or box is None
                or not (
                    self._post_box(p, box, fields, send)
                    # a full mailbox: the peer is behind; wait for it rather than spill to TCP
                    or (box.room(_FAST_SPIN_S) and self._post_box(p, box, fields, send))
                )
            ):
                sent = self.isend(dest, step, send)
        reqs: list[RecvReq | SendReq] = []
        if source is not None:
            assert recv is not None
            p = self._peers[source]
            rx = p.rx_box if p is not None else None
            taken = False
            if rx is not None and not self._stash:
                n = recv.nbytes
                # the answer's header is ours but for its length (an exchange of equal
                # blocks: the very tuple sent)
                expected = (
                    fields if fields is not None and fields[12] == n else self.coll_fields(step, n)
                )
                with self._lock:  # a thread waiting on point-to-point reads mailboxes too
                    if n <= INLINE_MAX:
                        taken = rx.take(expected, recv, _FAST_SPIN_S)
                    else:
                        assert p is not None
                        taken = self._take_from_ring(p, rx, expected, recv)
            if not taken:
                reqs.append(self.irecv(source, step, recv))
        if sent is not None:
            reqs.append(sent)
        if reqs:
            self.wait(reqs, op_name, timeout_s)

    def _take_from_ring(
        self, p: Peer, rx: Mailbox, expected: HeaderFields, recv: memoryview
    ) -> bool:
        """:meth:`Mailbox.take` of a record whose payload waits in the ring: the next record,
        if it comes soon and announces ``expected``'s message, copied into ``recv``."""
        ring = p.rx_ring
        if ring is None or not rx.arrived(_FAST_SPIN_S):
            return False
        got = HEADER.unpack_from(rx.slots, rx.next_offset())
        if got[5] != FLAG_SHM or got[:5] != expected[:5] or got[6:13] != expected[6:13]:
            return False
        found = ring.payload(got[13], recv.nbytes)
        if found is None:
            return False  # the general reader reports the forged header
        _, number = found
        ring.read(got[13], recv)
        ring.release(number)
        rx.consumed()
        return True

    def _send_header(self, p: Peer, hb: bytes) -> None:
        """Send a message that is a header only (its payload is in shared memory, or none)."""
        if p.closed:
            return
        if p.txq:
            p.txq.append(Outgoing([hb], SendReq(p.rank), False))
            return
        try:
            sent = p.sock.send(hb)
        except (BlockingIOError, InterruptedError):
            sent = 0
        except OSError:
            self._stop_sending(p)
            return
        if sent < HEADER_SIZE:
            p.txq.append(Outgoing([hb[sent:]], SendReq(p.rank), sent > 0))
            self._want_write(p)

    def _want_write(self, p: Peer) -> None:
        try:
            self._poll.modify(p.fd, _POLLINOUT)
        except (OSError, ValueError):  # closed under us by close() from another thread
            self._lose(p)

    def _write(self, p: Peer) -> None:
        txq = p.txq
        sock = p.sock
        while txq:
            item = txq[0]
            bufs = item.bufs
            try:
                sent = sock.sendmsg(bufs)
            except (BlockingIOError, InterruptedError):
                return
            except OSError:
                self._stop_sending(p)
                return
            item.started = True
            while sent:
                b = bufs[0]
                n = len(b)
                if sent >= n:
                    sent -= n
                    bufs.pop(0)
                else:
                    bufs[0] = b[sent:]
                    sent = 0
            # drop empty buffers (zero-byte payloads)
            while bufs and len(bufs[0]) == 0:
                bufs.pop(0)
            if bufs:
                return
            item.req.done = True
            txq.popleft()
        if not p.closed:
            try:
                self._poll.modify(p.fd, _POLLIN)
            except (OSError, ValueError):
                self._lose(p)

    # ------------------------------------------------------------------ receiving
    def _read(self, p: Peer) -> None:
        sock = p.sock
        while True:
            # one read, into the header or into the payload that is coming in
            mv = p.rx_mv
            got = p.hgot if mv is None else p.rx_got
            try:
                if mv is None:
                    n = sock.recv_into(p.hmv[got:] if got else p.hmv)
                else:
                    n = sock.recv_into(mv[got:] if got else mv)
            except (BlockingIOError, InterruptedError):
                return
            except OSError:
                n = 0
            if n == 0:  # EOF or a read error: everything the peer sent has been read
                self._lose(p)
                return
            if mv is None:
                p.hgot += n
                if p.hgot < HEADER_SIZE:
                    continue
                p.hgot = 0
                hdr = Header(*HEADER.unpack(p.hbuf))
                if hdr.magic != MAGIC:
                    self._lose(p)
                    raise DistNetworkError(
                        f"rank {self._n(self.rank)}: corrupt message header from rank {self._n(p.rank)}"
                    )
                plen = hdr.nbytes
                kind = hdr.kind
                if kind == KIND_WAKE:
                    continue  # it has done its job: this poll has ended
                req = None if kind == KIND_ERROR else self._on_header(p.rank, hdr)
                if hdr.flags & FLAG_SHM:
                    if self._from_ring(p, hdr, req):
                        return  # let the waiter look; poll brings us back for more
                    continue
                if req is not None:
                    if plen == 0:
                        req.done = True
                        return
                    mv = req.buf
                else:
                    if plen == 0:
                        self._on_stashed(p.rank, hdr, b"")
                        continue
                    mv = self._stash_buf(plen).data
                p.rx_hdr = hdr
                p.rx_req = req
                p.rx_mv = mv
                p.rx_got = 0
                p.rx_len = plen
                if plen >= _LOWAT_MIN:
                    # wake up once a big piece is there, not for every segment: fewer
                    # wakeups is what matters on a busy machine
                    p.lowat = min(plen, _LOWAT_CAP)
                    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVLOWAT, p.lowat)
                continue  # on to the payload
            got += n
            if got < p.rx_len:
                p.rx_got = got
                if p.lowat > p.rx_len - got:
                    # never ask for more than this message still owes us
                    p.lowat = p.rx_len - got
                    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVLOWAT, p.lowat)
                continue
            if p.lowat > 1:
                p.lowat = 1
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVLOWAT, 1)
            req = p.rx_req
            p.rx_mv = None
            p.rx_req = None
            if req is not None:
                # Return rather than read on: on the latency path the next read would only
                # raise BlockingIOError; poll is level-triggered and brings us back if needed.
                req.done = True
                return
            rx_hdr = p.rx_hdr
            assert rx_hdr is not None  # set with rx_mv when the payload began
            self._on_stashed(p.rank, rx_hdr, mv)

    def _from_ring(self, p: Peer, hdr: Header, req: RecvReq | None) -> bool:
        """The payload ``hdr`` announces is waiting in our ring from ``p``: into the request
        ``req`` (True: it is done) or the stash; its space is given back once read."""
        ring = p.rx_ring
        found = ring.payload(hdr.aux, hdr.nbytes) if ring is not None else None
        if ring is None or found is None:
            self._lose(p)
            raise DistNetworkError(
                f"rank {self._n(self.rank)}: rank {self._n(p.rank)} sent a "
                f"shared-memory payload outside of the ring they agreed on"
            )
        data, number = found
        if req is not None and req.view is not None:
            # a borrowing receive: lend the ring's bytes, no copy
            req.view = data
            req.lease = (ring, number)
            req.done = True
            return True
        if req is not None:
            ring.read(hdr.aux, req.buf)
            ring.release(number)
            req.done = True
            return True
        payload = self._stash_buf(hdr.nbytes).data
        ring.read(hdr.aux, payload)
        ring.release(number)
        self._on_stashed(p.rank, hdr, payload)
        return False

    def _read_boxes(self) -> bool:
        """Take the records waiting in the peers' mailboxes to us; True if there was one.

        A box is read up to the first record that completes a posted receive. A record of
        a collective still to come (a peer that runs ahead) is left in the box until that
        collective begins: its receive is posted by then and is filled straight from the
        slot, with no stash and no copy (a rank's TCP socket holds such messages the same
        way)."""
        got = False
        last = self._last_seq
        for p, box in self._inboxes:
            if p.parked > last:
                continue
            while box.pending():
                slots = box.slots
                off = box.next_offset()
                hdr = Header(*HEADER.unpack_from(slots, off))
                if hdr.magic != MAGIC or hdr.kind != KIND_COLL:
                    self._lose(p)
                    raise DistNetworkError(
                        f"rank {self._n(self.rank)}: corrupt mailbox record from rank "
                        f"{self._n(p.rank)}"
                    )
                if hdr.seq > last:
                    p.parked = hdr.seq
                    break
                p.parked = -1
                got = True
                done = False
                try:
                    req = self._on_header(p.rank, hdr)
                    n = hdr.nbytes
                    if hdr.flags & FLAG_SHM:
                        done = self._from_ring(p, hdr, req)
                    elif n > INLINE_MAX:
                        self._lose(p)
                        raise DistNetworkError(
                            f"rank {self._n(self.rank)}: rank {self._n(p.rank)} sent a "
                            f"mailbox record of {n} bytes, more than a slot holds"
                        )
                    elif req is not None:
                        if n:
                            req.buf[:] = slots[off + RECORD_HEAD : off + RECORD_HEAD + n]
                        req.done = done = True
                    else:
                        start = off + RECORD_HEAD
                        self._on_stashed(p.rank, hdr, bytes(slots[start : start + n]))
                finally:
                    box.consumed()
                if done:
                    break
        return got

    def _any_mail(self) -> bool:
        """Whether a mailbox holds a record :meth:`_read_boxes` would take."""
        last = self._last_seq
        # a loop, not any(<generator>): this runs on every turn of a spin
        for p, box in self._inboxes:  # noqa: SIM110
            if p.parked <= last and box.pending():
                return True
        return False

    def _give_back(self, lease: object) -> None:
        assert isinstance(lease, tuple)  # (ring, allocation number), lent by _from_ring
        ring: Ring
        token: int
        ring, token = lease
        ring.release(token)

    def _stash_buf(self, n: int) -> np.ndarray:
        bufs = self._pool.get(n)
        if bufs:
            self._pool_bytes -= n
            return bufs.pop()
        return np.empty(n, np.uint8)

    def _recycle(self, payload: Payload) -> None:
        # our stashed payloads are memoryviews of _stash_buf arrays (bytes: empty ones)
        if type(payload) is memoryview:
            n = payload.nbytes
            if n >= _POOL_MIN and self._pool_bytes + n <= _POOL_CAP:
                arr = payload.obj
                if not isinstance(arr, np.ndarray):
                    return
                bufs = self._pool.setdefault(n, [])
                if len(bufs) < 4:
                    bufs.append(arr)
                    self._pool_bytes += n

    def _stop_sending(self, p: Peer) -> None:
        """A write failed: the peer closed or reset the connection. It may have sent an
        ERROR first, so the peer is not lost yet: keep reading until EOF (``_lose``), which
        comes right after whatever it sent (the kernel keeps received bytes after a reset)."""
        if p.closed:
            return
        p.closed = True
        p.txq.clear()  # never delivered; waiting for them reports the peer once it is gone
        try:
            self._poll.modify(p.fd, _POLLIN)
        except (OSError, ValueError):  # closed under us by close() from another thread
            self._lose(p)

    def _lose(self, p: Peer) -> None:
        """Everything the peer sent has been read (EOF or a read error): it is gone."""
        if p.gone:
            return
        p.closed = p.gone = True
        with contextlib.suppress(KeyError, ValueError, OSError):
            self._poll.unregister(p.fd)

    # ------------------------------------------------------------------ progress
    def _progress(self, timeout_s: float) -> None:
        inboxes = self._inboxes
        if inboxes and self._read_boxes():
            return  # the waiter looks first; TCP is read when it waits again
        # poll(0) first: given a timeout, the kernel sets up a wait on every socket even when
        # something is ready already (the common case), and that costs more than the second
        # call made when nothing is
        events = self._poll.poll(0)
        if not events and timeout_s > 0:
            spin = self._spin.budget()
            mail = False
            if spin > 0:
                # a peer usually answers within microseconds: poll without sleeping for a
                # moment, since a sleep and wake-up costs more than that (transport.spin)
                end = time.monotonic() + min(spin, timeout_s)
                while not events and time.monotonic() < end:
                    if inboxes and self._any_mail():
                        mail = True
                        break
                    events = self._poll.poll(0)
                    os.sched_yield()  # a peer that shares our core runs now
                self._spin.answered(mail or bool(events))
            if not mail and not events:
                if inboxes:
                    mail = self._nap(timeout_s)
                else:
                    events = self._poll.poll(max(timeout_s * 1000.0, 0.0))
            if mail:
                self._read_boxes()
                return
        self._handle(events)

    def _handle(self, events: list[tuple[int, int]]) -> None:
        """Act on what poll() reported: writes, reads, the abort wake-up."""
        by_fd = self._by_fd
        for fd, ev in events:
            if fd == self._wake_fd:
                self._drain_wake()
                if self._abort_reason is not None:
                    self._check_abort()
                continue
            p = by_fd.get(fd)
            if p is None or p.gone:
                continue
            if ev & _POLLOUT:
                self._write(p)
            # read even when the write just failed: an ERROR the peer sent before closing
            # is waiting there, and it must win over "lost its connection"
            if ev & _POLLIN and not p.gone:
                self._read(p)

    def _nap(self, timeout_s: float) -> bool:
        """Block until TCP has something or a peer wakes us for mail (or a short nap has
        passed); True if mail is waiting."""
        for _, box in self._inboxes:
            box.sleep(True)
        fence()  # "asleep" is visible before we look at the heads one last time
        try:
            if self._any_mail():
                return True
            nap = self._nap_s
            events = self._poll.poll(min(timeout_s, nap) * 1000.0)
        finally:
            for _, box in self._inboxes:
                box.sleep(False)
        self._handle(events)
        mail = self._any_mail()
        self._nap_s = _BOX_NAP_S if mail or events else min(2.0 * nap, _BOX_NAP_MAX_S)
        return mail

    def _peer_closed(self, peer: int) -> bool:
        p = self._peers[peer]
        if p is None:
            self._check_connected()
            return True  # ourselves
        return p.gone

    def _check_connected(self) -> None:
        if not self._connected:
            raise RuntimeError(
                f"rank {self._n(self.rank)}: the transport is not connected (call connect() first)"
            )

    def _drain_wake(self) -> None:
        with contextlib.suppress(OSError):  # BlockingIOError once it is empty
            while self._wake_r.recv(4096):
                pass

    def _wake(self) -> None:
        with contextlib.suppress(OSError):
            self._wake_w.send(b"!")

    def _notify(self, peers: list[int], kind: int, text: str, origin: int, flags: int) -> None:
        """Send an ERROR message (detected by ``origin``) to ``peers`` and push it out for a
        bounded time."""
        payload = text.encode("utf-8", "replace")
        n = len(payload)
        hb = HEADER.pack(MAGIC, KIND_ERROR, 0, kind, 0, flags, origin, 0, 0, 0, 0, 0, n, 0)
        live = []
        for peer in peers:
            p = self._peers[peer]
            if p is None or p.closed:
                continue
            # keep a half-sent message (the stream must stay well formed), drop the rest
            head = p.txq[0] if p.txq and p.txq[0].started else None
            p.txq.clear()
            if head is not None:
                p.txq.append(head)
            p.txq.append(Outgoing([hb, payload], SendReq(peer), False))
            live.append(p)
        deadline = time.monotonic() + min(2.0, self.timeout_s)
        while live and time.monotonic() < deadline:
            for p in live:
                self._write(p)
            live = [p for p in live if p.txq and not p.closed]
            if not live:
                break
            poll = select.poll()
            for p in live:
                poll.register(p.fd, _POLLINOUT)
            for fd, ev in poll.poll(50):
                p = self._by_fd[fd]
                if ev & _POLLIN and not p.gone:
                    # keep reading so that a peer blocked on sending to us can drain
                    with contextlib.suppress(Exception):
                        self._read(p)

    def _shutdown(self) -> None:
        # A socket closed with unread bytes makes the kernel reset the connection, and a
        # reset discards what we sent that the peer has not received yet (an ERROR queued
        # behind a big payload, say). So: read and drop what the peer still sends until it
        # has acknowledged all our data (bounded), then close. (No shutdown(SHUT_WR) first:
        # the FIN goes after the data either way, and waiting for its delayed ACK would cost
        # every close ~40 ms.)
        live = [p for p in self._peers if p is not None and not p.gone]
        deadline = time.monotonic() + min(self.timeout_s, _CLOSE_DRAIN_S)
        reading = set(live)  # peers that may still send (no EOF yet)
        while live:
            waiting = []
            for p in live:
                if p in reading:
                    state = drain(p.sock)
                    if state < 0:
                        continue  # reset: nothing more can be delivered
                    if state == 0:
                        reading.discard(p)  # it stopped sending; it may still be reading
                if undelivered(p.sock):
                    waiting.append(p)
            live = waiting
            remaining = deadline - time.monotonic()
            if not live or remaining <= 0:
                break
            poll = select.poll()
            for p in live:
                if p in reading:
                    poll.register(p.fd, select.POLLIN)
            # acks do not wake a poll: look again every few ms
            poll.poll(min(remaining, 0.01) * 1000)
        peers = [p for p in self._peers if p is not None]
        for p in peers:
            with contextlib.suppress(OSError):
                p.sock.close()
            p.closed = p.gone = True
        self._by_fd.clear()
        self._wake_r.close()
        self._wake_w.close()
        self._inboxes = []
        for p in peers:
            for box in (p.tx_box, p.rx_box):
                if box is not None:
                    box.release()
            p.tx_box = p.rx_box = None
            if p.tx_ring is not None:
                with contextlib.suppress(BufferError):
                    p.tx_ring.close()
            p.rx_ring = p.tx_ring = None
        self._rings.drop_own()
