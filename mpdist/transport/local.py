"""LocalTransport: the transport API between ranks that are threads of one process.

The ranks meet through the group's (shared, in-process) store: rank 0 publishes a hub id,
and every rank attaches to the process-wide hub of that id. The receiver matches inbox
messages exactly as TcpTransport matches bytes from a socket, with the same header checks
and errors.

A send puts a *loan* of the sender's buffer in the receiver's inbox and is not done yet;
the receiver copies straight from the sender's buffer into the buffer of the receive it
matches (posted before or after the message came), which completes the send: one copy.
The sender copies a loan into a private buffer instead (the send is then done, and the
receiver later copies out of that buffer: two copies, the price of eager completion) only
when it must not wait for the receiver: when nothing but sends is left in its wait and the
receiver stashed the loan as early, or is not inside wait/test, or the payload is under
``_WAIT_MIN`` (where handing the GIL over twice costs more than the copy); and when a wait
fails or the transport closes (the caller gets its buffers back). So a sender never waits
for a receiver that is not already taking its data: two ranks that both send first still
cannot deadlock, and a send completes without the receiver posting anything.
"""

from __future__ import annotations

import threading
import uuid
from collections import deque
from typing import Any

from mpdist.transport.base import SendReq, Transport
from mpdist.transport.header import KIND_ERROR, MAGIC

__all__ = ["LocalTransport"]

_HUBS: dict[str, _Hub] = {}
_HUBS_LOCK = threading.Lock()

# loan states (guarded by the hub's loan_lock)
_LENT = 0  # data is the sender's buffer; the send is not done
_TAKING = 1  # the receiver is copying from the sender's buffer
_OWNED = 2  # data is a private copy; the send is done
_DONE = 3  # consumed or dropped; the send is done

# A sender left with nothing but a send to wait for waits for a receiver that is about to
# take the payload (saving the private copy) only when copying costs more than handing the
# GIL over twice (tens of microseconds); a smaller payload is copied out at once.
_WAIT_MIN = 256 << 10


class _Loan:
    """A payload in flight: the sender's buffer until taken or detached (see module doc)."""

    __slots__ = ("data", "dst", "lent", "req", "seen", "src", "state", "waited")

    def __init__(
        self, data: memoryview, req: SendReq, src: int, dst: int, lent: dict[SendReq, _Loan]
    ) -> None:
        self.data: Any = data
        self.req = req
        self.src = src
        self.dst = dst
        self.lent = lent  # the sender's loans not done yet, which this one leaves when done
        self.seen = False  # the receiver looked at it and stashed it: it will not take it soon
        self.waited = False  # the sender blocks until its state changes: wake it then
        self.state = _LENT


class _Hub:
    """Inboxes of every rank of one group; shared by the threads of the group."""

    def __init__(self, size: int) -> None:
        self.size = size
        self.inboxes: list[deque[tuple[int, tuple | None, Any]]] = [deque() for _ in range(size)]
        self.conds = [threading.Condition(threading.Lock()) for _ in range(size)]
        self.closed = [False] * size
        # threads of each rank inside wait()/test(): a loan to a busy rank is taken soon
        self.busy = [0] * size
        # Loan states. Lock order: a rank's cond, then loan_lock; nobody takes a cond while
        # holding loan_lock, nor a second cond while holding one.
        self.loan_lock = threading.Lock()
        self.refs = 0
        self.attached = 0  # ranks that ever attached: the hub lives until all came and went

    def deliver(self, dst: int, msg: tuple[int, tuple | None, Any]) -> bool:
        cond = self.conds[dst]
        with cond:
            if self.closed[dst]:
                return False
            self.inboxes[dst].append(msg)
            cond.notify()
        return True

    def wake(self, rank: int) -> None:
        cond = self.conds[rank]
        with cond:
            cond.notify_all()


class LocalTransport(Transport):
    """Ranks as threads: ``LocalTransport(store, rank, size, timeout_s)`` per thread, one store."""

    def __init__(
        self,
        store: Any,
        rank: int,
        size: int,
        timeout_s: float,
        *,
        rank_names: list[int] | None = None,
    ) -> None:
        super().__init__(rank, size, timeout_s, rank_names)
        if rank == 0:
            hub_id = uuid.uuid4().hex
            store.set("mpdist_local/hub", hub_id)
        else:
            raw = store.get("mpdist_local/hub")
            hub_id = raw.decode() if isinstance(raw, bytes) else raw
        with _HUBS_LOCK:
            hub = _HUBS.get(hub_id)
            if hub is None:
                hub = _HUBS[hub_id] = _Hub(size)
            hub.refs += 1
            hub.attached += 1
        self._hub_id = hub_id
        self._hub = hub
        self._inbox = hub.inboxes[rank]
        self._cond = hub.conds[rank]
        self._gone = [False] * size
        self._lent: dict[SendReq, _Loan] = {}  # our sends that are not done yet
        self._waiting: list | None = None  # the requests of the wait in progress

    # ------------------------------------------------------------------ sending
    def _post(self, peer: int, hdr: tuple, buf: Any, req: SendReq) -> None:
        if peer == self.rank or not 0 <= peer < self.size:
            raise ValueError(
                f"rank {self._n(self.rank)} cannot send to rank {self._n(peer)} (itself or not in group)"
            )
        if not buf.nbytes:
            if self._hub.deliver(peer, (self.rank, hdr, b"")):
                req.done = True
            else:
                self._gone[peer] = True
            return
        loan = _Loan(buf, req, self.rank, peer, self._lent)
        self._lent[req] = loan  # before the receiver can see it (it may take it at once)
        if not self._hub.deliver(peer, (self.rank, hdr, loan)):
            del self._lent[req]
            self._gone[peer] = True

    def _detach(self, loan: _Loan, force: bool) -> bool:
        """Copy a loan the receiver will not take soon into a private buffer (the send is
        then done); ``force``: whatever the receiver does. Call with loan_lock held. False
        while the receiver is (or may soon be) taking it: the loan is then marked waited."""
        state = loan.state
        if state == _LENT:
            hub = self._hub
            if (
                force
                or loan.seen
                or loan.data.nbytes < _WAIT_MIN
                or hub.busy[loan.dst] == 0
                or hub.closed[loan.dst]
            ):
                loan.data = memoryview(bytearray(loan.data))
                loan.state = _OWNED
                loan.req.done = True
                loan.lent.pop(loan.req, None)
                return True
        elif state != _TAKING:
            return True
        loan.waited = True
        return False

    def _settle(self) -> bool:
        """Before blocking in a wait whose unfinished requests are all sends: complete the
        sends whose receiver will not take them soon. True if one was completed."""
        reqs = self._waiting
        lent = self._lent
        if not reqs or not lent:
            return False
        pending = []
        for r in reqs:
            if not r.done:
                if type(r) is not SendReq:
                    return False  # we wait for data anyway: give the receivers time to take
                loan = lent.get(r)
                if loan is not None:
                    pending.append(loan)
        progressed = False
        if pending:
            with self._hub.loan_lock:
                for loan in pending:
                    if loan.state == _LENT and self._detach(loan, False):
                        progressed = True
        return progressed

    def _let_go(self, reqs: list | None) -> None:
        """The caller gets its buffers back (a failed wait, or close): detach the loans of
        ``reqs`` (None: all), waiting out a receiver in the middle of copying one."""
        lent = self._lent
        if not lent:
            return
        if reqs is None:
            loans = list(lent.values())
        else:
            loans = [loan for loan in map(lent.get, reqs) if loan is not None]
        cond = self._cond
        with cond:
            while loans:
                with self._hub.loan_lock:
                    loans = [loan for loan in loans if not self._detach(loan, True)]
                if loans:
                    # the receiver wakes us when it has finished copying (see _taken)
                    cond.wait(1.0)

    # ------------------------------------------------------------------ receiving
    def _take(self, loan: _Loan) -> Any:
        """Start copying out of ``loan``: its data, which stays valid until ``_taken``."""
        with self._hub.loan_lock:
            if loan.state == _LENT:
                loan.state = _TAKING
            return loan.data

    def _taken(self, loan: _Loan) -> None:
        """The copy out of ``loan`` is finished (or it was dropped): the send is done."""
        with self._hub.loan_lock:
            loan.state = _DONE
            loan.data = None
            loan.req.done = True
            waited = loan.waited
        loan.lent.pop(loan.req, None)
        if waited:
            self._hub.wake(loan.src)

    def _seen(self, loan: _Loan) -> None:
        """``loan`` was stashed (no receive for it yet): its sender may copy it out."""
        with self._hub.loan_lock:
            loan.seen = True
            waited = loan.waited and loan.state == _LENT
        if waited:
            self._hub.wake(loan.src)

    def _fill(self, req: Any, hdr: tuple, payload: Any, peer: int) -> None:
        if type(payload) is not _Loan:
            super()._fill(req, hdr, payload, peer)
            return
        data = self._take(payload)
        try:
            super()._fill(req, hdr, data, peer)  # size checks, then the one copy
        finally:
            self._taken(payload)

    def _progress(self, timeout_s: float) -> None:
        cond = self._cond
        with cond:
            if not self._inbox and self._abort_reason is None and not self._settle():
                cond.wait(timeout_s)
            msgs = list(self._inbox)
            self._inbox.clear()
        if self._abort_reason is not None:
            with cond:  # what we did not look at stays for close() to account for
                self._inbox.extendleft(reversed(msgs))
            self._check_abort()
        for i, (src, hdr, payload) in enumerate(msgs):
            if hdr is None:
                self._gone[src] = True
                continue
            loan = payload if type(payload) is _Loan else None
            try:
                req = None if hdr[1] == KIND_ERROR else self._on_header(src, hdr)
                if req is not None:
                    if loan is not None:
                        data = self._take(loan)
                        try:
                            req.buf[:] = data
                        finally:
                            self._taken(loan)
                    elif req.nbytes:
                        req.buf[:] = payload
                    req.done = True
                else:
                    self._on_stashed(src, hdr, payload)
                    if loan is not None:
                        self._seen(loan)
            except BaseException:
                if loan is not None:
                    self._taken(loan)  # a message that failed its checks is dropped
                # keep what we did not look at yet (the error is sticky anyway)
                with cond:
                    self._inbox.extendleft(reversed(msgs[i + 1 :]))
                raise

    # ------------------------------------------------------------------ waiting
    def _unfinished(self, reqs: list, op_name: str) -> bool:
        self._waiting = reqs  # what _progress may settle before it blocks
        return super()._unfinished(reqs, op_name)

    def _enter(self) -> None:
        with self._hub.loan_lock:
            self._hub.busy[self.rank] += 1

    def _leave(self) -> None:
        hub = self._hub
        with hub.loan_lock:
            hub.busy[self.rank] -= 1
            idle = hub.busy[self.rank] == 0
        if idle and self._inbox:
            # senders blocked on loans still in our inbox: we will not take them soon
            with self._cond:
                senders = {m[0] for m in self._inbox if type(m[2]) is _Loan and m[2].waited}
            for s in senders:
                hub.wake(s)

    def wait(self, reqs: list, op_name: str, timeout_s: float | None = None) -> None:
        """As :meth:`Transport.wait`; a failed wait detaches its sends (see module doc)."""
        self._enter()
        try:
            super().wait(reqs, op_name, timeout_s)
        except BaseException:
            self._let_go(reqs)
            raise
        finally:
            if self._waiting is reqs:
                self._waiting = None
            self._leave()

    def test(self, reqs: list, op_name: str) -> bool:
        """As :meth:`Transport.test`; a failed test detaches its sends (see module doc)."""
        self._enter()
        try:
            return super().test(reqs, op_name)
        except BaseException:
            self._let_go(reqs)
            raise
        finally:
            if self._waiting is reqs:
                self._waiting = None
            self._leave()

    # ------------------------------------------------------------------ the rest
    def _peer_closed(self, peer: int) -> bool:
        return self._gone[peer]

    def _wake(self) -> None:
        with self._cond:
            self._cond.notify_all()

    def _notify(self, peers: list[int], kind: int, text: str, origin: int, flags: int) -> None:
        payload = text.encode("utf-8", "replace")
        hdr = (MAGIC, KIND_ERROR, 0, kind, 0, flags, origin, 0, 0, 0, 0, 0, len(payload), 0)
        for peer in peers:
            self._hub.deliver(peer, (self.rank, hdr, payload))

    def _shutdown(self) -> None:
        hub = self._hub
        # our loans first: the peers still get what we sent (it precedes our farewell)
        self._let_go(None)
        with self._cond:
            hub.closed[self.rank] = True
            dropped = [m[2] for m in self._inbox]
            self._inbox.clear()
        # what was sent to us and never received: handed over and dropped, as if copied
        dropped += [payload for _, payload in self._stash.values()]
        dropped += [payload for _, _, payload in self._p2p_stash]
        self._stash.clear()
        self._p2p_stash.clear()
        for payload in dropped:
            if type(payload) is _Loan:
                self._taken(payload)
        for peer in range(self.size):
            if peer != self.rank:
                hub.deliver(peer, (self.rank, None, None))
        with _HUBS_LOCK:
            hub.refs -= 1
            if hub.refs <= 0 and hub.attached >= hub.size:
                _HUBS.pop(self._hub_id, None)
