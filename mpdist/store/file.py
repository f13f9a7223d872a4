"""``FileStore``: a store kept in one file shared by the processes of one machine.

The file is an append-only log of records. Each record is a fixed header
(magic, kind, key length, value length, CRC32 of kind+key+value) followed by the
key and the value; kinds are SET, APPEND and DELETE (a tombstone). Writers hold an
exclusive ``filelock`` lock on ``<path>.lock`` while they read the tail and append,
so read-modify-write operations (``add``, ``compare_set``, ``append``, ``delete_key``)
are atomic across processes. Each instance keeps a dict cache and the offset up to
which it has replayed the log; readers take no lock and only look at new bytes.

A reader without the lock may see the tail of a record that a writer is still
writing. Such a tail is "not yet complete", not corrupt: the reader then takes the
lock (no writer can be mid-write while it holds it) and parses again. A record that
still fails under the lock and is the torn tail a writer killed mid-append leaves (cut
short, or ending exactly at the end of the file with a bad checksum, and no valid record
anywhere after its start) is cut off with ``ftruncate``: that writer's call never
returned, and every later opener and writer carries on. Any other bad record (a bad
checksum or magic with records after it) is corruption, reported as a ``DistStoreError``
naming the file and the offset.

Blocking ``get``/``wait`` poll ``fstat`` for growth of the file with sleeps that start
at tens of microseconds and back off to 5 ms while nothing happens (any growth resets
them). Measured on a 2-core box at load ~10: a 0.35-0.6 ms median cross-process
set->get->set->get round trip. Waking through inotify (tried, via ctypes) was faster
on an idle box (0.25 ms) but on the loaded one its wake-ups came in multiples of the
4 ms scheduler tick (medians of 4-16 ms), so polling it is.

The file is created 0600. An existing file that others may write (group or world write
bit) or that another user owns is refused with a ``DistStoreError`` naming it and its mode:
whoever can write the log can rewrite every key. (0644, what ``open(path, "wb")`` makes
under the usual umask, is accepted.)

Compaction: the log would grow forever (every ``add`` is a new record). A writer that
finds the file past ``COMPACT_BYTES`` and more than twice the size of its live records
rewrites the live keys, under the writer lock, into ``<path>.compact`` and renames that
over ``path`` (atomic). Until the rename the old log is untouched, after it the new one is
complete: a writer killed at any point loses no key (a stale ``.compact`` is overwritten
by the next compaction). Other instances follow without coordination: a writer compares
the path's inode with its descriptor's under the lock; a reader sees its file's link
count drop to 0 in the ``fstat`` it polls anyway; both reopen the path and replay it.

Every opener bumps a refcount record; when ``world_size`` instances have closed
(``close()``, the context manager, or garbage collection) and none is open, the last
closer removes the file and its lock file. ``world_size=-1`` never removes.
"""

from __future__ import annotations

import contextlib
import os
import stat
import struct
import threading
import time
import zlib
from collections.abc import Iterator
from datetime import timedelta
from multiprocessing import util as mp_util

import filelock

from mpdist.errors import DistStoreError
from mpdist.store.base import DEFAULT_TIMEOUT, Store, compare_set_outcome, parse_counter

__all__ = ["FileStore", "REFCOUNT_KEY"]

# Internal key holding b"<opens> <closes>"; counted by num_keys like any other key.
REFCOUNT_KEY = "/mpdist/filestore/refcount"

# Longest close() waits for the writer lock before giving up on the refcount.
_CLOSE_LOCK_S = 30.0

# A log past this size is compacted once it is more than twice its live records.
COMPACT_BYTES = 1 << 20

_MAGIC = b"MPFS"
_HDR = struct.Struct("<4sBIII")  # magic, kind, key length, value length, crc32
_SET, _APPEND, _DELETE = 1, 2, 3
_KINDS = (_SET, _APPEND, _DELETE)

# Adaptive polling of blocking reads: the first sleep is as short as the OS allows,
# each idle round multiplies it, any growth of the file resets it. Measured on a
# 2-core box this gives a ~0.4 ms median cross-process set->get->set->get round trip.
_POLL_MIN_S = 2e-5
_POLL_MAX_S = 5e-3
_POLL_GROWTH = 1.3


def _nap(delay: float, deadline: float | None, now: float) -> float:
    """Sleep ``delay`` (never past ``deadline``); return the next, longer delay."""
    time.sleep(delay if deadline is None else min(delay, deadline - now))
    return min(delay * _POLL_GROWTH, _POLL_MAX_S)


def _checksum(kind: int, key: bytes, value: bytes) -> int:
    """CRC32 of kind, key and value, as stored in a record's header."""
    return zlib.crc32(value, zlib.crc32(key, zlib.crc32(bytes((kind,)))))


def _record(kind: int, key: bytes, value: bytes) -> bytes:
    header = _HDR.pack(_MAGIC, kind, len(key), len(value), _checksum(kind, key, value))
    return header + key + value


class _Incomplete(Exception):
    """The log ends in a record that is not (yet) fully present, or does not parse.

    ``torn``: what a writer killed mid-append leaves (the last record cut short, or
    exactly as long as the file with a bad checksum, and no valid record after its
    start); anything else (``torn=False``) is corruption.
    """

    def __init__(self, offset: int, why: str, torn: bool = False) -> None:
        super().__init__(why)
        self.offset = offset
        self.why = why
        self.torn = torn


def _holds_a_record(view: memoryview, start: int) -> bool:
    """Whether a whole record with a good checksum begins anywhere at or past ``start``.

    A torn tail is a prefix of one record, so none does; a record whose length prefix
    was corrupted mid-log claims to run past the end of the file, yet the records that
    follow it are still there, and truncating them would lose keys.
    """
    data = bytes(view)
    n = len(data)
    at = data.find(_MAGIC, start)
    while 0 <= at <= n - _HDR.size:
        _, kind, klen, vlen, crc = _HDR.unpack_from(data, at)
        kstart = at + _HDR.size
        end = kstart + klen + vlen
        if kind in _KINDS and end <= n:
            key, value = data[kstart : kstart + klen], data[kstart + klen : end]
            if _checksum(kind, key, value) == crc:
                return True
        at = data.find(_MAGIC, at + 1)
    return False


class _Log:
    """The state behind one FileStore instance; kept apart so a finalizer can close it."""

    def __init__(self, path: str, world_size: int, lock_timeout: float | None) -> None:
        self.path = path
        self.lock_path = path + ".lock"
        self.world_size = world_size
        self.pid = os.getpid()
        self.cache: dict[str, bytes] = {}
        self.offset = 0
        self.compact_at = COMPACT_BYTES
        self.mutex = threading.RLock()
        self.closed = False
        self.lock_timeout = lock_timeout
        self.fd = _open(path, create=True)
        # thread_local=False: the lock belongs to this instance; self.mutex already
        # serialises the threads of this process that share the instance.
        self.flock = filelock.FileLock(self.lock_path, mode=0o600, thread_local=False)

    # ---------------------------------------------------------------- locking
    @contextlib.contextmanager
    def lock(self, limit: float | None = None) -> Iterator[None]:
        """Hold the cross-process writer lock (waiting at most the timeout, or ``limit``)."""
        wait = self.lock_timeout
        if limit is not None:
            wait = limit if wait is None else min(wait, limit)
        deadline = None if wait is None else time.monotonic() + wait
        delay = _POLL_MIN_S
        # Non-blocking tries with the adaptive sleeps of the reads: filelock's own wait
        # sleeps a fixed 50 ms between tries, and writers hold this lock for microseconds
        # (two ranks closing their stores at once cost a rank 50 ms per test).
        while True:
            try:
                self.flock.acquire(timeout=0)
                break
            except filelock.Timeout:
                now = time.monotonic()
                if deadline is not None and now >= deadline:
                    raise DistStoreError(
                        f"FileStore {self.path!r}: timed out after {wait:g} s (timeout) "
                        f"waiting for the writer lock {self.lock_path!r}"
                    ) from None
                delay = _nap(delay, deadline, now)
        try:
            yield
        finally:
            self.flock.release()

    # ---------------------------------------------------------------- reading
    def _parse_new(self) -> None:
        """Apply complete records past ``self.offset``; raise _Incomplete at a bad tail."""
        size = os.fstat(self.fd).st_size
        if size < self.offset:
            raise DistStoreError(
                f"FileStore {self.path!r}: file shrank to {size} bytes below offset "
                f"{self.offset}: truncated by someone else"
            )
        if size == self.offset:
            return
        data = os.pread(self.fd, size - self.offset, self.offset)
        view = memoryview(data)
        pos, n = 0, len(data)
        cache = self.cache
        try:
            while pos < n:
                at = self.offset + pos
                if n - pos < _HDR.size:  # too short for any record to follow
                    raise _Incomplete(
                        at, f"truncated record header ({n - pos} of {_HDR.size} bytes)", True
                    )
                magic, kind, klen, vlen, crc = _HDR.unpack_from(view, pos)
                if magic != _MAGIC or kind not in _KINDS:
                    raise _Incomplete(at, "corrupt record (bad magic or kind)")
                kstart = pos + _HDR.size
                vstart = kstart + klen
                end = vstart + vlen
                if end > n:
                    raise _Incomplete(
                        at,
                        f"truncated record: needs {end - pos} bytes, {n - pos} present",
                        not _holds_a_record(view, pos + 1),
                    )
                key_b = bytes(view[kstart:vstart])
                value = bytes(view[vstart:end])
                if _checksum(kind, key_b, value) != crc:
                    raise _Incomplete(
                        at,
                        "corrupt record (checksum mismatch)",
                        end == n and not _holds_a_record(view, pos + 1),
                    )
                try:
                    key = key_b.decode()
                except UnicodeDecodeError:
                    raise _Incomplete(at, "corrupt record (key is not UTF-8)") from None
                if kind == _SET:
                    cache[key] = value
                elif kind == _APPEND:
                    cache[key] = cache.get(key, b"") + value
                else:
                    cache.pop(key, None)
                pos = end
        finally:
            self.offset += pos

    def _replaced(self, locked: bool) -> bool:
        """Whether a compaction renamed a new log over the path since we opened ours.

        Under the lock the path's inode is authoritative; without it, the link count of
        our file (0 once renamed over, or removed by the last closer) says it cheaply.
        """
        st = os.fstat(self.fd)
        if not locked:
            return st.st_nlink == 0
        try:
            now = os.stat(self.path)
        except FileNotFoundError:
            return False  # removed by the last closer: nothing to follow
        return (now.st_ino, now.st_dev) != (st.st_ino, st.st_dev)

    def _follow(self) -> None:
        """Switch to the log now at the path and replay it from the start."""
        try:
            fd = _open(self.path, create=False)
        except DistStoreError as e:
            if isinstance(e.__cause__, FileNotFoundError):
                return  # removed by the last closer: keep reading what we have
            raise
        os.close(self.fd)
        self.fd, self.offset, self.cache = fd, 0, {}

    def refresh(self, locked: bool) -> None:
        """Bring the cache up to date with the file (call with self.mutex held).

        Under the lock a torn tail (see ``_Incomplete``) is cut off: no writer is
        mid-write then, so it was left by one that died, whose ``set`` never returned.
        """
        if self._replaced(locked):
            self._follow()
        try:
            self._parse_new()
        except _Incomplete as bad:
            if not locked:
                # Maybe a writer is mid-write: with the lock held nobody is, so look again.
                with self.lock():
                    self.refresh(locked=True)
                return
            if not bad.torn:
                raise self._corrupt(bad) from None
            # Nobody has replayed past the torn record's start (it never parsed), so no
            # instance's offset lies beyond the new end of the file.
            try:
                os.ftruncate(self.fd, bad.offset)
            except OSError as e:
                raise DistStoreError(
                    f"FileStore {self.path!r}: cannot drop the torn record a killed writer "
                    f"left at offset {bad.offset}: {e}"
                ) from e

    def _corrupt(self, bad: _Incomplete) -> DistStoreError:
        return DistStoreError(f"FileStore {self.path!r}: {bad.why} at offset {bad.offset}")

    def grown(self, seen: int) -> bool:
        """Cheap check (one fstat) whether the file changed since it was ``seen`` bytes long
        (or was replaced by a compaction)."""
        st = os.fstat(self.fd)
        return st.st_size != seen or st.st_nlink == 0

    # ---------------------------------------------------------------- writing
    def append_records(self, buf: bytes) -> None:
        """Write ``buf`` at the end (call with the lock held and the cache refreshed)."""
        start = self.offset
        view = memoryview(buf)
        try:
            while view:
                written = os.write(self.fd, view)
                view = view[written:]
        except BaseException as e:
            # Disk full, interrupted...: take back the partial record so that the log
            # stays readable for everyone (we hold the lock; nobody else appended).
            with contextlib.suppress(OSError):
                os.ftruncate(self.fd, start)
            if isinstance(e, OSError):
                raise DistStoreError(f"FileStore {self.path!r}: write failed: {e}") from e
            raise
        # We hold the lock and had replayed up to the end, so the new bytes are ours:
        # parse them back instead of tracking each kind twice.
        self._parse_new()
        if self.offset > self.compact_at:
            self.compact()

    def compact(self) -> None:
        """Rewrite the live keys into a new log renamed over the path (lock held, cache
        current), if the log is more than twice their size."""
        live = b"".join(_record(_SET, k.encode(), v) for k, v in self.cache.items())
        if self.offset <= 2 * len(live):
            # Mostly live data: wait until it doubles again before looking.
            self.compact_at = max(COMPACT_BYTES, 2 * self.offset)
            return
        tmp = self.path + ".compact"
        try:
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | _CLOEXEC, 0o600)
            try:
                _check_private(tmp, fd)
                view = memoryview(live)
                while view:
                    view = view[os.write(fd, view) :]
            finally:
                os.close(fd)
            # Atomic: the path names the old complete log or the new complete one.
            os.rename(tmp, self.path)
        except OSError:
            # Disk full, say: the old log is still whole; try again once it doubles.
            self.compact_at = 2 * self.offset
            _unlink(tmp)
            return
        self._follow()
        self._parse_new()
        self.compact_at = max(COMPACT_BYTES, 2 * len(live))

    # ---------------------------------------------------------------- lifetime
    def bump_refcount(self, opening: bool) -> tuple[int, int]:
        raw = self.cache.get(REFCOUNT_KEY, b"0 0")
        try:
            opens, closes = (int(x) for x in raw.split())
        except ValueError:
            raise DistStoreError(
                f"FileStore {self.path!r}: refcount key holds {raw[:40]!r}"
            ) from None
        if opening:
            opens += 1
        else:
            closes += 1
        self.append_records(_record(_SET, REFCOUNT_KEY.encode(), f"{opens} {closes}".encode()))
        return opens, closes

    def close(self) -> None:
        """Count this closer; the last of world_size closers removes the files."""
        with self.mutex:
            if self.closed:
                return
            self.closed = True
            if os.getpid() != self.pid:
                # A forked copy of the instance: the parent's count is not ours to change.
                os.close(self.fd)
                return
            remove = False
            try:
                # Bounded: close() also runs at exit, which must not hang on a stuck peer.
                with self.lock(limit=_CLOSE_LOCK_S):
                    self.refresh(locked=True)
                    opens, closes = self.bump_refcount(opening=False)
                    remove = self.world_size > 0 and closes >= self.world_size and opens <= closes
                    if remove:
                        _unlink(self.path)
                        _unlink(self.path + ".compact")  # left by a writer killed mid-way
            except (DistStoreError, OSError):
                # close() runs from finalizers too; a corrupt or vanished file must not
                # stop the descriptor from being released.
                pass
            finally:
                os.close(self.fd)
        if remove:
            _unlink(self.lock_path)


_CLOEXEC = getattr(os, "O_CLOEXEC", 0)


def _open(path: str, create: bool) -> int:
    """A checked descriptor of the log at ``path`` (appending; created 0600 if ``create``)."""
    flags = os.O_RDWR | os.O_APPEND | _CLOEXEC | (os.O_CREAT if create else 0)
    try:
        fd = os.open(path, flags, 0o600)
    except OSError as e:
        raise DistStoreError(f"FileStore: cannot open {path!r}: {e}") from e
    try:
        _check_private(path, fd)
    except BaseException:
        os.close(fd)
        raise
    return fd


def _check_private(path: str, fd: int) -> None:
    """Refuse a store file that another user owns or that others may write."""
    st = os.fstat(fd)  # the file opened, not whatever the path names by now
    mode = stat.S_IMODE(st.st_mode)
    if st.st_uid != os.geteuid():
        raise DistStoreError(
            f"FileStore: refusing {path!r} (mode {mode:04o}): it belongs to uid {st.st_uid}, "
            "not to this user, who could then read and rewrite every key"
        )
    if mode & 0o022:
        raise DistStoreError(
            f"FileStore: refusing {path!r} (mode {mode:04o}): others may write it and so "
            f"rewrite every key; chmod go-w {path}"
        )


def _unlink(path: str) -> None:
    with contextlib.suppress(FileNotFoundError):
        os.unlink(path)


class FileStore(Store):
    """A store in the file ``path``, shared by every process that opens the same path.

    ``world_size`` is the number of instances that will close it: the last of them
    removes the file (``-1``: never removed).
    """

    def __init__(
        self,
        file_name: str | os.PathLike[str],
        world_size: int = -1,
        timeout: timedelta = DEFAULT_TIMEOUT,
    ) -> None:
        if not isinstance(file_name, (str, os.PathLike)):
            raise TypeError(f"FileStore path must be a str or path, got {type(file_name).__name__}")
        if not isinstance(world_size, int) or isinstance(world_size, bool):
            raise TypeError(f"FileStore world_size must be an int, got {type(world_size).__name__}")
        if world_size == 0 or world_size < -1:
            raise ValueError(f"FileStore world_size must be -1 or >= 1, got {world_size}")
        super().__init__(timeout)
        path = os.fspath(file_name)
        self._log = _Log(path, world_size, self._timeout_s())
        try:
            with self._log.mutex, self._log.lock():
                self._log.refresh(locked=True)
                self._log.bump_refcount(opening=True)
        except BaseException:
            os.close(self._log.fd)
            raise
        # Closed at garbage collection and at exit. multiprocessing's Finalize rather than
        # weakref.finalize: children started by multiprocessing (forkserver, fork) end
        # in os._exit, which skips atexit, but they do run these exit finalizers.
        self._finalizer = mp_util.Finalize(self, self._log.close, exitpriority=0)

    @property
    def path(self) -> str:
        """The file this store lives in."""
        return self._log.path

    @property
    def world_size(self) -> int:
        """How many closers remove the file (-1: never)."""
        return self._log.world_size

    def set_timeout(self, timeout: timedelta) -> None:
        """Change the default timeout (also used to wait for the writer lock)."""
        super().set_timeout(timeout)
        self._log.lock_timeout = self._timeout_s()

    def __repr__(self) -> str:
        return f"FileStore({self._log.path!r}, world_size={self._log.world_size})"

    # ---------------------------------------------------------------- helpers
    def _live(self) -> _Log:
        log = self._log
        if log.closed:
            raise DistStoreError(f"FileStore {log.path!r} is closed")
        return log

    @contextlib.contextmanager
    def _locked(self) -> Iterator[_Log]:
        """The log, with the writer lock held and the cache replayed to the end of the
        file: where every write, and every read-modify-write, starts."""
        log = self._live()
        with log.mutex, log.lock():
            log.refresh(locked=True)
            yield log

    def _write(self, buf: bytes) -> None:
        with self._locked() as log:
            log.append_records(buf)

    def _wait_for(self, op: str, keys: list[str], timeout: float | None) -> None:
        log = self._live()
        deadline = None if timeout is None else time.monotonic() + timeout
        delay = _POLL_MIN_S
        while True:
            with log.mutex:
                self._live()
                log.refresh(locked=False)
                cache = log.cache
                if all(k in cache for k in keys):
                    return
                # Compare later sizes with this one, not with log.offset: another thread
                # writing through this same instance moves log.offset forward.
                seen = log.offset
            # Sleep until the file grows, with growing sleeps while nothing happens.
            while True:
                now = time.monotonic()
                if deadline is not None and now >= deadline:
                    with log.mutex:
                        log.refresh(locked=False)
                        missing = [k for k in keys if k not in log.cache]
                    if not missing:
                        return
                    raise self._timeout_error(op, missing, timeout)
                delay = _nap(delay, deadline, now)
                self._live()  # raises once closed
                if log.grown(seen):
                    delay = _POLL_MIN_S
                    break

    # ---------------------------------------------------------------- hooks
    def _set(self, key: str, value: bytes) -> None:
        self._write(_record(_SET, key.encode(), value))

    def _get(self, key: str, timeout: float | None) -> bytes:
        log = self._live()
        while True:
            self._wait_for("get", [key], timeout)
            with log.mutex:
                value = log.cache.get(key)
            if value is not None:
                return value
            # Deleted between the wait and the read: wait again.

    def _wait(self, keys: list[str], timeout: float | None) -> None:
        self._wait_for("wait", keys, timeout)

    def _multi_get(self, keys: list[str], timeout: float | None) -> list[bytes]:
        log = self._live()
        while True:
            self._wait_for("multi_get", keys, timeout)
            with log.mutex:
                values = [log.cache.get(k) for k in keys]
            if all(v is not None for v in values):
                return values  # type: ignore[return-value]

    def _check(self, keys: list[str]) -> bool:
        log = self._live()
        with log.mutex:
            log.refresh(locked=False)
            return all(k in log.cache for k in keys)

    def _add(self, key: str, amount: int) -> int:
        with self._locked() as log:
            new = parse_counter(key, log.cache.get(key, b"0")) + amount
            log.append_records(_record(_SET, key.encode(), str(new).encode()))
            return new

    def _compare_set(self, key: str, expected: bytes, desired: bytes) -> bytes:
        with self._locked() as log:
            write, result = compare_set_outcome(log.cache.get(key), expected, desired)
            if write:
                log.append_records(_record(_SET, key.encode(), desired))
            return result

    def _delete_key(self, key: str) -> bool:
        with self._locked() as log:
            if key not in log.cache:
                return False
            log.append_records(_record(_DELETE, key.encode(), b""))
            return True

    def _num_keys(self) -> int:
        log = self._live()
        with log.mutex:
            log.refresh(locked=False)
            return len(log.cache)

    def _append(self, key: str, value: bytes) -> None:
        self._write(_record(_APPEND, key.encode(), value))

    def _multi_set(self, keys: list[str], values: list[bytes]) -> None:
        self._write(
            b"".join(_record(_SET, k.encode(), v) for k, v in zip(keys, values, strict=True))
        )

    def _close(self) -> None:
        self._finalizer()
