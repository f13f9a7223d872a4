"""mpdist._auth's handshake on its own: who passes, who is refused, and why."""

from __future__ import annotations

import socket
import threading

import pytest

from mpdist import _auth

KEY = _auth.derive_key(b"s" * 32, b"test")


def run(initiator: _auth.Initiator, responder: _auth.Responder) -> bytes:
    """Pass the three messages; returns the responder's last answer."""
    reply = responder.receive(initiator.hello)
    assert len(reply) == initiator.wanted
    finish = initiator.receive(reply)
    return responder.receive(finish)


def test_holders_of_the_key_authenticate_each_other_and_their_claims() -> None:
    i = _auth.Initiator(KEY, b"I-claims", 9)
    r = _auth.Responder(KEY, b"R-claims!", 8)
    assert run(i, r) == b""
    assert i.done and r.done
    assert r.peer_claims == b"I-claims" and i.peer_claims == b"R-claims!"


def test_a_different_key_is_refused_on_both_sides() -> None:
    other = _auth.derive_key(b"t" * 32, b"test")
    # the initiator sees the responder's proof is wrong
    with pytest.raises(_auth.Refused, match="wrong proof"):
        _auth.Initiator(other).receive(_auth.Responder(KEY).receive(_auth.Initiator(other).hello))
    # the responder sees the initiator's proof is wrong (a stranger that skips the check)
    r = _auth.Responder(KEY)
    i = _auth.Initiator(other)
    reply = r.receive(i.hello)
    forged = _auth.Initiator(other)
    forged._ours = i._ours  # same hello, so only the key differs
    with pytest.raises(_auth.Refused):
        forged.receive(reply)
    with pytest.raises(_auth.Refused, match="wrong proof"):
        r.receive(b"\0" * _auth.PROOF_SIZE)
    assert not r.done


def test_the_secret_derives_distinct_keys_per_purpose() -> None:
    assert _auth.derive_key(b"s" * 32, b"a") != _auth.derive_key(b"s" * 32, b"b")
    assert _auth.derive_key(b"s" * 32, b"a") != _auth.derive_key(b"t" * 32, b"a")


def test_a_proof_cannot_be_replayed_or_reflected() -> None:
    # replay: a finish recorded from one handshake fails the next (fresh responder nonce)
    i1, r1 = _auth.Initiator(KEY), _auth.Responder(KEY)
    recorded_hello = i1.hello
    recorded_finish = i1.receive(r1.receive(recorded_hello))
    r2 = _auth.Responder(KEY)
    r2.receive(recorded_hello)
    with pytest.raises(_auth.Refused):
        r2.receive(recorded_finish)
    # reflection: the responder's own proof sent back as the initiator's is refused
    r3 = _auth.Responder(KEY)
    i3 = _auth.Initiator(KEY)
    reply = r3.receive(i3.hello)
    with pytest.raises(_auth.Refused):
        r3.receive(reply[-_auth.PROOF_SIZE :])


def test_garbage_is_refused_from_its_first_bytes() -> None:
    r = _auth.Responder(KEY)
    assert r.plausible(b"") and r.plausible(b"MP") and r.plausible(b"MPA1xyz")
    assert not r.plausible(b"MS") and not r.plausible(b"\x00")
    with pytest.raises(_auth.Refused):
        r.receive(b"X" * r.wanted)
    with pytest.raises(_auth.Refused):
        _auth.Responder(KEY).receive(b"MPA1")  # truncated hello


def test_initiate_over_a_socket_and_a_peer_that_hangs_up() -> None:
    a, b = socket.socketpair()
    with a, b:
        r = _auth.Responder(KEY)

        def respond() -> None:
            b.sendall(r.receive(b.recv(r.wanted, socket.MSG_WAITALL)))
            r.receive(b.recv(r.wanted, socket.MSG_WAITALL))

        th = threading.Thread(target=respond)
        th.start()
        a.settimeout(10)
        assert _auth.initiate(a, KEY) == b""
        th.join(10)
        assert r.done
    c, d = socket.socketpair()
    with c:
        d.close()
        with pytest.raises((_auth.Refused, OSError)):
            _auth.initiate(c, KEY)


def test_job_secret_from_the_environment_or_a_private_file(tmp_path) -> None:
    assert _auth.job_secret({}) is None
    assert _auth.job_secret({"MPDIST_JOB_SECRET": "x" * 20}) == b"x" * 20
    f = tmp_path / "secret"
    f.write_text("y" * 64 + "\n")
    f.chmod(0o600)
    assert _auth.job_secret({"MPDIST_JOB_SECRET_FILE": str(f)}) == b"y" * 64
    f.chmod(0o644)
    with pytest.raises(ValueError, match=r"has mode 0644: others may read it") as e:
        _auth.job_secret({"MPDIST_JOB_SECRET_FILE": str(f)})
    assert "y" * 16 not in str(e.value)
    with pytest.raises(ValueError, match="both MPDIST_JOB_SECRET and MPDIST_JOB_SECRET_FILE"):
        _auth.job_secret({"MPDIST_JOB_SECRET": "x" * 20, "MPDIST_JOB_SECRET_FILE": str(f)})
    with pytest.raises(ValueError, match=r"too short \(5 bytes") as e:
        _auth.job_secret({"MPDIST_JOB_SECRET": "hunt2"})
    assert "hunt2" not in str(e.value)
    with pytest.raises(ValueError, match="cannot open"):
        _auth.job_secret({"MPDIST_JOB_SECRET_FILE": str(tmp_path / "missing")})
    assert len(bytes.fromhex(_auth.new_secret())) == 32
    assert _auth.new_secret() != _auth.new_secret()
