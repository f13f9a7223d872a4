"""FileStore and a writer killed mid-append (issue 17): the torn record it leaves at the end
of the log is dropped, every key whose set() returned survives, and corruption in the middle
of the log is still a DistStoreError naming the file."""

from __future__ import annotations

import os
import random
import signal
import subprocess
import sys
import textwrap
import time

import pytest

import mpdist.store.file as file_mod
from mpdist.errors import DistStoreError
from mpdist.store import FileStore


@pytest.fixture
def path(tmp_path) -> str:
    return str(tmp_path / "fs")


def _fill(path: str) -> int:
    """Three keys in a fresh log; returns its size."""
    with FileStore(path, -1) as s:
        s.set("a", b"1")
        s.set("b", b"x" * 50)
        s.add("n", 3)
    return os.path.getsize(path)


def _records(data: bytes) -> list[tuple[int, bytes]]:
    """(offset, key) of each whole, checksummed record from the start; asserts the log is
    nothing but such records (a torn tail was cut off, not left in place)."""
    out, pos, hdr = [], 0, file_mod._HDR
    while pos < len(data):
        magic, kind, klen, vlen, crc = hdr.unpack_from(data, pos)
        key = data[pos + hdr.size : pos + hdr.size + klen]
        value = data[pos + hdr.size + klen : pos + hdr.size + klen + vlen]
        assert magic == b"MPFS" and len(value) == vlen, pos
        assert file_mod._checksum(kind, key, value) == crc, pos
        out.append((pos, key))
        pos += hdr.size + klen + vlen
    return out


RECORD = file_mod._record(file_mod._SET, b"torn_key", b"v" * 40)
# cut inside the header, inside the key, inside the value, one byte short
CUTS = (1, 4, file_mod._HDR.size - 1, file_mod._HDR.size + 3, len(RECORD) - 10, len(RECORD) - 1)


@pytest.mark.parametrize("cut", CUTS)
def test_a_fresh_opener_drops_a_torn_tail(path, cut):
    size = _fill(path)
    with open(path, "ab") as f:
        f.write(RECORD[:cut])
    with FileStore(path, -1) as s:
        assert s.get("a") == b"1" and s.get("b") == b"x" * 50 and s.get("n") == b"3"
        assert not s.check(["torn_key"])
        s.set("after", b"ok")
    with FileStore(path, -1) as again:  # the log reads cleanly from the start
        assert again.get("after") == b"ok"
        assert again.add("n", 1) == 4
    with open(path, "rb") as f:
        records = dict(_records(f.read()))
    assert size in records  # the torn bytes were cut: the next record starts at the old end
    assert b"after" in records.values() and b"torn_key" not in records.values()


def test_a_whole_length_last_record_with_a_bad_checksum_is_a_torn_tail(path):
    size = _fill(path)
    bad = bytearray(RECORD)
    bad[-1] ^= 0xFF  # the last byte never reached the disk as written
    with open(path, "ab") as f:
        f.write(bad)
    with FileStore(path, -1) as s:
        assert not s.check(["torn_key"])
        assert s.get("b") == b"x" * 50
    with open(path, "rb") as f:
        records = _records(f.read())
    assert records[-3][0] < size <= records[-2][0]  # cut at the old end; 2 refcounts since


def test_an_instance_open_before_the_tear_drops_it_on_its_next_lock_free_read(path):
    _fill(path)
    with FileStore(path, -1) as reader:
        assert reader.get("n") == b"3"
        size = os.path.getsize(path)
        with open(path, "ab") as f:
            f.write(RECORD[:20])
        assert reader.num_keys() == 4  # a, b, n and the refcount key: no error
        assert os.path.getsize(path) == size  # cut under the writer lock
        assert reader.add("n", 1) == 4


def _corrupt_middle(path: str, offset_in_record: int) -> int:
    """Flip one byte of the record holding "b" (records follow it); return its offset."""
    with open(path, "rb") as f:
        data = f.read()
    at = next(pos for pos, key in _records(data) if key == b"b")
    bad = bytearray(data)
    bad[at + offset_in_record] ^= 0x5A
    with open(path, "wb") as f:
        f.write(bad)
    return at


@pytest.mark.parametrize(
    "where, why",
    [
        (file_mod._HDR.size + 10, "checksum mismatch"),  # a byte of the value
        (0, "bad magic"),
        (11, "truncated record"),  # the value length: it now claims to run past the end
    ],
)
def test_corruption_in_the_middle_still_raises_naming_the_file(path, where, why):
    _fill(path)
    size = os.path.getsize(path)
    at = _corrupt_middle(path, where)
    with pytest.raises(DistStoreError, match=why) as info:
        FileStore(path, -1)
    assert repr(path) in str(info.value) and f"offset {at}" in str(info.value)
    assert os.path.getsize(path) == size  # nothing after it was cut off


# A writer that dies inside its n-th append: half the record reaches the log, then SIGKILL.
WRITER = textwrap.dedent(
    """
    import os, signal, sys, types
    import mpdist.store.file as file_mod
    from mpdist.store import FileStore
    name, die_at = sys.argv[2], int(sys.argv[3])
    s = FileStore(sys.argv[1], -1)
    writes = [0]
    def write(fd, data):
        if fd == s._log.fd:
            writes[0] += 1
            if writes[0] == die_at:
                os.write(fd, bytes(data)[: max(1, len(data) // 2)])
                os.kill(os.getpid(), signal.SIGKILL)
        return os.write(fd, data)
    shim = types.SimpleNamespace(**{k: getattr(os, k) for k in dir(os) if k[0] != "_"})
    shim.write = write
    file_mod.os = shim
    i = 0
    while True:
        if i % 3 == 2:
            s.multi_set([f"{name}.{i}", f"{name}.m{i}"], [str(i).encode(), b"m" * 30])
        else:
            s.set(f"{name}.{i}", str(i).encode() * (1 + i % 5))
        sys.stdout.write(f"{i}\\n")
        sys.stdout.flush()
        i += 1
    """
)

N_KILLS = int(os.environ.get("MPDIST_TORN_TAIL_KILLS", "12"))


def _value(i: int) -> bytes:
    return str(i).encode() if i % 3 == 2 else str(i).encode() * (1 + i % 5)


def test_writers_killed_mid_append_lose_no_acknowledged_key(path):
    """Two writer processes at a time; each run one of them is killed, half the time in the
    middle of an append (a torn record), half the time by a SIGKILL sent at a random moment.
    The other keeps writing over the torn tail. Every key whose set() returned is there."""
    rng = random.Random(1717)
    acked: dict[str, int] = {}
    with FileStore(path, -1) as survivor:  # an instance that lives through every kill
        for kill in range(N_KILLS):
            victim, bystander = f"v{kill}", f"b{kill}"
            torn = kill % 2 == 0
            die_at = rng.randint(2, 40) if torn else 10**9
            procs = {
                name: subprocess.Popen(
                    [sys.executable, "-c", WRITER, path, name, str(at)],
                    stdout=subprocess.PIPE,
                    text=True,
                )
                for name, at in ((victim, die_at), (bystander, 10**9))
            }
            try:
                out = procs[victim].stdout
                assert out is not None
                acked[victim] = -1
                target = rng.randint(3, 30)
                for line in out:
                    acked[victim] = int(line)
                    if not torn and acked[victim] >= target:
                        time.sleep(rng.random() * 2e-3)
                        procs[victim].send_signal(signal.SIGKILL)
                        break
                assert procs[victim].wait(60) == -signal.SIGKILL
                for line in out:  # what it acknowledged before dying
                    acked[victim] = int(line)
                # the bystander writes on past the victim's death: read 20 more acks
                out_b = procs[bystander].stdout
                assert out_b is not None
                acked[bystander] = -1
                for line in out_b:
                    acked[bystander] = int(line)
                    if acked[bystander] >= 20 + rng.randint(0, 20):
                        break
                procs[bystander].send_signal(signal.SIGKILL)
                procs[bystander].wait(60)
                for line in out_b:
                    acked[bystander] = int(line)
            finally:
                for p in procs.values():
                    p.kill()
                    p.wait()
                    assert p.stdout is not None
                    p.stdout.close()
            with FileStore(path, -1) as fresh:
                for store in (survivor, fresh):
                    for name in (victim, bystander):
                        n = acked[name] + 1
                        keys = [f"{name}.{i}" for i in range(n)]
                        assert store.multi_get(keys) == [_value(i) for i in range(n)], (kill, name)
                fresh.set(f"after{kill}", b"1")
            assert survivor.get(f"after{kill}") == b"1"
    with open(path, "rb") as f:  # every torn tail was cut off, not left in the log
        _records(f.read())
