"""The TCP mesh: nothing secret in the store, and a stranger cannot join."""

from __future__ import annotations

import contextlib
import socket
import threading

import numpy as np
import pytest

import mpdist.algorithms as A
from mpdist import _auth
from mpdist.store import HashStore
from mpdist.transport import TcpTransport
from mpdist.transport.mesh import Claims, initiate

SECRET = "mesh-tests-job-secret-0123456789"


def two_ranks_with(store: HashStore, stranger) -> dict[int, float]:
    """Rank 0 and 1 of a mesh as threads; ``stranger(host, port)`` knocks on rank 0 first."""
    results: dict[int, float] = {}
    errors: list[BaseException] = []

    def rank(r: int) -> None:
        try:
            t = TcpTransport(store, r, 2, 20.0, shm=False).connect()
            try:
                x = np.array([r + 1.0])
                A.allreduce(A.Communicator(t, 20.0), x)
                results[r] = float(x[0])
            finally:
                t.close()
        except BaseException as e:  # re-raised below
            errors.append(e)

    th0 = threading.Thread(target=rank, args=(0,))
    th0.start()
    host, _, port = store.get("mpdist_tcp/addr/0").decode().rpartition(":")
    try:
        stranger(host, int(port))
    finally:
        th1 = threading.Thread(target=rank, args=(1,))
        th1.start()
        th0.join(30)
        th1.join(30)
    assert not errors, errors
    return results


def test_with_a_job_secret_the_store_holds_only_the_group_id(monkeypatch) -> None:
    monkeypatch.setenv(_auth.SECRET_ENV, SECRET)
    store = HashStore()
    assert two_ranks_with(store, lambda host, port: None) == {0: 3.0, 1: 3.0}
    assert len(bytes.fromhex(store.get("mpdist_tcp/token").decode())) == 16


@pytest.mark.parametrize("with_job_secret", [True, False])
def test_a_stranger_without_the_key_cannot_join_knowing_the_group_id(
    monkeypatch, with_job_secret
) -> None:
    if with_job_secret:
        monkeypatch.setenv(_auth.SECRET_ENV, SECRET)
    else:
        monkeypatch.delenv(_auth.SECRET_ENV, raising=False)
    store = HashStore()
    before = _auth.refusals("mesh")
    outcome: list[str] = []

    def stranger(host: str, port: int) -> None:
        # knows the group id (it is in the store), claims to be rank 1, lacks the key
        gid = bytes.fromhex(store.get("mpdist_tcp/token").decode())[:16]
        guessed = _auth.derive_key(b"not-the-secret-0123456789", b"mesh/" + gid)
        with socket.create_connection((host, port), timeout=10) as s:
            try:
                initiate(s, guessed, Claims(1, 0, gid))
                outcome.append("joined")
            except _auth.Refused:
                outcome.append("refused")  # rank 0's proof does not check out
            # and the proof it would have to send back: rank 0 closes the connection
            s.sendall(b"\0" * _auth.PROOF_SIZE)
            with contextlib.suppress(ConnectionResetError):
                assert s.recv(100) == b""

    assert two_ranks_with(store, stranger) == {0: 3.0, 1: 3.0}
    assert outcome == ["refused"]
    assert _auth.refusals("mesh") == before + 1
