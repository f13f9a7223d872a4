"""mpdist: test and run distributed numpy code for real.

``import mpdist as dist`` mirrors ``torch.distributed`` on numpy arrays:
stores for rendezvous, process groups with TCP collectives, and (in
``mpdist.testing``) a multi-process test harness.
"""

from mpdist import distributed, process_group
from mpdist import distributed as distributed_c10d  # noqa: F401  (torch.distributed.distributed_c10d)
from mpdist.autograd.device import device
from mpdist.distributed import *  # noqa: F403  (the module API: distributed.__all__)
from mpdist.errors import (
    DistBackendError,
    DistError,
    DistNetworkError,
    DistStoreError,
    QueueEmptyError,
)
from mpdist.process_group import *  # noqa: F403  (Work, Future, options: process_group.__all__)
from mpdist.process_group import Work as _Work  # noqa: F401  (torch.distributed._Work)
from mpdist.random import manual_seed
from mpdist.store import FileStore, HashStore, PrefixStore, Store, TCPStore

__version__ = "0.1.0"

__all__ = [
    "DistBackendError",
    "DistError",
    "DistNetworkError",
    "DistStoreError",
    "QueueEmptyError",
    "FileStore",
    "HashStore",
    "PrefixStore",
    "Store",
    "TCPStore",
    "device",
    "manual_seed",
]
# The module API and the process-group classes are listed once, in their own modules.
__all__ += process_group.__all__
__all__ += distributed.__all__
