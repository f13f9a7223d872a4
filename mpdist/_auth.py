"""Proving knowledge of a shared secret on a new connection: the handshake of the store and mesh.

Both ends hold a key derived from a secret (:func:`derive_key`); neither ever sends it.
Three fixed-size messages, the connecting side (initiator) first::

    initiator -> responder   Hello(magic, claims, nonce)
    responder -> initiator   Reply(Hello(magic, claims, nonce), proof)
    initiator -> responder   Finish(proof)

Each proof is HMAC-SHA256 under the key over a label naming the side ("responder" or
"initiator") and both hellos, so it covers both fresh nonces (no replay), cannot be
reflected back at its sender, and authenticates the claims (fixed-size bytes whose meaning
is the caller's: nothing for the store, rank/flags/group id for the mesh). Proofs are
compared with ``hmac.compare_digest``. Sizes are fixed per use, so a responder reads at most
``wanted`` bytes before it has checked anything: a stranger's length prefix never makes it
allocate. :class:`Responder` and :class:`Initiator` do no I/O (the store server's selector
loop and the mesh's poll loop feed them); :func:`initiate` runs the initiator on a blocking
socket.

The job secret (:func:`job_secret`) comes from ``MPDIST_JOB_SECRET`` or from the 0600 file
named by ``MPDIST_JOB_SECRET_FILE``; it is never logged, and no error message shows it.
"""

from __future__ import annotations

import hashlib
import hmac
import ipaddress
import os
import secrets
import socket
import stat
import threading
import warnings
from collections.abc import Mapping
from typing import NamedTuple

__all__ = [
    "SECRET_ENV",
    "SECRET_FILE_ENV",
    "Finish",
    "Hello",
    "Initiator",
    "Refused",
    "Reply",
    "Responder",
    "derive_key",
    "initiate",
    "is_loopback",
    "job_secret",
    "new_secret",
    "note_refusal",
    "refusals",
    "secret_key",
    "warn_unauthenticated_bind",
]

SECRET_ENV = "MPDIST_JOB_SECRET"
SECRET_FILE_ENV = "MPDIST_JOB_SECRET_FILE"

MAGIC = b"MPA1"
NONCE_SIZE = 32
PROOF_SIZE = 32  # SHA-256
# A secret shorter than this is refused: it could be guessed from one captured handshake.
MIN_SECRET_BYTES = 16
# A responder drops a connection that has not finished the handshake this long after it
# was accepted (read when a connection is accepted, so tests may lower it).
HANDSHAKE_TIMEOUT_S = 10.0
# A responder keeps at most this many connections mid-handshake; the oldest goes first.
MAX_PENDING = 128


class Refused(Exception):
    """The peer did not complete the handshake: wrong key, garbage, or it hung up."""


class Hello(NamedTuple):
    """The first message of each side: who it claims to be and its fresh nonce."""

    magic: bytes
    claims: bytes
    nonce: bytes

    def encode(self) -> bytes:
        return self.magic + self.claims + self.nonce

    @classmethod
    def decode(cls, data: bytes, claims_size: int) -> Hello:
        if len(data) != len(MAGIC) + claims_size + NONCE_SIZE:
            raise Refused("hello of the wrong size")
        magic, rest = data[: len(MAGIC)], data[len(MAGIC) :]
        if magic != MAGIC:
            raise Refused("not an mpdist handshake")
        return cls(magic, rest[:claims_size], rest[claims_size:])


class Reply(NamedTuple):
    """The responder's answer: its own hello and its proof."""

    hello: Hello
    proof: bytes

    def encode(self) -> bytes:
        return self.hello.encode() + self.proof


class Finish(NamedTuple):
    """The initiator's last message: its proof."""

    proof: bytes

    def encode(self) -> bytes:
        return self.proof


def hello_size(claims_size: int) -> int:
    """Bytes of a hello carrying ``claims_size`` bytes of claims."""
    return len(MAGIC) + claims_size + NONCE_SIZE


def derive_key(secret: bytes, purpose: bytes) -> bytes:
    """The key one use of ``secret`` proves: a TCPStore, one group's mesh, ..."""
    return hmac.new(secret, b"mpdist-auth/" + purpose, hashlib.sha256).digest()


def _proof(key: bytes, label: bytes, initiator: Hello, responder: Hello) -> bytes:
    msg = label + initiator.encode() + responder.encode()
    return hmac.new(key, msg, hashlib.sha256).digest()


class Responder:
    """The accepting side, fed complete messages of ``wanted`` bytes (no I/O here)."""

    def __init__(self, key: bytes, claims: bytes = b"", peer_claims_size: int = 0) -> None:
        self._key = key
        self._claims = claims
        self._peer_claims_size = peer_claims_size
        self._theirs: Hello | None = None
        self._ours: Hello | None = None
        self.done = False
        self.wanted = hello_size(peer_claims_size)

    def plausible(self, start: bytes | bytearray) -> bool:
        """Whether the first bytes of a message may still be a hello (a stranger's frame is
        refused from its first bytes, not after the handshake timeout)."""
        if self._theirs is not None:
            return True
        n = min(len(start), len(MAGIC))
        return bytes(start[:n]) == MAGIC[:n]

    @property
    def peer_claims(self) -> bytes:
        """The initiator's claims (authenticated once ``done``)."""
        return b"" if self._theirs is None else self._theirs.claims

    def receive(self, message: bytes) -> bytes:
        """Take the next message; return the bytes to send back (``b""``: none).

        Raises :class:`Refused` when the message is not what a holder of the key sends.
        """
        if self._theirs is None:
            self._theirs = Hello.decode(message, self._peer_claims_size)
            self._ours = Hello(MAGIC, self._claims, secrets.token_bytes(NONCE_SIZE))
            self.wanted = PROOF_SIZE
            proof = _proof(self._key, b"responder", self._theirs, self._ours)
            return Reply(self._ours, proof).encode()
        if self.done or self._ours is None:
            raise Refused("message after the handshake")
        expected = _proof(self._key, b"initiator", self._theirs, self._ours)
        if len(message) != PROOF_SIZE or not hmac.compare_digest(Finish(message).proof, expected):
            raise Refused("wrong proof: the peer does not hold the key")
        self.done = True
        self.wanted = 0
        return b""


class Initiator:
    """The connecting side: send ``hello``, feed the reply of ``wanted`` bytes, send what it returns."""

    def __init__(self, key: bytes, claims: bytes = b"", peer_claims_size: int = 0) -> None:
        self._key = key
        self._peer_claims_size = peer_claims_size
        self._ours = Hello(MAGIC, claims, secrets.token_bytes(NONCE_SIZE))
        self.hello = self._ours.encode()
        self.wanted = hello_size(peer_claims_size) + PROOF_SIZE
        self.peer_claims = b""
        self.done = False

    def receive(self, message: bytes) -> bytes:
        """Check the responder's reply; return the finishing message to send.

        Raises :class:`Refused` if the responder does not hold the key.
        """
        if self.done or len(message) != self.wanted:
            raise Refused("reply of the wrong size")
        split = hello_size(self._peer_claims_size)
        reply = Reply(Hello.decode(message[:split], self._peer_claims_size), message[split:])
        expected = _proof(self._key, b"responder", self._ours, reply.hello)
        if not hmac.compare_digest(reply.proof, expected):
            raise Refused("wrong proof: the peer does not hold the key")
        self.peer_claims = reply.hello.claims
        self.done = True
        self.wanted = 0
        return Finish(_proof(self._key, b"initiator", self._ours, reply.hello)).encode()


def initiate(
    sock: socket.socket, key: bytes, claims: bytes = b"", peer_claims_size: int = 0
) -> bytes:
    """Run the initiator on a blocking ``sock`` (its timeout applies); the peer's claims.

    Raises :class:`Refused` (the peer failed the proof or hung up) or ``OSError``.
    """
    side = Initiator(key, claims, peer_claims_size)
    sock.sendall(side.hello)
    buf = bytearray()
    while len(buf) < side.wanted:
        chunk = sock.recv(side.wanted - len(buf))
        if not chunk:
            raise Refused("the peer closed the connection during the handshake")
        buf += chunk
    sock.sendall(side.receive(bytes(buf)))
    return side.peer_claims


# ---------------------------------------------------------------- the job secret
def new_secret() -> str:
    """A fresh job secret: 32 random bytes, as hex (so it fits an environment variable)."""
    return secrets.token_hex(32)


def secret_key(secret: bytes | str, where: str = "secret") -> bytes:
    """``secret`` as key material; ``ValueError`` (not showing it) if it is too short."""
    raw = secret.encode() if isinstance(secret, str) else bytes(secret)
    if len(raw) < MIN_SECRET_BYTES:
        raise ValueError(
            f"{where} is too short ({len(raw)} bytes; at least {MIN_SECRET_BYTES}): make one "
            "with  python -c 'import secrets; print(secrets.token_hex(32))'"
        )
    return raw


def _read_secret_file(path: str) -> bytes:
    try:
        fd = os.open(path, os.O_RDONLY | getattr(os, "O_CLOEXEC", 0))
    except OSError as e:
        raise ValueError(f"{SECRET_FILE_ENV}: cannot open {path!r}: {e.strerror or e}") from None
    try:
        st = os.fstat(fd)
        mode = stat.S_IMODE(st.st_mode)
        if not stat.S_ISREG(st.st_mode):
            raise ValueError(f"{SECRET_FILE_ENV}: {path!r} is not a regular file")
        if st.st_uid != os.geteuid():
            raise ValueError(
                f"{SECRET_FILE_ENV}: {path!r} belongs to uid {st.st_uid}, not to this user"
            )
        if mode & 0o077:
            raise ValueError(
                f"{SECRET_FILE_ENV}: {path!r} has mode {mode:04o}: others may read it; "
                f"chmod 600 {path}"
            )
        data = b""
        while chunk := os.read(fd, 4096):
            data += chunk
    finally:
        os.close(fd)
    return secret_key(data.strip(), f"the secret in {path!r}")


def job_secret(env: Mapping[str, str] | None = None) -> bytes | None:
    """The job's secret from ``MPDIST_JOB_SECRET`` or ``MPDIST_JOB_SECRET_FILE``; None if neither.

    Setting both is a ``ValueError`` (which one is meant?); so is a secret shorter than
    16 bytes, and a file that others may read or that belongs to another user.
    """
    env = os.environ if env is None else env
    text = env.get(SECRET_ENV, "")
    path = env.get(SECRET_FILE_ENV, "")
    if text and path:
        raise ValueError(f"both {SECRET_ENV} and {SECRET_FILE_ENV} are set: set one")
    if text:
        return secret_key(text.strip(), SECRET_ENV)
    if path:
        return _read_secret_file(path)
    return None


# ---------------------------------------------------------------- what tests can read
_lock = threading.Lock()
_refused: dict[str, int] = {}


def note_refusal(listener: str) -> None:
    """Count one connection refused by a kind of listener ("tcpstore", "mesh")."""
    with _lock:
        _refused[listener] = _refused.get(listener, 0) + 1


def refusals(listener: str) -> int:
    """How many connections listeners of that kind refused in this process so far."""
    with _lock:
        return _refused.get(listener, 0)


# ---------------------------------------------------------------- open listeners
_warned = False


def is_loopback(host: str) -> bool:
    """Whether a bound address (as ``getsockname`` gives it) is reachable from this host only."""
    try:
        return ipaddress.ip_address(host.split("%", 1)[0]).is_loopback
    except ValueError:
        return False


def warn_unauthenticated_bind(what: str, address: str) -> None:
    """Warn, once per process, that ``what`` listens beyond loopback without a secret."""
    global _warned
    with _lock:
        if _warned:
            return
        _warned = True
    warnings.warn(
        f"{what} listens on {address} without a secret: anyone who can reach that port "
        f"can read and write its keys. Set {SECRET_ENV} (or {SECRET_FILE_ENV}) on every "
        "rank, or pass secret=.",
        RuntimeWarning,
        stacklevel=3,
    )
