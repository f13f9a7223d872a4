"""The built-in process-group backends, registered with ``Backend`` on import.

``tcp`` (alias ``gloo``): one process per rank over a TCP mesh; ``threaded``: ranks are
threads of one process; ``fake``: no communication at all. The creators import their
module when a group of that backend is first created, so registering costs nothing
(``mpdist.distributed`` imports ``fake`` anyway, for ``FakeStore``).
"""

from __future__ import annotations

from datetime import timedelta
from typing import Any

from mpdist.process_group import Backend, ProcessGroup, _DistributedBackendOptions
from mpdist.store import Store

__all__: list[str] = []


def _create_tcp(store: Store, rank: int, size: int, timeout: timedelta) -> ProcessGroup:
    from .tcp import TcpProcessGroup

    return TcpProcessGroup(store, rank, size, timeout)


def _create_threaded(store: Store, rank: int, size: int, timeout: timedelta) -> ProcessGroup:
    from .threaded import ThreadedProcessGroup

    return ThreadedProcessGroup(store, rank, size, timeout)


def _create_fake(options: _DistributedBackendOptions, pg_options: Any) -> ProcessGroup:
    from .fake import FakeProcessGroup

    return FakeProcessGroup(options.group_rank, options.group_size, pg_options)


for _name, _creator, _ext in (
    ("tcp", _create_tcp, False),
    ("gloo", _create_tcp, False),
    ("threaded", _create_threaded, False),
    ("fake", _create_fake, True),
):
    if _name not in Backend._plugins:  # a re-import must not trip the duplicate check
        Backend.register_backend(_name, _creator, extended_api=_ext)
