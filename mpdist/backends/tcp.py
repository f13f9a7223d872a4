"""The ``tcp`` backend (alias ``gloo``): one process per rank, collectives over a TCP mesh."""

from __future__ import annotations

from mpdist.transport.tcp import TcpTransport

from .comm import CommProcessGroup

__all__ = ["TcpProcessGroup"]


class TcpProcessGroup(CommProcessGroup):
    """A process group over ``TcpTransport``: ``TcpProcessGroup(store, rank, size, timeout)``.

    ``store`` must be unique to the group (a ``PrefixStore``): the transport publishes this
    rank's address and the group's secret there.
    """

    backend_name = "tcp"
    transport_class = TcpTransport
