"""FileStore compaction (issue 17 item 7): the log stays bounded, every instance follows the
rewritten log, and a writer SIGKILLed at any point of a compaction loses no key."""

from __future__ import annotations

import os
import random
import signal
import subprocess
import sys
import textwrap
import threading
import time

import pytest

import mpdist.store.file as file_mod
from mpdist.store import FileStore

SMALL = 4096  # compaction threshold for these tests


@pytest.fixture
def path(tmp_path, monkeypatch) -> str:
    monkeypatch.setattr(file_mod, "COMPACT_BYTES", SMALL)
    return str(tmp_path / "fs")


def test_the_log_stays_bounded_and_keeps_every_live_key(path):
    with FileStore(path, -1) as s:
        for i in range(3000):
            s.add("counter", 1)
            s.set(f"k{i % 50}", str(i).encode())
            if i % 7 == 0:
                s.append("appended", b"x")
        s.set("doomed", b"1")
        s.delete_key("doomed")
        s.add("counter", 1)  # one more write after the tombstone
        size = os.path.getsize(path)
        # 3000 x ~3 records of ~40 bytes without compaction; live data is ~2 KiB
        assert size < 3 * SMALL, size
        assert s.get("counter") == b"3001"
        assert s.get("appended") == b"x" * len(range(0, 3000, 7))
        assert all(s.get(f"k{j}") == str(2950 + j).encode() for j in range(50))
        assert not s.check(["doomed"])
    with FileStore(path, -1) as again:  # what a new opener replays from the file alone
        assert again.get("counter") == b"3001"
        assert not again.check(["doomed"])
        assert again.num_keys() == 53  # 50 + counter + appended + the refcount key


def test_live_data_past_the_threshold_is_not_rewritten_at_every_write(path, monkeypatch):
    calls = []
    real = file_mod._Log.compact
    monkeypatch.setattr(file_mod._Log, "compact", lambda self: calls.append(1) or real(self))
    with FileStore(path, -1) as s:
        for i in range(400):  # ~20 KiB of distinct live keys: nothing to gain
            s.set(f"key{i}", b"v" * 32)
        assert all(s.get(f"key{i}") == b"v" * 32 for i in range(400))
    # looked at when the log passed 4, 8, 16 KiB: not at each of the ~300 writes past 4 KiB
    assert 1 <= len(calls) <= 4, len(calls)


def test_other_instances_follow_the_rewritten_log(path):
    with FileStore(path, -1) as writer, FileStore(path, -1) as reader:
        reader.set("from_reader", b"1")
        assert reader.get("from_reader") == b"1"  # reader's descriptor is on the first log
        inode = os.stat(path).st_ino
        for i in range(500):
            writer.set("hot", str(i).encode())
        assert os.stat(path).st_ino != inode  # compacted
        assert reader.get("hot") == b"499"  # followed by a lock-free read
        assert reader.add("n", 5) == 5  # and a write goes to the new log
        assert writer.get("n") == b"5"
        assert writer.get("from_reader") == b"1"


def test_a_blocked_get_wakes_when_its_key_arrives_in_a_rewritten_log(path):
    with FileStore(path, -1) as writer, FileStore(path, -1) as reader:
        got: list[bytes] = []
        t = threading.Thread(target=lambda: got.append(reader.get("late")))
        t.start()
        for i in range(500):
            writer.set("hot", str(i).encode())
        writer.set("late", b"here")
        t.join(30)
        assert got == [b"here"]


def test_the_last_closer_removes_a_stale_compaction_file(path):
    with open(path + ".compact", "wb") as f:  # a writer was killed while writing it
        f.write(b"partial")
    with FileStore(path, 1) as s:
        s.set("k", b"v")
    assert not os.path.exists(path + ".compact")
    assert not os.path.exists(path)


WRITER = textwrap.dedent(
    """
    import sys
    import mpdist.store.file as file_mod
    file_mod.COMPACT_BYTES = {small}
    from mpdist.store import FileStore
    if len(sys.argv) > 2:  # die at a chosen point of the writer's n-th compaction
        import os, signal, types
        n, point = int(sys.argv[2]), sys.argv[3]
        seen = [0]
        def die(at):
            if at == point and seen[0] == n:
                os.kill(os.getpid(), signal.SIGKILL)
        compact_fds = set()
        def open_(p, *a):
            if p.endswith(".compact"):
                seen[0] += 1
                die("open")
                fd = os.open(p, *a)
                compact_fds.add(fd)
                return fd
            return os.open(p, *a)
        def write(fd, data):
            if seen[0] == n and fd in compact_fds and len(data) > 1:
                k = os.write(fd, bytes(data)[: len(data) // 2])
                die("half_written")
                return k
            return os.write(fd, data)
        def close(fd):
            compact_fds.discard(fd)  # its number may be reused by the next log
            os.close(fd)
        def rename(a, b):
            die("written")
            os.rename(a, b)
            die("renamed")
        shim = types.SimpleNamespace(**{{k: getattr(os, k) for k in dir(os) if k[0] != "_"}})
        shim.open, shim.write, shim.close, shim.rename = open_, write, close, rename
        file_mod.os = shim
    s = FileStore(sys.argv[1], -1)
    pad = b"p" * 200
    i = int(s.get("next")) if s.check(["next"]) else 0
    while True:
        s.set(f"k{{i}}", str(i).encode())  # a new live key ...
        for _ in range(3):
            s.set("hot", pad)  # ... and garbage
        s.add("next", 1)
        sys.stdout.write(f"{{i}}\\n")
        sys.stdout.flush()
        i += 1
    """
).format(small=SMALL)

POINTS = ("open", "half_written", "written", "renamed")
N_KILLS = int(os.environ.get("MPDIST_COMPACTION_KILLS", "25"))


def test_a_writer_killed_at_any_point_of_a_compaction_loses_no_key(path):
    rng = random.Random(17)
    acked = -1
    mid_compaction = 0
    with FileStore(path, -1) as reader:  # an instance that lives through every kill
        for kill in range(N_KILLS):
            # Half the runs die at a chosen point of a compaction; the others at random.
            chosen = [str(rng.randint(1, 3)), rng.choice(POINTS)] if kill % 2 else []
            proc = subprocess.Popen(
                [sys.executable, "-c", WRITER, path, *chosen], stdout=subprocess.PIPE, text=True
            )
            try:
                target = acked + rng.randint(5, 40)
                assert proc.stdout is not None
                for line in proc.stdout:
                    acked = max(acked, int(line))
                    if acked >= target and not chosen:
                        break
                if not chosen:
                    time.sleep(rng.random() * 2e-3)  # land anywhere in the next writes
                    proc.send_signal(signal.SIGKILL)
                assert proc.wait(60) == -signal.SIGKILL
            finally:
                proc.kill()
                proc.wait()
                assert proc.stdout is not None
                proc.stdout.close()
            mid_compaction += os.path.exists(path + ".compact")
            # The writer ran on past the last line we read (the pipe buffers): "next" says
            # how far, and every key below it, acknowledged or not, must be there, seen
            # from the instance that lived through the kill and from a fresh one.
            with FileStore(path, -1) as fresh:
                n = int(fresh.get("next"))
                assert n > acked, (kill, n, acked)
                for store in (reader, fresh):
                    assert int(store.get("next")) == n
                    values = store.multi_get([f"k{i}" for i in range(n)])
                    assert values == [str(i).encode() for i in range(n)], kill
                acked = n - 1
    print(f"{N_KILLS} kills, {mid_compaction} left a half-written .compact, {acked + 1} keys")
    assert os.path.getsize(path) < 10 * SMALL + 20 * (acked + 1)
