"""FileStore specifics: the file, partial and corrupt records, cleanup, several processes."""

from __future__ import annotations

import gc
import os
import stat
from datetime import timedelta

import filelock
import pytest
import store_workers as w

from mpdist.errors import DistStoreError
from mpdist.store import FileStore
from mpdist.store.file import REFCOUNT_KEY, _record


@pytest.fixture
def path(tmp_path) -> str:
    return str(tmp_path / "fs")


def test_file_is_private_and_shared_between_instances(path):
    with FileStore(path, -1) as a, FileStore(path, -1) as b:
        assert stat.S_IMODE(os.stat(path).st_mode) == 0o600
        assert stat.S_IMODE(os.stat(path + ".lock").st_mode) == 0o600
        a.set("k", b"v")
        assert b.get("k") == b"v"
        assert b.add("n", 2) == 2
        assert a.add("n", 3) == 5
        b.append("k", b"w")
        assert a.get("k") == b"vw"
        assert a.delete_key("k")
        assert not b.check(["k"])
        # the refcount key is a key like any other
        assert a.check([REFCOUNT_KEY])
        assert a.num_keys() == b.num_keys() == 2


def test_fresh_store_counts_its_refcount_key(path):
    with FileStore(path) as s:
        assert s.num_keys() == 1


def test_bad_constructor_args(path):
    with pytest.raises(TypeError):
        FileStore(3)
    with pytest.raises(TypeError):
        FileStore(path, "2")
    with pytest.raises(ValueError):
        FileStore(path, 0)
    with pytest.raises(ValueError):
        FileStore(path, -2)
    with pytest.raises(ValueError):
        FileStore(path, 1, timeout=timedelta(seconds=-1))
    assert not os.path.exists(path)


def test_closed_store_raises(path):
    s = FileStore(path)
    s.close()
    s.close()  # idempotent
    with pytest.raises(DistStoreError, match="closed"):
        s.set("a", b"1")


def _append_raw(path: str, data: bytes) -> None:
    with open(path, "ab") as f:
        f.write(data)


def test_garbage_tail_is_corrupt_with_offset(path):
    with FileStore(path) as s:
        s.set("a", b"1")
        size = os.path.getsize(path)
        _append_raw(path, b"\x00garbage-garbage-garbage")
        with pytest.raises(DistStoreError, match=rf"corrupt.*offset {size}") as ei:
            s.get("b")
        assert path in str(ei.value)


def test_checksum_mismatch_is_corrupt(path):
    rec = bytearray(_record(1, b"key", b"value"))
    rec[-1] ^= 0xFF
    with FileStore(path) as s:
        size = os.path.getsize(path)
        # followed by a good record: corruption in the middle, not a killed writer's torn tail
        _append_raw(path, bytes(rec) + _record(1, b"next", b"1"))
        with pytest.raises(DistStoreError, match=rf"checksum.*offset {size}"):
            s.check(["key"])
    # a new opener replays from the start and stops at the same place
    with pytest.raises(DistStoreError, match=rf"offset {size}"):
        FileStore(path)


def test_truncated_record_is_cut_off_when_no_writer_holds_the_lock(path):
    # a writer killed mid-append left it (more in test_file_torn_tail.py)
    with FileStore(path) as s:
        s.set("a", b"1")
        size = os.path.getsize(path)
        _append_raw(path, _record(1, b"b", b"x" * 100)[:-10])
        assert not s.check(["b"])
        assert os.path.getsize(path) == size


def test_half_written_record_is_not_corrupt_while_the_writer_holds_the_lock(path):
    rec = _record(1, b"k", b"v" * 1000)
    with FileStore(path, timeout=timedelta(milliseconds=100)) as reader:
        lock = filelock.FileLock(path + ".lock", thread_local=False)
        with lock:
            _append_raw(path, rec[:50])  # a writer is mid-write
            # The reader sees an incomplete tail, goes for the lock and times out on it:
            # it must not call the record corrupt or truncated.
            with pytest.raises(DistStoreError, match="writer lock") as ei:
                reader.check(["k"])
            assert "corrupt" not in str(ei.value) and "truncated" not in str(ei.value)
            _append_raw(path, rec[50:])
        assert reader.get("k") == b"v" * 1000


def test_last_closer_removes_the_file(path):
    a = FileStore(path, world_size=2)
    b = FileStore(path, world_size=2)
    a.close()
    assert os.path.exists(path)
    b.close()
    assert not os.path.exists(path)
    assert not os.path.exists(path + ".lock")


def test_early_closer_does_not_remove_before_everyone_came(path):
    with FileStore(path, world_size=2) as a:
        a.set("k", b"v")
    assert os.path.exists(path)
    with FileStore(path, world_size=2) as b:
        assert b.get("k") == b"v"
    assert not os.path.exists(path)


def test_garbage_collection_closes(path):
    a = FileStore(path, world_size=1)
    assert os.path.exists(path)
    del a
    gc.collect()
    assert not os.path.exists(path)


def test_world_size_minus_one_never_removes(path):
    for _ in range(3):
        with FileStore(path, world_size=-1) as s:
            s.add("opens", 1)
    s = FileStore(path)
    del s
    gc.collect()
    assert os.path.exists(path)
    with FileStore(path) as s:
        assert s.get("opens") == b"3"
        assert s.get(REFCOUNT_KEY) == b"5 4"


def test_eight_processes_add_exactly(path):
    with FileStore(path, -1, timeout=timedelta(seconds=60)) as s:
        w.adds_from_eight_processes(s, ("file", path))


def test_one_mib_values_cross_processes_intact(path):
    with FileStore(path, -1, timeout=timedelta(seconds=60)) as s:
        w.big_values_from_another_process(s, ("file", path))


def test_close_wakes_a_blocked_reader_and_releases_descriptors(path):
    with w.no_new_fds():
        s = FileStore(path, world_size=1)
        err = w.get_interrupted_by_close(s)
        assert err is not None and "closed" in str(err)
    assert not os.path.exists(path)


def test_blocked_get_wakes_on_a_write_through_another_instance(path):
    import threading

    with FileStore(path, timeout=timedelta(seconds=30)) as a, FileStore(path) as b:
        t = threading.Timer(0.02, b.set, args=("k", b"v"))
        t.start()
        try:
            assert a.get("k") == b"v"
        finally:
            t.join()
        with pytest.raises(DistStoreError, match="timed out"):
            a.wait(["nope"], timedelta(milliseconds=30))


def test_two_threads_wait_on_one_instance(path):
    import threading

    with FileStore(path, timeout=timedelta(seconds=30)) as a, FileStore(path) as b:
        got: list[bytes] = []
        readers = [threading.Thread(target=lambda k=k: got.append(a.get(k))) for k in "xy"]
        for r in readers:
            r.start()
        b.multi_set(["x", "y"], [b"1", b"2"])
        for r in readers:
            r.join()
        assert sorted(got) == [b"1", b"2"]


@pytest.mark.parametrize("method", ["spawn", "forkserver"])
def test_process_exiting_without_close_still_counts_as_a_closer(path, method):
    import multiprocessing as mp

    ctx = mp.get_context(method)
    with FileStore(path, world_size=2) as s:
        w.run_all([ctx.Process(target=w.open_and_leave, args=(path, 2))])
        assert s.get("child") == b"was here"
        assert s.get(REFCOUNT_KEY) == b"2 1"  # the child closed at exit
    assert not os.path.exists(path)


def test_threads_sharing_one_instance_add_exactly(path):
    import threading

    with FileStore(path) as a, FileStore(path) as b:
        threads = [
            threading.Thread(target=lambda s=s: [s.add("c", 1) for _ in range(100)])
            for s in (a, b, a, b)
        ]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        assert a.get("c") == b"400"


def test_failed_write_is_rolled_back(path, monkeypatch):
    from mpdist.store import file as file_mod

    with FileStore(path) as s:
        s.set("a", b"1")
        size = os.path.getsize(path)
        real_write = os.write

        def half_then_enospc(fd, data):
            if len(data) > 100:
                real_write(fd, bytes(data[:60]))
                raise OSError(28, "No space left on device")
            return real_write(fd, data)

        monkeypatch.setattr(file_mod.os, "write", half_then_enospc)
        with pytest.raises(DistStoreError, match="write failed"):
            s.set("big", b"x" * 1000)
        monkeypatch.undo()
        assert os.path.getsize(path) == size
        s.set("b", b"2")
        with FileStore(path) as other:
            assert other.multi_get(["a", "b"]) == [b"1", b"2"]
            assert not other.check(["big"])


def test_a_held_writer_lock_is_retried_with_short_growing_sleeps(path, monkeypatch):
    """Waiting for the writer lock sleeps like a blocked read does (from 20 us, growing to
    at most 5 ms), not filelock's fixed 50 ms: another rank's writes hold the lock for
    microseconds. The holder lets go after a few tries; the write then goes through."""
    import mpdist.store.file as file_mod

    with FileStore(path) as s:
        holder = filelock.FileLock(path + ".lock", thread_local=False)
        holder.acquire()
        sleeps: list[float] = []

        def sleep(seconds: float) -> None:
            sleeps.append(seconds)
            if len(sleeps) == 40:
                holder.release()  # the other writer is done

        monkeypatch.setattr(file_mod.time, "sleep", sleep)
        s.set("k", b"v")
        assert len(sleeps) == 40 and not holder.is_locked
        assert sleeps[0] == pytest.approx(2e-5)
        assert all(b >= a for a, b in zip(sleeps, sleeps[1:], strict=False))
        assert max(sleeps) == pytest.approx(5e-3)
    with FileStore(path) as again:
        assert again.get("k") == b"v"
