"""The ``threaded`` backend: every rank is a thread of one process, sharing one ``HashStore``.

The collectives are the same algorithms as the ``tcp`` backend over an in-process
transport, so results are identical; the module API keeps the default group per thread.
"""

from __future__ import annotations

from mpdist.transport.local import LocalTransport

from .comm import CommProcessGroup

__all__ = ["ThreadedProcessGroup"]


class ThreadedProcessGroup(CommProcessGroup):
    """A process group whose ranks are threads: ``ThreadedProcessGroup(store, rank, size, timeout)``."""

    backend_name = "threaded"
    transport_class = LocalTransport
    # the module API keeps this group's world (default group, groups) per thread
    _mpdist_thread_local = True
