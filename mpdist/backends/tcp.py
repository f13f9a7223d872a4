"""The ``tcp`` backend (alias ``gloo``): one process per rank, collectives over a TCP mesh."""

from __future__ import annotations

from typing import Any

from mpdist.transport.tcp import TcpTransport

from .comm import CommProcessGroup
from .group_store import GroupStore

__all__ = ["TcpProcessGroup"]


class _Transport(TcpTransport):
    """TcpTransport whose mesh setup an abort of the group's store interrupts.

    The store waits are ``GroupStore``'s to interrupt; the wait for peers to connect is the
    transport's, so its ``abort`` is registered with the store before the mesh is built.
    """

    def _connect_mesh(self, store: Any) -> None:
        if isinstance(store, GroupStore):
            store.add_abort_callback(self.abort)
        super()._connect_mesh(store)


class TcpProcessGroup(CommProcessGroup):
    """A process group over ``TcpTransport``: ``TcpProcessGroup(store, rank, size, timeout)``.

    ``store`` must be unique to the group (a ``PrefixStore``): the transport publishes this
    rank's address and the group's secret there.
    """

    backend_name = "tcp"
    transport_class = _Transport
