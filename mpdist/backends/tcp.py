"""The ``tcp`` backend (alias ``gloo``): one process per rank, collectives over a TCP mesh."""

from __future__ import annotations

from datetime import timedelta

from mpdist.store import Store
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

    def __init__(
        self,
        store: Store,
        rank: int,
        size: int,
        timeout: timedelta,
        *,
        global_ranks: list[int] | None = None,
    ) -> None:
        # Construct, register for abort, connect: the base class makes the transport (which
        # connects nothing yet) and registers its abort with the group's store, so an abort
        # of a group still being built stops the connect below, however far it got.
        super().__init__(store, rank, size, timeout, global_ranks=global_ranks)
        self._transport.connect()  # closes the transport if it fails
