"""The transport API shared by every transport: posting sends/receives, matching, waiting, errors.

A transport moves byte buffers between the ranks of one group. Algorithms post non-blocking
sends and receives (``isend``/``irecv`` for collective messages, ``isend_p2p``/``irecv_p2p``
for point-to-point ones) and then ``wait`` on them; waiting progresses *every* posted
operation at once, so a ring step (send right, receive left) or two ranks that both send
first can never deadlock. Incoming data nobody waits for yet is stashed.

Matching: collective messages are keyed by (peer, collective sequence number, step); the
header of each one is compared with what this rank is doing (op, reduce op, dtype, byte
count, shape, root), and any difference is a ``DistBackendError`` on every rank (the
detecting rank sends an ERROR message to its peers). Point-to-point messages are matched
by (peer, tag) in arrival order; ``src=None`` matches any peer.

Failures are sticky: after a mismatch, a dead peer, a timeout or ``abort()``, every pending
and later operation raises.

Errors travel with their cause: an ERROR message carries the rank that detected the error,
and a rank that fails because of a peer's ERROR passes it on (the same text and detecting
rank) to the other ranks of a collective at once. A failed rank that closes sends every
peer not told yet a farewell (an ERROR flagged FLAG_FAREWELL) that the peer keeps and raises
only where it would say "lost its connection" to that rank: a third rank learns why, and
its traffic with other ranks is not disturbed.
"""

from __future__ import annotations

import contextlib
import threading
import time
from collections import deque
from dataclasses import dataclass
from typing import TypeAlias

import numpy as np

from mpdist.errors import DistBackendError, DistError, DistNetworkError, RemoteOrigin
from mpdist.transport.header import (
    ERR_BACKEND,
    ERR_NETWORK,
    FLAG_FAREWELL,
    KIND_COLL,
    KIND_ERROR,
    KIND_P2P,
    MAGIC,
    Header,
    HeaderFields,
    describe_mismatch,
    dtype_name,
    op_name_of,
)

__all__ = ["Transport", "Collective", "SendReq", "RecvReq", "Payload", "as_bytes"]


# A payload that arrived before its receive was posted, kept until one is: bytes
# (LocalTransport's copies, empty payloads) or a memoryview of the array TcpTransport
# read it into (``arr.data``, whose ``obj`` is that array)
Payload: TypeAlias = bytes | memoryview


def as_bytes(array: np.ndarray) -> memoryview:
    """A writable flat byte view of a C-contiguous array, without copying."""
    # array.data is memoryview(array) (numpy's stubs declare the buffer protocol of an
    # ndarray only for Python >= 3.12, so memoryview(array) does not type-check here)
    try:
        return array.data.cast("B")
    except (TypeError, ValueError):
        # zero-size arrays and dtypes outside the buffer protocol
        if array.nbytes == 0:
            return memoryview(bytearray())
        return array.reshape(-1).view(np.uint8).data


@dataclass(slots=True)
class Collective:
    """The collective in progress, as :meth:`Transport.begin` entered it: what the header
    of every message of it must agree with (``Header`` fields of the same names)."""

    seq: int = 0
    op: int = 0
    redop: int = 0
    dtype: int = 0
    root: int = -1
    total: int = 0
    sig: int = 0
    op_name: str = ""


class SendReq:
    """A posted send; ``done`` once the payload has been handed to the peer or the kernel."""

    __slots__ = ("peer", "done")

    def __init__(self, peer: int) -> None:
        self.peer = peer
        self.done = False


class RecvReq:
    """A posted receive into ``buf``; ``done`` once filled; ``src`` is the sender."""

    __slots__ = ("peer", "buf", "nbytes", "done", "tag", "dtype", "src", "view", "lease")

    def __init__(self, peer: int | None, buf: memoryview, tag: int = 0, dtype: int = 0) -> None:
        self.peer = peer
        self.buf = buf
        self.nbytes = buf.nbytes
        self.done = False
        self.tag = tag
        self.dtype = dtype
        self.src = peer
        # borrowing receives (irecv_borrow): where the data is once done (``buf``, or a
        # transport buffer lent until Transport.release(req)), and what to give back
        self.view: memoryview | None = None
        self.lease: object = None


class Transport:
    """Base class of TcpTransport and LocalTransport: matching, waiting and error handling.

    Subclasses implement ``_post(peer, header_fields, buf, req)``, ``_progress(timeout_s)``,
    ``_peer_closed(peer)``, ``_notify(peers, err_kind, text, origin, flags)``, ``_wake()`` and
    ``_shutdown()``.
    """

    # Messages up to this many bytes may take :meth:`sendrecv`'s latency path: algorithms
    # exchange them one blocking ``sendrecv`` at a time rather than posting them all.
    latency_bytes = 0
    # Bytes of collective messages to one peer that can be in flight before more of them
    # take a slower road (TcpTransport: past the pair's shared ring, over TCP); 0: no such
    # limit. Algorithms that send long runs of chunks keep within it (Communicator.window).
    inflight_bytes = 0

    def __init__(
        self, rank: int, size: int, timeout_s: float, rank_names: list[int] | None = None
    ) -> None:
        if not isinstance(size, int) or size < 1:
            raise ValueError(f"transport size must be a positive int, got {size!r}")
        if not isinstance(rank, int) or not 0 <= rank < size:
            raise ValueError(f"transport rank must be in [0, {size}), got {rank!r}")
        self.rank = rank
        self.size = size
        # how ranks are named in error messages (e.g. global ranks of a subgroup)
        self.rank_names: list[int] | None = list(rank_names) if rank_names is not None else None
        self.timeout_s = float(timeout_s) if timeout_s and timeout_s > 0 else 1e9
        # the collective in progress: _coll, one record refilled by every begin() (no
        # allocation on the small-message path), or _idle between collectives, whose seq
        # (-1) matches no message (a header's seq is unsigned). Always a record, so that
        # isend/irecv/_on_header read it with no None check per message.
        self._coll = Collective()
        self._idle = Collective(seq=-1)
        self._cur = self._idle
        self._last_seq = 0
        self._history: deque[tuple[int, str]] = deque(maxlen=8)  # (seq, op name) for errors
        self._posted: dict[tuple[int, int, int], RecvReq] = {}
        self._stash: dict[tuple[int, int, int], tuple[Header, Payload]] = {}
        self._p2p_posted: list[RecvReq] = []
        self._p2p_stash: list[tuple[int, Header, Payload]] = []
        self._error: DistError | None = None
        # the error to pass on to peers (a mismatch or lost peer, ours or relayed; not an
        # abort), and the peers that know it already
        self._cause: DistError | None = None
        self._told: set[int] = set()
        self._farewell: dict[int, DistError] = {}  # peer -> why it left
        self._abort_reason: str | None = None
        self._closed = False
        # one user thread at a time; close() takes it to wait for a running op to leave
        self._lock = threading.RLock()

    # ------------------------------------------------------------------ collectives
    def begin(
        self,
        seq: int,
        op: int,
        redop: int,
        dtype: int,
        root: int,
        total: int,
        sig: int,
        op_name: str,
    ) -> None:
        """Enter collective number ``seq``; every collective message is checked against this."""
        if self._error is not None or self._abort_reason is not None:
            raise self._sticky()
        c = self._coll
        c.seq = seq
        c.op = op
        c.redop = redop
        c.dtype = dtype
        c.root = root
        c.total = total
        c.sig = sig
        c.op_name = op_name
        self._cur = c
        self._last_seq = seq
        self._history.append((seq, op_name))
        if self._stash:
            # a peer that ran ahead already sent data for this collective: check it now
            for (peer, _, _), (hdr, _) in list(self._stash.items()):
                if hdr.seq == seq:
                    try:
                        self._check_coll(peer, hdr)
                    except DistError as e:
                        self._fail(e, list(range(self.size)))
                        raise
                elif hdr.seq < seq:
                    err = self._stale(peer, hdr)
                    self._fail(err, list(range(self.size)))
                    raise err

    def end(self) -> None:
        """Leave the current collective."""
        self._cur = self._idle

    def _in_collective(self) -> bool:
        """Whether a collective is in progress (between begin() and end())."""
        return self._cur is not self._idle

    def coll_fields(self, step: int, nbytes: int) -> HeaderFields:
        """The header fields of message ``step`` (``nbytes`` of payload) of the current
        collective: what this rank sends, and what it expects from a peer."""
        c = self._cur
        return (
            MAGIC, KIND_COLL, c.redop, c.op, c.dtype, 0, c.root, 0,
            step, c.seq, c.total, c.sig, nbytes, 0,
        )  # fmt: skip

    def isend(self, peer: int, step: int, buf: memoryview) -> SendReq:
        """Post message ``step`` of the current collective to ``peer``."""
        req = SendReq(peer)
        self._post(peer, self.coll_fields(step, buf.nbytes), buf, req)
        return req

    def irecv(self, peer: int, step: int, buf: memoryview) -> RecvReq:
        """Post the receive of message ``step`` of the current collective from ``peer``."""
        key = (peer, self._cur.seq, step)
        req = RecvReq(peer, buf)
        if self._stash:
            ent = self._stash.pop(key, None)
            if ent is not None:
                hdr, payload = ent
                self._fill(req, hdr, payload, peer)
                return req
        self._posted[key] = req
        return req

    def irecv_borrow(self, peer: int, step: int, buf: memoryview) -> RecvReq:
        """Like :meth:`irecv`, but the transport may lend its own copy of the data instead of
        filling ``buf``: read ``req.view`` once done, then call :meth:`release`."""
        req = self.irecv(peer, step, buf)
        req.view = buf
        return req

    def release(self, req: RecvReq) -> None:
        """Give back what a borrowing receive lent (no-op when it filled its own buffer)."""
        lease = req.lease
        req.view = None
        if lease is not None:
            req.lease = None
            self._give_back(lease)

    def _give_back(self, lease: object) -> None:
        """Subclass hook for :meth:`release`."""

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
        """Blocking: send message ``step`` of the current collective to ``dest`` and receive
        message ``step`` from ``source`` into ``recv`` (either side None: none), as
        ``MPI_Sendrecv``. The same messages and checks as :meth:`isend`, :meth:`irecv` and
        :meth:`wait`; a transport may take a faster way for small ones."""
        reqs: list[RecvReq | SendReq] = []
        if source is not None:
            assert recv is not None
            reqs.append(self.irecv(source, step, recv))
        if dest is not None:
            assert send is not None
            reqs.append(self.isend(dest, step, send))
        self.wait(reqs, op_name, timeout_s)

    # ------------------------------------------------------------------ point to point
    def isend_p2p(self, peer: int, tag: int, buf: memoryview, dtype: int, op: int) -> SendReq:
        """Post a point-to-point message to ``peer`` with ``tag``."""
        if self._error is not None or self._abort_reason is not None:
            raise self._sticky()
        n = buf.nbytes
        fields = (MAGIC, KIND_P2P, 0, op, dtype, 0, -1, tag, 0, 0, n, 0, n, 0)
        req = SendReq(peer)
        self._post(peer, fields, buf, req)
        return req

    def irecv_p2p(self, src: int | None, tag: int, buf: memoryview, dtype: int) -> RecvReq:
        """Post a point-to-point receive from ``src`` (None: any peer) with ``tag``."""
        if self._error is not None or self._abort_reason is not None:
            raise self._sticky()
        req = RecvReq(src, buf, tag, dtype)
        for i, (peer, hdr, payload) in enumerate(self._p2p_stash):
            if hdr.tag == tag and (src is None or src == peer):
                del self._p2p_stash[i]
                self._fill(req, hdr, payload, peer)
                return req
        self._p2p_posted.append(req)
        return req

    # ------------------------------------------------------------------ waiting
    def wait(self, reqs: list, op_name: str, timeout_s: float | None = None) -> None:
        """Progress all posted operations until every request in ``reqs`` is done.

        Raises DistBackendError on mismatch, abort or timeout ("timed out"), DistNetworkError
        when a peer we wait for has gone away.
        """
        for r in reqs:
            if not r.done:
                break
        else:
            return
        if self._error is not None:
            raise self._sticky()
        timeout = self.timeout_s if timeout_s is None or timeout_s <= 0 else timeout_s
        deadline = time.monotonic() + timeout
        try:
            with self._lock:
                while self._unfinished(reqs, op_name):
                    remaining = deadline - time.monotonic()
                    if remaining <= 0:
                        raise DistBackendError(
                            f"{op_name}: rank {self._n(self.rank)} timed out after {timeout:g} s "
                            f"waiting for {self._pending_peers(reqs)}"
                        )
                    self._progress(remaining)
        except DistError as e:
            self._record(e, reqs)
            raise

    def test(self, reqs: list, op_name: str) -> bool:
        """Progress all posted operations once, without blocking; True if every request in
        ``reqs`` is done. Raises as :meth:`wait` does, except that it never times out."""
        for r in reqs:
            if not r.done:
                break
        else:
            return True
        try:
            with self._lock:
                if not self._unfinished(reqs, op_name):
                    return True
                self._progress(0.0)
                return not self._unfinished(reqs, op_name)
        except DistError as e:
            self._record(e, reqs)
            raise

    def _unfinished(self, reqs: list, op_name: str) -> bool:
        """True while a request in ``reqs`` is not done; raises if the transport has failed
        or a peer one of them waits for has gone (its socket no longer wakes us up)."""
        if self._error is not None or self._abort_reason is not None:
            raise self._sticky()
        pending = False
        for r in reqs:
            if not r.done:
                pending = True
                peer = r.peer
                if peer is None:
                    if all(self._peer_closed(p) for p in range(self.size) if p != self.rank):
                        # an ERROR that explains it goes first, and what the peers sent
                        # before they left (a mailbox is not read at EOF) may complete it
                        self._progress(0.0)
                        if not r.done:
                            raise self._lost(op_name, None)
                elif self._peer_closed(peer):
                    self._progress(0.0)
                    if not r.done:
                        raise self._lost(op_name, peer)
        return pending

    def _record(self, e: DistError, reqs: list) -> None:
        """Make the failure ``e`` of a wait on ``reqs`` sticky and pass it on to the peers
        that must hear of it."""
        if e is self._error or self._error is not None:
            return
        remote = e.remote
        if remote is not None:
            self._error = self._cause = e
            self._told.add(remote.sender)
            if self._in_collective():
                # every rank takes part in a collective: tell the others now, the
                # rank that detected it may have told only some (or gone meanwhile)
                self._tell(list(range(self.size)))
        elif self._abort_reason is not None:
            self._error = e
        elif self._in_collective():
            self._fail(e, list(range(self.size)))
        else:
            self._fail(e, sorted({r.peer for r in reqs if r.peer is not None}))

    def _n(self, rank: int) -> int:
        """The name of transport rank ``rank`` in messages."""
        names = self.rank_names
        return names[rank] if names is not None else rank

    def _pending_peers(self, reqs: list) -> str:
        peers = sorted({r.peer for r in reqs if not r.done and r.peer is not None})
        if any(not r.done and r.peer is None for r in reqs):
            return "any rank"
        if len(peers) == 1:
            return f"rank {self._n(peers[0])}"
        return "ranks " + ", ".join(str(self._n(q)) for q in peers)

    def _lost(self, op_name: str, peer: int | None) -> DistError:
        farewell = self._farewell
        if farewell:
            # the peer said why it left: that is the error (with its cause), not the loss
            err = farewell.get(peer) if peer is not None else farewell[min(farewell)]
            if err is not None:
                return err
        who = f"rank {self._n(peer)}" if peer is not None else "every peer"
        return DistNetworkError(
            f"{op_name}: rank {self._n(self.rank)} lost its connection to {who} "
            f"(the peer exited, crashed or closed its process group)"
        )

    # ------------------------------------------------------------------ errors
    def abort(self, reason: str) -> None:
        """From any thread: make every pending and future operation raise DistBackendError(reason)."""
        if self._abort_reason is None:
            self._abort_reason = str(reason)
        self._wake()

    def _check_abort(self) -> None:
        if self._abort_reason is not None:
            if self._error is None:
                self._error = DistBackendError(self._abort_reason)
            raise self._sticky()

    def _sticky(self) -> DistError:
        """A fresh copy of the sticky error (so tracebacks do not pile up on one object)."""
        if self._error is None:
            if self._abort_reason is not None:
                self._error = DistBackendError(self._abort_reason)
            else:
                self._error = DistBackendError(f"rank {self._n(self.rank)}: transport is closed")
        err = self._error
        return type(err)(*err.args)

    def _fail(self, exc: DistError, peers: list[int]) -> None:
        """Record a sticky error and tell ``peers`` so that they raise too."""
        if self._error is not None:
            return
        self._error = self._cause = exc
        self._tell(peers)

    def _tell(self, peers: list[int], flags: int = 0) -> None:
        """Send the cause of our failure to those of ``peers`` that do not know it yet
        (``flags``: FLAG_FAREWELL when we are leaving)."""
        exc = self._cause
        if exc is None:
            return
        remote = exc.remote
        origin = remote.origin if remote is not None else self.rank
        told = self._told
        targets = [
            p
            for p in peers
            if p != self.rank and p != origin and p not in told and not self._peer_closed(p)
        ]
        if not targets:
            return
        told.update(targets)
        kind = ERR_NETWORK if isinstance(exc, DistNetworkError) else ERR_BACKEND
        text = (remote.text if remote is not None else None) or str(exc)
        # best effort: the peer may be gone as well
        with contextlib.suppress(Exception):
            self._notify(targets, kind, text, origin, flags)

    def _remote_error(self, peer: int, hdr: Header, payload: Payload) -> DistError:
        text = bytes(payload).decode("utf-8", "replace")
        cls = DistNetworkError if hdr.op == ERR_NETWORK else DistBackendError
        # the root field of an ERROR names the rank that detected it (-1: the sender)
        origin = hdr.root if 0 <= hdr.root < self.size and hdr.root != self.rank else peer
        me = self._n(self.rank)
        if origin == peer:
            where = f"reported by rank {self._n(peer)} to rank {me}"
        else:
            where = (
                f"reported by rank {self._n(origin)} to rank {me}, relayed by rank {self._n(peer)}"
            )
        err = cls(f"{text} ({where})")
        err.remote = RemoteOrigin(text, origin, peer)
        return err

    def _check_coll(self, peer: int, hdr: Header) -> None:
        c = self._cur
        if (
            hdr.op != c.op
            or hdr.redop != c.redop
            or hdr.dtype != c.dtype
            or hdr.root != c.root
            or hdr.total != c.total
            or hdr.sig != c.sig
        ):
            raise self._mismatch(peer, hdr)

    def _mismatch(self, peer: int, hdr: Header) -> DistBackendError:
        c = self._cur
        me, them = f"rank {self._n(self.rank)}", f"rank {self._n(peer)}"
        mine = (c.op, c.redop, c.dtype, c.root, c.total, c.sig)
        theirs = (hdr.op, hdr.redop, hdr.dtype, hdr.root, hdr.total, hdr.sig)
        return DistBackendError(
            f"{c.op_name}: mismatch between {me} and {them} in collective #{c.seq}: "
            + describe_mismatch(me, them, c.op_name, mine, theirs)
        )

    def _stale(self, peer: int, hdr: Header) -> DistBackendError:
        theirs = op_name_of(hdr.op)
        mine = next((name for seq, name in self._history if seq == hdr.seq), None)
        if mine is not None and mine != theirs:
            what = (
                f"rank {self._n(self.rank)} called {mine} but rank {self._n(peer)} called {theirs}"
            )
        else:
            what = "the ranks called different collectives or disagree on the root"
        return DistBackendError(
            f"{mine or theirs}: mismatch between rank {self._n(self.rank)} and rank {self._n(peer)} in collective "
            f"#{hdr.seq}: {what} (rank {self._n(peer)} sent data that rank {self._n(self.rank)} did not expect)"
        )

    def _size_mismatch(self, req: RecvReq, hdr: Header, peer: int) -> DistBackendError:
        if hdr.kind == KIND_P2P:
            return DistBackendError(
                f"recv: rank {self._n(self.rank)} posted a receive of {req.nbytes} bytes "
                f"({dtype_name(req.dtype)}) with tag {req.tag} but rank {self._n(peer)} sent "
                f"{hdr.nbytes} bytes ({dtype_name(hdr.dtype)})"
            )
        name = self._cur.op_name if self._in_collective() else op_name_of(hdr.op)
        return DistBackendError(
            f"{name}: mismatch between rank {self._n(self.rank)} and rank {self._n(peer)}: rank {self._n(self.rank)} "
            f"expected a message of {req.nbytes} bytes but rank {self._n(peer)} sent {hdr.nbytes} bytes"
        )

    # ------------------------------------------------------------------ matching
    def _on_header(self, peer: int, hdr: Header) -> RecvReq | None:
        """Where an incoming payload goes: a posted request, or None (stash it)."""
        kind = hdr.kind
        if kind == KIND_COLL:
            seq = hdr.seq
            c = self._cur
            if seq == c.seq:  # never between collectives: _idle.seq is -1
                # _check_coll, inline: this runs for every collective message
                if (
                    hdr.op != c.op
                    or hdr.redop != c.redop
                    or hdr.dtype != c.dtype
                    or hdr.root != c.root
                    or hdr.total != c.total
                    or hdr.sig != c.sig
                ):
                    raise self._mismatch(peer, hdr)
                req = self._posted.pop((peer, seq, hdr.step), None)
                if req is not None and req.nbytes != hdr.nbytes:
                    raise self._size_mismatch(req, hdr, peer)
                return req
            if seq <= self._last_seq:
                raise self._stale(peer, hdr)
            return None
        if kind == KIND_P2P:
            tag = hdr.tag
            for i, req in enumerate(self._p2p_posted):
                if req.tag == tag and (req.peer is None or req.peer == peer):
                    del self._p2p_posted[i]
                    if req.nbytes != hdr.nbytes or (
                        req.dtype and hdr.dtype and req.dtype != hdr.dtype
                    ):
                        raise self._size_mismatch(req, hdr, peer)
                    req.src = peer
                    return req
            return None
        return None

    def _on_stashed(self, peer: int, hdr: Header, payload: Payload) -> None:
        """A whole payload arrived that had no posted request when its header came."""
        kind = hdr.kind
        if kind == KIND_COLL:
            key = (peer, hdr.seq, hdr.step)
            req = self._posted.pop(key, None)
            if req is not None:
                self._fill(req, hdr, payload, peer)
            else:
                self._stash[key] = (hdr, payload)
        elif kind == KIND_P2P:
            req = self._on_header(peer, hdr)
            if req is not None:
                self._fill(req, hdr, payload, peer)
            else:
                self._p2p_stash.append((peer, hdr, payload))
        elif kind == KIND_ERROR:
            err = self._remote_error(peer, hdr, payload)
            if hdr.flags & FLAG_FAREWELL:
                self._farewell.setdefault(peer, err)
            else:
                raise err

    def _fill(self, req: RecvReq, hdr: Header, payload: Payload, peer: int) -> None:
        self._check_size(req, hdr, peer)
        if req.nbytes:
            req.buf[:] = payload
            self._recycle(payload)
        req.src = peer
        req.done = True

    def _check_size(self, req: RecvReq, hdr: Header, peer: int) -> None:
        """Fail (on every rank of a collective) if the stashed message ``hdr`` does not fit
        the receive ``req`` it matched."""
        if req.nbytes != hdr.nbytes or (
            hdr.kind == KIND_P2P and req.dtype and hdr.dtype and req.dtype != hdr.dtype
        ):
            err = self._size_mismatch(req, hdr, peer)
            self._fail(err, list(range(self.size)) if self._in_collective() else [peer])
            raise err

    def _recycle(self, payload: Payload) -> None:
        """A stashed payload has been copied out; a subclass may reuse its buffer."""

    # ------------------------------------------------------------------ lifecycle
    def close(self) -> None:
        """Close every connection (idempotent); pending operations of other threads raise."""
        if self._closed:
            return
        if self._abort_reason is None:
            self._abort_reason = f"rank {self._n(self.rank)}: transport was closed"
            self._wake()
        # wait (bounded) for a thread inside wait() to leave before tearing sockets down
        got = self._lock.acquire(timeout=5.0)
        try:
            if self._closed:
                return
            self._closed = True
            if got:
                # leaving after a failure: the peers not told yet learn why before they see
                # us go (the message precedes our end of the connection)
                self._tell(list(range(self.size)), FLAG_FAREWELL)
            self._shutdown()
        finally:
            if got:
                self._lock.release()

    def __enter__(self) -> Transport:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # ------------------------------------------------------------------ subclass hooks
    def _post(self, peer: int, fields: HeaderFields, buf: memoryview, req: SendReq) -> None:
        """Send ``buf`` to ``peer`` behind the header ``fields``; ``req.done`` once sent."""
        raise NotImplementedError

    def _progress(self, timeout_s: float) -> None:
        raise NotImplementedError

    def _peer_closed(self, peer: int) -> bool:
        raise NotImplementedError

    def _notify(self, peers: list[int], kind: int, text: str, origin: int, flags: int) -> None:
        raise NotImplementedError

    def _wake(self) -> None:
        raise NotImplementedError

    def _shutdown(self) -> None:
        raise NotImplementedError
