"""Rendezvous stores: the key/value services ranks use to find each other.

``Store`` is the base class; ``HashStore`` lives in one process, ``FileStore``
in a file shared by processes on one machine, ``TCPStore`` on a server run by
the master rank; ``PrefixStore`` namespaces keys of another store.
"""

from __future__ import annotations

from mpdist.store.base import Store
from mpdist.store.file import FileStore
from mpdist.store.hash import HashStore
from mpdist.store.prefix import PrefixStore
from mpdist.store.tcp import TCPStore

__all__ = ["FileStore", "HashStore", "PrefixStore", "Store", "TCPStore"]
