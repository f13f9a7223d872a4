"""The ``tcp`` backend (alias ``gloo``): one process per rank, collectives over a TCP mesh."""

from __future__ import annotations

import contextlib
import socket
from typing import Any

from mpdist.transport.tcp import TcpTransport

from .comm import CommProcessGroup
from .group_store import GroupStore

__all__ = ["TcpProcessGroup"]

# TcpTransport's store key for a rank's listening address ("host:port")
_ADDR_KEY = "mpdist_tcp/addr/{}"


class _AbortableSetup:
    """A store proxy for ``TcpTransport._connect_mesh`` that remembers this rank's address."""

    def __init__(self, store: Any, key: str) -> None:
        self._store = store
        self._key = key
        self.addr: str | None = None

    def set(self, key: str, value: bytes | str) -> None:
        self._store.set(key, value)
        if key == self._key:
            self.addr = value.decode() if isinstance(value, bytes) else value

    def __getattr__(self, name: str) -> Any:
        return getattr(self._store, name)


class _Transport(TcpTransport):
    """TcpTransport whose mesh setup an abort of the group's store interrupts.

    The store waits are ``GroupStore``'s to interrupt. While it waits for peers to connect,
    the transport polls its listener (not its wake-up socket) with the group's timeout,
    checking for an abort only when poll returns; so an abort then also connects to the
    listener once, which makes poll return and the setup raise ``DistBackendError(reason)``.
    """

    def _connect_mesh(self, store: Any) -> None:
        if not isinstance(store, GroupStore):
            super()._connect_mesh(store)
            return
        setup = _AbortableSetup(store, _ADDR_KEY.format(self.rank))

        def abort(reason: str) -> None:
            self.abort(reason)
            addr = setup.addr
            if addr is not None and self._listening:
                host, _, port = addr.rpartition(":")
                # refused once the listener is closed: the mesh is complete, nothing to wake
                with contextlib.suppress(OSError):
                    socket.create_connection((host, int(port)), timeout=1.0).close()

        self._listening = True
        store.add_abort_callback(abort)
        try:
            super()._connect_mesh(setup)
        finally:
            self._listening = False


class TcpProcessGroup(CommProcessGroup):
    """A process group over ``TcpTransport``: ``TcpProcessGroup(store, rank, size, timeout)``.

    ``store`` must be unique to the group (a ``PrefixStore``): the transport publishes this
    rank's address and the group's secret there.
    """

    backend_name = "tcp"
    transport_class = _Transport
