"""A TCPStore that loses its own in-process server fails as itself, not as a lost peer.

Losing the server is a lost peer (``DistNetworkError``, which the harness counts as a
consequence of another rank's failure) for a client; for the master, whose server runs in
its own process, it is that process's own failure (its sockets or its server thread went:
a ``DistStoreError``). Found by the fault campaign: rank 0, hosting the store, shut its
sockets, and the harness blamed the rank that noticed first.
"""

from __future__ import annotations

import socket
from datetime import timedelta

import psutil
import pytest

from mpdist.errors import DistNetworkError, DistStoreError
from mpdist.store import TCPStore

LOCAL = "127.0.0.1"


def _shut(conns: list) -> None:
    assert conns
    for c in conns:
        s = socket.socket(fileno=c.fd)
        try:
            s.shutdown(socket.SHUT_RDWR)
        finally:
            s.detach()


def _tcp() -> list:
    return psutil.Process().net_connections(kind="tcp")


def test_master_losing_its_own_server_is_its_own_failure():
    with TCPStore(
        LOCAL, 0, is_master=True, wait_for_workers=False, timeout=timedelta(seconds=10)
    ) as master:
        master.set("k", b"v")  # its client connection is up
        port = master.port
        _shut([c for c in _tcp() if c.raddr and c.raddr.port == port])
        with pytest.raises(DistStoreError, match=r"lost the connection.*runs in this process"):
            master.set("k2", b"v")


def test_client_losing_the_server_is_a_lost_peer():
    with TCPStore(
        LOCAL, 0, is_master=True, wait_for_workers=False, timeout=timedelta(seconds=10)
    ) as master:
        master.set("k", b"v")
        mine = {(c.laddr.port) for c in _tcp() if c.raddr and c.raddr.port == master.port}
        with TCPStore(LOCAL, master.port, timeout=timedelta(seconds=10)) as client:
            assert client.get("k") == b"v"
            # the server's side of the client's connection(s): the server hangs up on it
            theirs = [
                c
                for c in _tcp()
                if c.laddr.port == master.port and c.raddr and c.raddr.port not in mine
            ]
            _shut(theirs)
            with pytest.raises(DistNetworkError, match="lost the connection") as info:
                client.get("k")
            assert not isinstance(info.value, DistStoreError)
