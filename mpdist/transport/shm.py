"""Shared-memory rings that carry big payloads between two processes of one host.

Loopback TCP costs a copy into the kernel, protocol work and a copy out; a shared ring costs
one copy in and one copy out. TcpTransport keeps every header on the TCP connection (which
gives ordering, wakeups and error detection) and, for a big payload, puts the bytes in the
ring it shares with that peer instead of on the wire; the header says so and where.

One ring per direction and pair, created (and kept mapped until close) by the receiver as a
file in /dev/shm; the sender maps it and unlinks it, the receiver unlinks it too on close,
whichever comes first, so nothing outlives the transport; files left by a process that was
killed are swept (their name carries the owner's pid) when the next transport starts. Allocation is FIFO: the receiver consumes payloads in the
order their headers arrive and only publishes how many it has consumed. A payload that does
not fit goes over TCP as usual.
"""

from __future__ import annotations

import contextlib
import mmap
import os
from collections import deque

import numpy as np

__all__ = ["Ring", "shm_dir", "ring_path", "sweep_stale_rings"]

_CTRL = 64  # bytes in front of the data: int64 "consumed" counter, own cache line


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


class Ring:
    """One direction of a pair: the sender allocates and copies in, the receiver copies out."""

    def __init__(self, path: str, capacity: int, create: bool) -> None:
        self.path = path
        self.capacity = capacity
        flags = os.O_RDWR | (os.O_CREAT | os.O_EXCL if create else 0)
        fd = os.open(path, flags, 0o600)
        try:
            if create:
                os.ftruncate(fd, _CTRL + capacity)
            elif os.fstat(fd).st_uid != os.geteuid() or os.fstat(fd).st_mode & 0o077:
                # created 0600 by the peer (same user): anything else is not its ring
                raise PermissionError(f"ring file {path!r} is not private to this user")
            self._mm = mmap.mmap(fd, _CTRL + capacity)
        except BaseException:
            if create:  # nobody else knows the file yet: it must not stay in /dev/shm
                with contextlib.suppress(OSError):
                    os.unlink(path)
            raise
        finally:
            os.close(fd)
        self._ctrl = np.frombuffer(self._mm, np.int64, 1, 0)
        self.data = memoryview(self._mm)[_CTRL:]
        # sender: outstanding allocations, oldest first, and how many were freed
        self._out: deque[tuple[int, int]] = deque()
        self._freed = 0
        # receiver: payloads are taken in order but may be released out of order (a borrowed
        # view is released after the reduction that reads it); the sender may reuse the space
        # of the released prefix only
        self._held: deque[bool] = deque()
        self._base = 0

    def alloc(self, n: int) -> int | None:
        """Sender: offset for ``n`` bytes, or None if the ring has no room now.

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
        return start

    def take(self) -> int:
        """Receiver: a token for the next payload (payloads are taken in arrival order)."""
        self._held.append(False)
        return self._base + len(self._held) - 1

    def release(self, token: int) -> None:
        """Receiver: the payload of ``token`` has been read; publish the released prefix."""
        held = self._held
        held[token - self._base] = True
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
        del self._ctrl
        self._mm.close()
