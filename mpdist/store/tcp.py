"""``TCPStore``: a store served over TCP by a thread of the master rank.

The master runs the server (``_tcp_server``: one thread that owns the dict and parks the
requests that must block until they can be answered); every instance, the master's too,
talks to it through a client (``_tcp_client``: a small pool of connections, so that several
threads may block at once), in the frames of ``_protocol``. This module is the ``Store``
on top: construction (all or nothing, abortable while it meets the master), the hooks
and their errors.

With a secret (``secret=``, else the job's: ``MPDIST_JOB_SECRET`` or
``MPDIST_JOB_SECRET_FILE``), every connection to the server first proves it holds it
(``mpdist._auth``); without one the store is open to anyone who can reach the port, as
torch's is, and binding it beyond loopback warns once per process.
"""

from __future__ import annotations

import weakref
from datetime import timedelta

from mpdist import _auth, aborts
from mpdist.errors import DistNetworkError, DistStoreError
from mpdist.store import _protocol as proto
from mpdist.store._protocol import Op, Status
from mpdist.store._tcp_client import Client
from mpdist.store._tcp_server import Server
from mpdist.store.base import DEFAULT_TIMEOUT, Store

__all__ = ["INIT_KEY", "TCPStore", "abort_pending"]

# Counter every instance bumps when world_size is given; num_keys counts it.
INIT_KEY = "init/"

# Extra time a client waits for the server's own timeout answer before it gives up
# on the connection (the server, not the client, decides that a wait timed out).
_GRACE_S = 5.0


def abort_pending(reason: str) -> int:
    """Abort every TCPStore of this process still being constructed; return how many.

    That is, every instance still connecting to its master (retrying until the master
    listens), joining it, or, as master, waiting for its clients: the rendezvous of
    ``init_process_group`` with ``env://`` or ``tcp://``. Each raises ``DistStoreError``
    naming the master's address and ``reason``. Safe from any thread. (A constructing
    TCPStore is registered in mpdist.aborts, so the harness's abort reaches it too.)
    """
    if not isinstance(reason, str):
        raise TypeError(f"abort reason must be a str, got {type(reason).__name__}")
    stores = [t.obj for t in aborts.targets() if isinstance(t.obj, TCPStore)]
    for store in stores:
        store.abort(reason)
    return len(stores)


def _shutdown(client: Client | None, server: Server | None) -> None:
    if client is not None:
        client.close()
    if server is not None:
        server.stop()


class TCPStore(Store):
    """A store served over TCP; the master (``is_master=True``) runs the server.

    ``port=0`` on the master lets the OS pick a free port, reported by ``.port``.
    With ``world_size`` given, every instance counts itself in the ``"init/"`` key and
    the master (if ``wait_for_workers``) waits until ``world_size`` instances joined.
    ``secret`` (bytes or str, at least 16 bytes; default: the job secret from the
    environment, if any) makes every connection authenticate: a client without it, or
    with another, is refused before it can read or write a key.
    """

    def __init__(
        self,
        host_name: str,
        port: int,
        world_size: int | None = None,
        is_master: bool = False,
        timeout: timedelta = DEFAULT_TIMEOUT,
        wait_for_workers: bool = True,
        *,
        secret: bytes | str | None = None,
    ) -> None:
        if not isinstance(host_name, str):
            raise TypeError(f"TCPStore host must be a str, got {type(host_name).__name__}")
        if not isinstance(port, int) or isinstance(port, bool):
            raise TypeError(f"TCPStore port must be an int, got {type(port).__name__}")
        if not 0 <= port <= 65535:
            raise ValueError(f"TCPStore port must be in 0..65535, got {port}")
        if world_size is not None and (
            not isinstance(world_size, int) or isinstance(world_size, bool)
        ):
            raise TypeError(f"TCPStore world_size must be an int, got {type(world_size).__name__}")
        if world_size is not None and world_size < 1:
            raise ValueError(f"TCPStore world_size must be >= 1, got {world_size}")
        if not is_master and port == 0:
            raise ValueError("TCPStore: a client needs the master's port (port=0 is master-only)")
        if secret is not None and not isinstance(secret, (bytes, str)):
            raise TypeError(f"TCPStore secret must be bytes or str, got {type(secret).__name__}")
        raw = _auth.job_secret() if secret is None else _auth.secret_key(secret, "TCPStore secret")
        key = None if raw is None else _auth.derive_key(raw, b"tcpstore")
        super().__init__(timeout)
        self._host = host_name
        self._world_size = world_size
        self._is_master = bool(is_master)
        self._port = port
        # The client exists (holding nothing) before anything can block, so that
        # abort() can end the construction from another thread at any point.
        self._client: Client | None = Client(host_name, port, key)
        self._server: Server | None = None
        # Registered while it is built: an abort (mpdist.aborts) ends the construction.
        aborts.register(self, self.abort, f"TCPStore {host_name}:{port}")
        try:
            if is_master:
                # "localhost" and friends bind loopback; only an explicit address listens wider.
                self._server = Server(host_name, port, key)
                self._port = self._client.port = self._server.port
                bound = self._server.listener.getsockname()[0]
                if key is None and not _auth.is_loopback(bound):
                    _auth.warn_unauthenticated_bind("TCPStore", f"{bound}:{self._port}")
            self._client.open(self._timeout_s())
            if world_size is not None:
                self._add(INIT_KEY, 1)
                if is_master and wait_for_workers:
                    self._wait_for_workers(world_size)
            aborts.unregister(self)
            if self._client.closed:  # aborted after its last wait: no half-dead store
                raise self._client.closed_error("connecting to the master")
            self._finalizer = weakref.finalize(self, _shutdown, self._client, self._server)
        except BaseException:
            # All or nothing: every socket and the server thread go, the error propagates.
            aborts.unregister(self)
            _shutdown(self._client, self._server)
            raise

    def abort(self, reason: str) -> None:
        """From any thread: this instance's pending and later requests raise at once.

        A construction still connecting to the master (or, on the master, waiting for its
        clients) raises ``DistStoreError`` naming the master's address and ``reason``, and
        leaves no socket or thread behind. On a built master the server goes on serving
        the other instances until ``close()``.
        """
        if not isinstance(reason, str):
            raise TypeError(f"abort reason must be a str, got {type(reason).__name__}")
        client = self._client
        if client is not None:
            client.close(reason)

    def _wait_for_workers(self, world_size: int) -> None:
        timeout = self._timeout_s()
        status, f = self._call(
            Op.WAIT_COUNT,
            [proto.encode_timeout(timeout), INIT_KEY.encode(), str(world_size).encode()],
            wait=timeout,
        )
        if status == Status.TIMEOUT:
            joined = int(f[0]) if f and f[0].lstrip(b"-").isdigit() else 0
            raise DistStoreError(
                f"Timed out after {timeout:g} seconds waiting for clients. "
                f"{joined}/{world_size} clients joined."
            )

    @property
    def host(self) -> str:
        """The server's host."""
        return self._host

    @property
    def port(self) -> int:
        """The server's port (the one the OS picked when created with port 0)."""
        return self._port

    @property
    def authenticated(self) -> bool:
        """Whether connections to the server prove they hold a secret."""
        return self._client is not None and self._client.key is not None

    @property
    def refused_connections(self) -> int:
        """On the master: connections its server refused (failed or stalled handshakes)."""
        return 0 if self._server is None else self._server.refused

    @property
    def world_size(self) -> int | None:
        """The number of instances the master waits for, or None."""
        return self._world_size

    @property
    def is_master(self) -> bool:
        """True for the instance that runs the server."""
        return self._is_master

    def __repr__(self) -> str:
        role = "master" if self._is_master else "client"
        return f"TCPStore({self._host!r}, {self._port}, {role})"

    # ------------------------------------------------------------ plumbing
    def _call(
        self, op: Op, fields: list[bytes], wait: float | None | bool = False
    ) -> tuple[int, list[bytes]]:
        # wait=False: a quick op, bounded by the store timeout; else the op may park on
        # the server for `wait` seconds (None: forever) and we allow a grace on top.
        if self._closed or self._client is None:
            raise DistStoreError(f"TCPStore {self._host}:{self._port} is closed")
        connect_timeout = self._timeout_s()
        if wait is False:
            reply_timeout = connect_timeout
        else:
            reply_timeout = None if wait is None else float(wait) + _GRACE_S
        try:
            status, f = self._client.call(op, fields, reply_timeout, connect_timeout)
        except DistNetworkError as e:
            if self._server is None:
                raise
            # The server runs in this process: losing it is this process's own failure (its
            # sockets or its server thread went), not a lost peer's; every client loses it.
            raise DistStoreError(f"{e} (the server runs in this process)") from None
        if status == Status.ERROR:
            raise DistStoreError(f[0].decode(errors="replace") if f else "TCPStore server error")
        return status, f

    def _blocking(self, op: Op, name: str, keys: list[str], timeout: float | None) -> list[bytes]:
        status, f = self._call(
            op, [proto.encode_timeout(timeout)] + [k.encode() for k in keys], wait=timeout
        )
        if status == Status.TIMEOUT:
            missing = [k.decode(errors="replace") for k in f] or keys
            raise self._timeout_error(name, missing, timeout)
        return f

    # ------------------------------------------------------------ hooks
    def _set(self, key: str, value: bytes) -> None:
        self._call(Op.SET, [key.encode(), value])

    def _get(self, key: str, timeout: float | None) -> bytes:
        return self._blocking(Op.GET, "get", [key], timeout)[0]

    def _wait(self, keys: list[str], timeout: float | None) -> None:
        self._blocking(Op.WAIT, "wait", keys, timeout)

    def _multi_get(self, keys: list[str], timeout: float | None) -> list[bytes]:
        if not keys:
            return []
        return self._blocking(Op.MULTI_GET, "multi_get", keys, timeout)

    def _check(self, keys: list[str]) -> bool:
        return self._call(Op.CHECK, [k.encode() for k in keys])[1][0] == b"1"

    def _add(self, key: str, amount: int) -> int:
        return int(self._call(Op.ADD, [key.encode(), str(amount).encode()])[1][0])

    def _compare_set(self, key: str, expected: bytes, desired: bytes) -> bytes:
        return self._call(Op.COMPARE_SET, [key.encode(), expected, desired])[1][0]

    def _delete_key(self, key: str) -> bool:
        return self._call(Op.DELETE_KEY, [key.encode()])[1][0] == b"1"

    def _num_keys(self) -> int:
        return int(self._call(Op.NUM_KEYS, [])[1][0])

    def _append(self, key: str, value: bytes) -> None:
        self._call(Op.APPEND, [key.encode(), value])

    def _multi_set(self, keys: list[str], values: list[bytes]) -> None:
        fields: list[bytes] = []
        for k, v in zip(keys, values, strict=True):
            fields += (k.encode(), v)
        self._call(Op.MULTI_SET, fields)

    def _close(self) -> None:
        self._finalizer()
