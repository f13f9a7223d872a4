"""Shared-memory rings that carry big payloads between two processes of one host.

Loopback TCP costs a copy into the kernel, protocol work and a copy out; a shared ring costs
one copy in and one copy out. TcpTransport keeps every header on the TCP connection (which
gives ordering, wakeups and error detection) and, for a big payload, puts the bytes in the
ring it shares with that peer instead of on the wire; the header says so and where.

One ring per direction and pair, created (and kept mapped until close) by the receiver as a
file in /dev/shm; the sender maps it and unlinks it, the receiver unlinks it too on close,
whichever comes first, so nothing outlives the transport; files left by a process that was
killed are swept (their name carries the owner's pid) when the next transport starts.

Allocation is FIFO. Every allocation has a number (its count since the ring was made), which
the header announcing the payload carries beside its offset (:func:`ring_aux`): the receiver
releases payloads by number, in whatever order their headers arrive (on TCP or in the pair's
mailbox, ``transport.mailbox``), and publishes how many leading allocations it has released;
the sender reuses only their space. A payload that does not fit goes over TCP as usual.

A ring file may hold more in front of the ring's data (``front`` bytes: the pair's mailbox).
"""

from __future__ import annotations

import contextlib
import ctypes
import mmap
import os
import threading
from collections import deque

import numpy as np

__all__ = ["Ring", "ring_aux", "shm_dir", "ring_path", "sweep_stale_rings", "copy_bytes"]

_CTRL = 64  # bytes in front of the data: int64 "consumed" counter, own cache line
_OFFSET_BITS = 32  # a header's aux field: the payload's offset, then its allocation number
_OFFSET_MASK = (1 << _OFFSET_BITS) - 1


def ring_aux(offset: int, number: int) -> int:
    """The header ``aux`` field announcing allocation ``number`` at ``offset`` of a ring."""
    return offset | number << _OFFSET_BITS


def split_aux(aux: int) -> tuple[int, int]:
    """Inverse of :func:`ring_aux`: (offset, allocation number)."""
    return aux & _OFFSET_MASK, aux >> _OFFSET_BITS


def shm_dir() -> str | None:
    """The directory for ring files, or None when shared memory is unavailable or disabled."""
    if os.environ.get("MPDIST_SHM", "1") == "0":
        return None
    d = "/dev/shm"
    return d if os.path.isdir(d) and os.access(d, os.W_OK) else None


def ring_path(directory: str, owner_pid: int, gid: bytes, src: int, dst: int) -> str:
    """File of the ring carrying src's payloads to dst; created by dst, process ``owner_pid``."""
    return os.path.join(directory, f"mpdist-{owner_pid}-{gid.hex()}-{src}-{dst}")


def sweep_stale_rings(directory: str) -> None:
    """Remove ring files whose owner process is gone (it was killed before cleaning up)."""
    try:
        names = os.listdir(directory)
    except OSError:
        return
    for name in names:
        parts = name.split("-")
        if len(parts) != 5 or parts[0] != "mpdist" or not parts[1].isdigit():
            continue
        pid = int(parts[1])
        try:
            os.kill(pid, 0)
            continue  # alive (or not ours to judge)
        except ProcessLookupError:
            pass
        except OSError:
            continue
        with contextlib.suppress(OSError):
            os.unlink(os.path.join(directory, name))


# glibc's memcpy (``rep movsb``) runs 10-20x slower when the destination lies 1 to 31 bytes
# past the source modulo a page (4K aliasing: every load waits on the store before it),
# for copies from a few KiB up to a few hundred KiB: a 64 KiB copy took 36 us, not 2.
# A ring's payload lands wherever its allocation falls, and a user's array wherever
# numpy's allocator put it (16 bytes past a page, for a big one), so ring copies meet that
# distance now and then: they go through a bounce buffer half a page from both instead.
_PAGE = 4096
_ALIASED = 64  # distances below this count as aliased (31 measured, with a margin)
_BOUNCE_MIN = 4096
_BOUNCE_MAX = 1 << 20  # above this glibc copies another way, which does not stall


class _Bounce(threading.local):
    """Each thread's bounce buffer and its address, made on first use."""

    buf: tuple[memoryview, int] | None = None


_bounce = _Bounce()


def address_of(buf: memoryview) -> int | None:
    """The address of a writable buffer's first byte (None for a read-only one)."""
    try:
        return ctypes.addressof(ctypes.c_char.from_buffer(buf))
    except (TypeError, ValueError):
        return None


def copy_bytes(
    dst: memoryview, src: memoryview, dst_at: int | None = None, src_at: int | None = None
) -> None:
    """``dst[:] = src`` (byte views of one size; ``dst_at``, ``src_at``: their addresses,
    if known), by way of a bounce buffer when the two are aliased (see ``_ALIASED``)."""
    n = dst.nbytes
    if _BOUNCE_MIN <= n <= _BOUNCE_MAX:
        if dst_at is None:
            dst_at = address_of(dst)
        if src_at is None:
            src_at = address_of(src)
        if dst_at is not None and src_at is not None and 0 < (dst_at - src_at) % _PAGE < _ALIASED:
            if _bounce.buf is None:
                buf = bytearray(_BOUNCE_MAX + _PAGE)
                _bounce.buf = (memoryview(buf), ctypes.addressof(ctypes.c_char.from_buffer(buf)))
            hop, base = _bounce.buf
            # half a page past src: then dst lies more than 2 KiB from it too
            start = (src_at + _PAGE // 2 - base) % _PAGE
            hop = hop[start : start + n]
            hop[:] = src
            dst[:] = hop
            return
    dst[:] = src


class Ring:
    """One direction of a pair: the sender allocates and copies in, the receiver copies out."""

    def __init__(self, path: str, capacity: int, create: bool, front: int = 0) -> None:
        if capacity >= 1 << _OFFSET_BITS:
            raise ValueError(f"ring capacity {capacity} does not fit a header's offset")
        self.path = path
        self.capacity = capacity
        flags = os.O_RDWR | (os.O_CREAT | os.O_EXCL if create else 0)
        fd = os.open(path, flags, 0o600)
        try:
            if create:
                os.ftruncate(fd, _CTRL + front + capacity)
            elif os.fstat(fd).st_uid != os.geteuid() or os.fstat(fd).st_mode & 0o077:
                # created 0600 by the peer (same user): anything else is not its ring
                raise PermissionError(f"ring file {path!r} is not private to this user")
            self._mm = mmap.mmap(fd, _CTRL + front + capacity)
        except BaseException:
            if create:  # nobody else knows the file yet: it must not stay in /dev/shm
                with contextlib.suppress(OSError):
                    os.unlink(path)
            raise
        finally:
            os.close(fd)
        self._ctrl = np.frombuffer(self._mm, np.int64, 1, 0)
        self.front = memoryview(self._mm)[_CTRL : _CTRL + front]
        self.data = memoryview(self._mm)[_CTRL + front :]
        address = address_of(self.data)
        assert address is not None  # a shared read-write mapping
        self.address = address  # of data[0], for copy_bytes
        # sender: outstanding allocations, oldest first, how many were freed and made
        self._out: deque[tuple[int, int]] = deque()
        self._freed = 0
        self.allocated = 0
        # receiver: payloads are released by allocation number, in any order (headers come
        # on two channels, and a borrowed view is released after the reduction that reads
        # it); ``_held[i]`` says whether allocation ``_base + i`` is released; the sender may
        # reuse the space of the released prefix only
        self._held: deque[bool] = deque()
        self._base = 0

    def alloc(self, n: int) -> int | None:
        """Sender: offset for ``n`` bytes, or None if the ring has no room now. The
        allocation's number is ``allocated - 1`` afterwards (see :func:`ring_aux`).

        When everything sent has been consumed the next payload goes to offset 0 again, so a
        ping-pong of payloads keeps reusing the same (cache-hot, already mapped) pages.
        """
        out = self._out
        consumed = int(self._ctrl[0])
        while self._freed < consumed:
            out.popleft()
            self._freed += 1
        cap = self.capacity
        n = (n + 63) & ~63  # keep every payload 64-byte aligned (numpy reads them in place)
        if n > cap:
            return None
        if not out:
            start = 0
        else:
            tail, head = out[0][0], out[-1][1]
            if head > tail:  # in use: [tail, head)
                if cap - head >= n:
                    start = head
                elif tail >= n:
                    start = 0
                else:
                    return None
            elif tail - head >= n:  # wrapped, in use: [tail, cap) and [0, head)
                start = head
            else:
                return None
        out.append((start, start + n))
        self.allocated += 1
        return start

    def put(self, at: int, buf: memoryview) -> None:
        """Sender: copy ``buf`` into the allocation :meth:`alloc` gave at offset ``at``."""
        copy_bytes(self.data[at : at + buf.nbytes], buf, self.address + at)

    def read(self, aux: int, into: memoryview) -> None:
        """Receiver: copy the payload a header's ``aux`` announces (found by
        :meth:`payload` first) into ``into``, all ``into.nbytes`` of it."""
        off = aux & _OFFSET_MASK
        copy_bytes(into, self.data[off : off + into.nbytes], None, self.address + off)

    def payload(self, aux: int, n: int) -> tuple[memoryview, int] | None:
        """Receiver: the ``n`` bytes a header's ``aux`` announces and their allocation
        number (for :meth:`release`); None if they lie outside the ring or the allocation
        was released already (a corrupt or forged header)."""
        off, number = split_aux(aux)
        i = number - self._base
        held = self._held
        if off + n > self.capacity or i < 0 or i > len(held) + (self.capacity >> 6):
            return None
        if i < len(held) and held[i]:
            return None
        return self.data[off : off + n], number

    def release(self, number: int) -> None:
        """Receiver: allocation ``number`` has been read; publish the released prefix."""
        held = self._held
        i = number - self._base
        while len(held) <= i:
            held.append(False)
        held[i] = True
        if held[0]:
            while held and held[0]:
                held.popleft()
                self._base += 1
            self._ctrl[0] = self._base

    def unlink(self) -> None:
        """Remove the file (the mapping stays valid)."""
        with contextlib.suppress(OSError):
            os.unlink(self.path)

    def close(self) -> None:
        """Unmap (the views must be gone first)."""
        self.data.release()
        self.front.release()
        del self._ctrl
        self._mm.close()
