"""TCPStore with a secret: a stranger cannot read or write a key, is refused and counted,
and the job carries on; without one it stays open (torch compatibility) and warns when it
listens beyond loopback."""

from __future__ import annotations

import os
import socket
import time
import warnings
from datetime import timedelta

import numpy as np
import pytest

import mpdist as dist
from mpdist import _auth
from mpdist.errors import DistError, DistNetworkError, DistStoreError
from mpdist.store import TCPStore
from mpdist.store import _protocol as proto
from mpdist.testing import spawn_ranks

SECRET = "job-secret-for-the-tests-" + "0" * 16
SHORT = timedelta(seconds=5)


def closed_without_answer(sock: socket.socket) -> bool:
    """Whether the peer closed ``sock`` having sent nothing (a reset counts as closed)."""
    sock.settimeout(10)
    try:
        return sock.recv(1 << 16) == b""
    except ConnectionResetError:
        return True


@pytest.fixture
def master(monkeypatch):
    monkeypatch.delenv(_auth.SECRET_ENV, raising=False)
    monkeypatch.delenv(_auth.SECRET_FILE_ENV, raising=False)
    store = TCPStore("127.0.0.1", 0, is_master=True, secret=SECRET, wait_for_workers=False)
    store.set("model/secret", b"weights")
    yield store
    store.close()


def test_a_client_with_the_secret_reads_and_writes(master) -> None:
    client = TCPStore("127.0.0.1", master.port, secret=SECRET.encode(), timeout=SHORT)
    assert client.authenticated and master.authenticated
    assert client.get("model/secret") == b"weights"
    client.set("k", b"v")
    assert master.get("k") == b"v"
    assert master.refused_connections == 0
    client.close()


def test_a_raw_stranger_cannot_write_or_read_and_is_counted(master) -> None:
    before = _auth.refusals("tcpstore")
    frames = [
        proto.encode_frame(proto.Op.SET, [b"model/secret", b"poison"]),
        proto.encode_frame(proto.Op.GET, [proto.encode_timeout(1.0), b"model/secret"]),
        proto.encode_frame(proto.Op.NUM_KEYS, []),
    ]
    for frame in frames:
        with socket.create_connection(("127.0.0.1", master.port)) as s:
            s.sendall(frame)
            assert closed_without_answer(s)
    assert master.refused_connections == 3
    assert _auth.refusals("tcpstore") == before + 3
    assert master.get("model/secret") == b"weights"  # not poisoned
    assert master.num_keys() == 1  # nothing was added either


def test_a_client_without_or_with_a_wrong_secret_is_refused(master) -> None:
    with pytest.raises(DistNetworkError, match="set MPDIST_JOB_SECRET or pass secret=") as e:
        TCPStore("127.0.0.1", master.port, timeout=SHORT).get("model/secret")
    assert SECRET not in str(e.value)
    with pytest.raises(DistStoreError, match="authentication with the server .* failed") as e:
        TCPStore("127.0.0.1", master.port, secret="another-secret-0123456789", timeout=SHORT)
    assert SECRET not in str(e.value) and "another-secret" not in str(e.value)
    # that client hung up on seeing the server's proof fail; the server counts it on the EOF
    deadline = time.monotonic() + 10
    while master.refused_connections < 2 and time.monotonic() < deadline:
        time.sleep(0.01)
    assert master.refused_connections == 2
    master.set("after", b"1")
    assert master.get("after") == b"1"


def test_a_client_with_a_secret_meets_an_open_server_with_a_clear_error(monkeypatch) -> None:
    monkeypatch.delenv(_auth.SECRET_ENV, raising=False)
    open_master = TCPStore("127.0.0.1", 0, is_master=True, wait_for_workers=False)
    try:
        assert not open_master.authenticated
        with pytest.raises(DistStoreError, match="has no secret or a different one"):
            TCPStore("127.0.0.1", open_master.port, secret=SECRET, timeout=SHORT)
    finally:
        open_master.close()


def test_the_secret_comes_from_the_environment(monkeypatch, tmp_path) -> None:
    monkeypatch.setenv(_auth.SECRET_ENV, SECRET)
    m = TCPStore("127.0.0.1", 0, is_master=True, wait_for_workers=False)
    try:
        assert m.authenticated
        assert TCPStore("127.0.0.1", m.port, secret=SECRET).check([]) is True
        f = tmp_path / "secret"
        f.write_text(SECRET)
        f.chmod(0o600)
        monkeypatch.delenv(_auth.SECRET_ENV)
        monkeypatch.setenv(_auth.SECRET_FILE_ENV, str(f))
        c = TCPStore("127.0.0.1", m.port, timeout=SHORT)
        m.set("x", b"1")
        assert c.get("x") == b"1"
    finally:
        m.close()


def test_bad_secret_arguments_fail_before_anything_opens(monkeypatch) -> None:
    with pytest.raises(TypeError, match="secret must be bytes or str, got int"):
        TCPStore("127.0.0.1", 0, is_master=True, secret=123)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="TCPStore secret is too short"):
        TCPStore("127.0.0.1", 0, is_master=True, secret="short")
    monkeypatch.setenv(_auth.SECRET_ENV, "tiny")
    with pytest.raises(ValueError, match="MPDIST_JOB_SECRET is too short"):
        TCPStore("127.0.0.1", 0, is_master=True)


def test_open_server_beyond_loopback_warns_once_per_process(monkeypatch) -> None:
    monkeypatch.delenv(_auth.SECRET_ENV, raising=False)
    monkeypatch.setattr(_auth, "_warned", False)
    with warnings.catch_warnings(record=True) as got:
        warnings.simplefilter("always")
        for _ in range(2):
            TCPStore("0.0.0.0", 0, is_master=True, wait_for_workers=False).close()
        TCPStore("127.0.0.1", 0, is_master=True, wait_for_workers=False).close()
        TCPStore("0.0.0.0", 0, is_master=True, secret=SECRET, wait_for_workers=False).close()
    texts = [str(w.message) for w in got if issubclass(w.category, RuntimeWarning)]
    assert len(texts) == 1, texts
    assert "TCPStore listens on 0.0.0.0:" in texts[0] and "without a secret" in texts[0]
    # loopback only: no warning at all
    monkeypatch.setattr(_auth, "_warned", False)
    with warnings.catch_warnings(record=True) as got:
        warnings.simplefilter("always")
        TCPStore("127.0.0.1", 0, is_master=True, wait_for_workers=False).close()
    assert not [w for w in got if issubclass(w.category, RuntimeWarning)]


def test_a_stalled_handshake_is_dropped_after_the_timeout(master, monkeypatch) -> None:
    monkeypatch.setattr(_auth, "HANDSHAKE_TIMEOUT_S", 0.3)
    with socket.create_connection(("127.0.0.1", master.port)) as s:
        s.sendall(_auth.MAGIC)  # a plausible start, then nothing
        t0 = time.monotonic()
        assert closed_without_answer(s)
        assert time.monotonic() - t0 < 5
    assert master.refused_connections == 1


# ---------------------------------------------------------------- real ranks
def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def job_with_strangers(rank: int, world_size: int, port: int) -> tuple[float, int]:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), MPDIST_JOB_SECRET=SECRET)
    if rank == world_size - 1:
        # before joining, strangers knock on the master's store: refused, nothing read
        deadline = time.monotonic() + 30
        while True:
            try:
                raw = socket.create_connection(("127.0.0.1", port), timeout=10)
                break
            except OSError:
                assert time.monotonic() < deadline
                time.sleep(0.05)
        with raw:
            raw.sendall(proto.encode_frame(proto.Op.NUM_KEYS, []))
            assert closed_without_answer(raw)
        with pytest.raises(DistError):
            TCPStore("127.0.0.1", port, secret="not-the-job-secret-xx", timeout=SHORT)
    dist.init_process_group("tcp", init_method="env://", rank=rank, world_size=world_size)
    a = np.full(3, rank + 1.0)
    dist.all_reduce(a)
    dist.destroy_process_group()
    return float(a[0]), _auth.refusals("tcpstore")


def test_strangers_are_refused_while_a_real_job_carries_on() -> None:
    results = spawn_ranks(job_with_strangers, 3, _free_port(), backend=None)
    assert [r[0] for r in results] == [6.0] * 3
    assert results[0][1] == 2  # rank 0 runs the store: it refused both strangers
