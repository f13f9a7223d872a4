"""Mailboxes: a pair's collective messages through shared memory, with no system call.

A small collective over loopback TCP spends most of its time in the kernel: a send and a
receive cost microseconds each, and a blocked receiver tens more to wake. Between two
processes of one host a shared-memory queue moves the same message in well under a
microsecond, which is what brings a small collective near MPI's speed.

A mailbox is a single-producer single-consumer queue of ``SLOTS`` fixed-size slots, kept in
the ring file the pair already shares (``transport.shm``, in front of the ring's data). A
record is a message header (``transport.header``) and, when it fits (``INLINE_MAX``), the
payload inline; a bigger payload waits in the ring and the header says where. The sender
writes a record, then publishes it by storing the new ``head``; the receiver reads records
in order and stores ``tail``. Each counter has one writer. x86-64 makes stores visible in
program order, so a published head means a complete record: mailboxes are used only there
(:data:`SUPPORTED`); elsewhere everything stays on TCP.

Only collective messages travel here: they are matched by (peer, collective, step), so they
may overtake messages on the TCP connection. Point-to-point messages, matched in arrival
order, and errors stay on TCP.

A receiver that stops spinning sets ``asleep`` and looks once more before it blocks in
``poll``; a sender that finds ``asleep`` set after publishing sends a WAKE header on the TCP
connection, which ends that ``poll``. Each side's store must be visible before its load of
the other side's counter (else both can miss each other): :func:`fence` between them.
"""

from __future__ import annotations

import os
import platform
import threading
from time import monotonic as _monotonic

from mpdist.transport.header import HEADER, HeaderFields

__all__ = ["Mailbox", "SUPPORTED", "INLINE_MAX", "RECORD_HEAD", "BYTES", "fence"]

SLOTS = 32
SLOT = 4096
# How many times a spin looks between two sched_yield calls (about 2 us together). Fewer
# looks per yield measured faster at 2 ranks and at 4 ranks on 2 cores (4 B all_reduce:
# 64 looks 23-25 / 128-160 us, 8 looks 21-22 / 103-125 us): a peer that shares the core
# runs sooner, and a yield with nobody waiting costs a system call only.
TURNS = 8
RECORD_HEAD = 64  # bytes of a slot before its inline payload (the header, padded)
INLINE_MAX = SLOT - RECORD_HEAD  # the largest payload carried in the slot itself
# counters, each in its own cache line: head (sender's), tail and asleep (receiver's)
_HEAD, _TAIL, _ASLEEP = 0, 8, 16
_SLOTS_AT = 192
BYTES = _SLOTS_AT + SLOTS * SLOT  # the mailbox's share of a ring file

# Stores become visible in program order (TSO) on x86-64 only; MPDIST_MAILBOX=0 turns the
# sending side off (receivers always read their mailboxes, so ranks may differ in this).
SUPPORTED = platform.machine().lower() in ("x86_64", "amd64") and (
    os.environ.get("MPDIST_MAILBOX", "1") != "0"
)

_fence_lock = threading.Lock()
_pack_into = HEADER.pack_into
_unpack_from = HEADER.unpack_from


def _fresh_fence_lock() -> None:
    # A child forked while another thread of its parent was inside fence() would find the
    # lock held for ever.
    global _fence_lock
    _fence_lock = threading.Lock()


os.register_at_fork(after_in_child=_fresh_fence_lock)


def fence() -> None:
    """A full memory barrier: an uncontended lock's atomic read-modify-writes (``lock``-
    prefixed on x86-64) keep a store from passing the load after it."""
    _fence_lock.acquire()
    _fence_lock.release()


def _spin(words: memoryview, index: int, value: int, spin_s: float) -> bool:
    """Wait up to ``spin_s`` seconds until ``words[index]`` (a counter the other side
    advances) is not ``value``: looking ``TURNS`` times between two ``sched_yield`` calls,
    so that a peer sharing our core runs meanwhile. Whether it moved."""
    end = 0.0
    while True:
        for _ in range(TURNS):  # noqa: B007 - a bounded spin
            if words[index] != value:
                return True
        now = _monotonic()
        if not end:
            end = now + spin_s
        elif now >= end:
            return False
        os.sched_yield()


class Mailbox:
    """One direction of a pair's mailbox, over ``region`` (``BYTES`` bytes of a ring file).

    Sender: ``off = box.slot()`` (None when full), write the record at ``box.slots[off:]``,
    then ``box.publish()``. Receiver: while ``box.pending()``, read the record at
    ``box.slots[box.next_offset():]``, then ``box.consumed()``.
    """

    __slots__ = ("_words", "slots", "_count")

    def __init__(self, region: memoryview) -> None:
        if region.nbytes < BYTES:
            raise ValueError(f"a mailbox needs {BYTES} bytes, got {region.nbytes}")
        self._words = region[:_SLOTS_AT].cast("q")
        self.slots = region[_SLOTS_AT:BYTES]
        self._count = 0  # records written (sender) or read (receiver)

    # ------------------------------------------------------------------ sender
    def slot(self) -> int | None:
        """Offset in :attr:`slots` of the next record to write, or None while the queue is full."""
        n = self._count
        if n - self._words[_TAIL] >= SLOTS:
            return None
        return (n % SLOTS) * SLOT

    def publish(self) -> bool:
        """Make the record written at :meth:`slot` visible; True if the receiver sleeps
        (then it must be woken)."""
        self._count += 1
        words = self._words
        words[_HEAD] = self._count
        fence()
        return words[_ASLEEP] != 0

    def room(self, spin_s: float) -> bool:
        """Wait up to ``spin_s`` seconds (see :func:`_spin`) for the receiver to free a
        slot of a full queue; whether there is room now."""
        return _spin(self._words, _TAIL, self._count - SLOTS, spin_s)

    def put(self, fields: HeaderFields, payload: memoryview) -> bool | None:
        """Write and publish a record of header ``fields`` with ``payload`` inline (at most
        ``INLINE_MAX`` bytes) in one call: the latency path's :meth:`slot` and
        :meth:`publish`. None while the queue is full; else True if the receiver sleeps."""
        n = self._count
        words = self._words
        if n - words[_TAIL] >= SLOTS:
            return None
        slots = self.slots
        off = (n % SLOTS) * SLOT
        _pack_into(slots, off, *fields)
        size = payload.nbytes
        if size:
            slots[off + RECORD_HEAD : off + RECORD_HEAD + size] = payload
        n += 1
        self._count = n
        words[_HEAD] = n
        lock = _fence_lock  # fence(), inline: this runs for every small message
        lock.acquire()
        lock.release()
        return words[_ASLEEP] != 0

    # ------------------------------------------------------------------ receiver
    def arrived(self, spin_s: float) -> bool:
        """Wait up to ``spin_s`` seconds for the next record (see :func:`_spin`); whether
        one is there (at :meth:`next_offset`)."""
        return _spin(self._words, _HEAD, self._count, spin_s)

    def take(self, expected: HeaderFields, into: memoryview, spin_s: float) -> bool:
        """Wait as :meth:`arrived` does for the next record; if its header is ``expected``,
        copy its inline payload into ``into`` (``into.nbytes`` bytes), consume it and
        return True. False if none came, or the next record is another one (it stays for
        the reader of :meth:`pending`, who says what is wrong with it)."""
        n = self._count
        if self._words[_HEAD] == n and not self.arrived(spin_s):
            return False
        slots = self.slots
        off = (n % SLOTS) * SLOT
        if _unpack_from(slots, off) != expected:
            return False
        size = into.nbytes
        if size:
            into[:] = slots[off + RECORD_HEAD : off + RECORD_HEAD + size]
        n += 1
        self._count = n
        self._words[_TAIL] = n
        return True

    def pending(self) -> bool:
        """Whether a record is waiting."""
        return self._words[_HEAD] != self._count

    def next_offset(self) -> int:
        """Offset in :attr:`slots` of the next record to read."""
        return (self._count % SLOTS) * SLOT

    def consumed(self) -> None:
        """The record at :meth:`next_offset` has been read: its slot may be written again."""
        self._count += 1
        self._words[_TAIL] = self._count

    def sleep(self, asleep: bool) -> None:
        """Say whether the receiver is about to block (then senders wake it over TCP)."""
        self._words[_ASLEEP] = int(asleep)

    def release(self) -> None:
        """Drop the views of the region (before the file's mapping closes)."""
        self._words.release()
        self.slots.release()
