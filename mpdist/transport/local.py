"""LocalTransport: the transport API between ranks that are threads of one process.

The ranks meet through the group's (shared, in-process) store: rank 0 publishes a hub id,
and every rank attaches to the process-wide hub of that id. A send copies the payload into
the receiver's inbox (so sends complete at once and two ranks sending first cannot
deadlock); the receiver matches inbox messages exactly as TcpTransport matches bytes from
a socket, with the same header checks and errors. A borrowing receive (what the
reductions post) reads that copy in place, so a reduced payload is copied once; a plain
receive copies it into its buffer.
"""

from __future__ import annotations

import threading
import uuid
from collections import deque
from typing import Any

from mpdist.transport.base import RecvReq, SendReq, Transport
from mpdist.transport.header import KIND_ERROR, MAGIC, Header, HeaderFields

__all__ = ["LocalTransport"]

_HUBS: dict[str, _Hub] = {}
_HUBS_LOCK = threading.Lock()


class _Hub:
    """Inboxes of every rank of one group; shared by the threads of the group."""

    def __init__(self, size: int) -> None:
        self.size = size
        # messages: (sender, header, payload); (sender, None, None) says it closed
        self.inboxes: list[deque[tuple[int, Header | None, Any]]] = [deque() for _ in range(size)]
        # an inbox's lock and the condition on it: the lock is taken directly (a C context
        # manager; the Condition's own __enter__/__exit__ are Python calls), and an RLock
        # makes Condition.notify's ownership check a C call too
        self.locks = [threading.RLock() for _ in range(size)]
        self.conds = [threading.Condition(lock) for lock in self.locks]
        self.closed = [False] * size
        self.refs = 0
        self.attached = 0  # ranks that ever attached: the hub lives until all came and went

    def deliver(self, dst: int, msg: tuple[int, Header | None, Any]) -> bool:
        with self.locks[dst]:
            if self.closed[dst]:
                return False
            self.inboxes[dst].append(msg)
            self.conds[dst].notify()
        return True


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
        self._lock_inbox = hub.locks[rank]
        self._cond = hub.conds[rank]
        self._gone = [False] * size

    def _post(self, peer: int, fields: HeaderFields, buf: Any, req: SendReq) -> None:
        if peer == self.rank or not 0 <= peer < self.size:
            raise ValueError(
                f"rank {self._n(self.rank)} cannot send to rank {self._n(peer)} (itself or not in group)"
            )
        if self._hub.deliver(peer, (self.rank, Header(*fields), bytes(buf))):
            req.done = True
        else:
            self._gone[peer] = True

    def irecv_borrow(self, peer: int, step: int, buf: memoryview) -> RecvReq:
        """A receive that lends the payload the sender copied (immutable, owned by the
        message) instead of copying it again into ``buf``: one copy per payload."""
        if self._stash:
            ent = self._stash.pop((peer, self._cur.seq, step), None)
            if ent is not None:
                hdr, payload = ent
                req = RecvReq(peer, buf)
                self._check_size(req, hdr, peer)
                req.view = memoryview(payload)
                req.done = True
                return req
        return super().irecv_borrow(peer, step, buf)

    def _progress(self, timeout_s: float) -> None:
        with self._lock_inbox:
            if not self._inbox and self._abort_reason is None:
                self._cond.wait(timeout_s)
            msgs = list(self._inbox)
            self._inbox.clear()
        if self._abort_reason is not None:
            self._check_abort()
        for i, (src, hdr, payload) in enumerate(msgs):
            if hdr is None:
                self._gone[src] = True
                continue
            try:
                req = None if hdr.kind == KIND_ERROR else self._on_header(src, hdr)
                if req is not None:
                    if req.view is not None:  # a borrowing receive reads the sent copy
                        req.view = memoryview(payload)
                    elif req.nbytes:
                        req.buf[:] = payload
                    req.done = True
                else:
                    self._on_stashed(src, hdr, payload)
            except BaseException:
                # keep what we did not look at yet (the error is sticky anyway)
                with self._lock_inbox:
                    self._inbox.extendleft(reversed(msgs[i + 1 :]))
                raise

    def _peer_closed(self, peer: int) -> bool:
        return self._gone[peer]

    def _wake(self) -> None:
        with self._lock_inbox:
            self._cond.notify_all()

    def _notify(self, peers: list[int], kind: int, text: str, origin: int, flags: int) -> None:
        payload = text.encode("utf-8", "replace")
        n = len(payload)
        hdr = Header(MAGIC, KIND_ERROR, 0, kind, 0, flags, origin, 0, 0, 0, 0, 0, n, 0)
        for peer in peers:
            self._hub.deliver(peer, (self.rank, hdr, payload))

    def _shutdown(self) -> None:
        hub = self._hub
        with self._lock_inbox:
            hub.closed[self.rank] = True
            self._inbox.clear()
        for peer in range(self.size):
            if peer != self.rank:
                hub.deliver(peer, (self.rank, None, None))
        with _HUBS_LOCK:
            hub.refs -= 1
            if hub.refs <= 0 and hub.attached >= hub.size:
                _HUBS.pop(self._hub_id, None)
