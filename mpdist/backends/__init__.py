"""The built-in process-group backends, registered with ``Backend`` on import.

``tcp`` (alias ``gloo``): one process per rank over a TCP mesh; ``threaded``: ranks are
threads of one process; ``fake``: no communication at all; ``mpi``: MPI through mpi4py.
The creators import their module when a group of that backend is first created, so
registering costs nothing (``mpdist.distributed`` imports ``fake`` anyway, for
``FakeStore``; nothing imports mpi4py until an ``mpi`` group is made).
"""

from __future__ import annotations

from typing import Any

from mpdist.process_group import Backend, ProcessGroup, _DistributedBackendOptions

__all__: list[str] = []


# The real backends take the extended creator signature for the group's global ranks,
# which their errors name (peers are named by their global ranks everywhere).


def _create_tcp(options: _DistributedBackendOptions, pg_options: Any) -> ProcessGroup:
    from .tcp import TcpProcessGroup

    o = options
    return TcpProcessGroup(
        o.store, o.group_rank, o.group_size, o.timeout, global_ranks=o.global_ranks_in_group
    )


def _create_threaded(options: _DistributedBackendOptions, pg_options: Any) -> ProcessGroup:
    from .threaded import ThreadedProcessGroup

    o = options
    return ThreadedProcessGroup(
        o.store, o.group_rank, o.group_size, o.timeout, global_ranks=o.global_ranks_in_group
    )


def _create_fake(options: _DistributedBackendOptions, pg_options: Any) -> ProcessGroup:
    from .fake import FakeProcessGroup

    return FakeProcessGroup._create_internal(options.group_rank, options.group_size, pg_options)


def _create_mpi(options: _DistributedBackendOptions, pg_options: Any) -> ProcessGroup:
    from . import mpi  # imports mpi4py (and initializes MPI) only now

    o = options
    return mpi.create(o.group_rank, o.group_size, o.global_ranks_in_group, o.timeout, pg_options)


for _name, _creator, _ext in (
    ("tcp", _create_tcp, True),
    ("gloo", _create_tcp, True),
    ("threaded", _create_threaded, True),
    ("fake", _create_fake, True),
    ("mpi", _create_mpi, True),
):
    if _name not in Backend._plugins:  # a re-import must not trip the duplicate check
        Backend.register_backend(_name, _creator, extended_api=_ext)
