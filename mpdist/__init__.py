"""mpdist: test and run distributed numpy code for real.

``import mpdist as dist`` mirrors ``torch.distributed`` on numpy arrays:
stores for rendezvous, process groups with TCP collectives, and (in
``mpdist.testing``) a multi-process test harness.
"""

from mpdist.errors import (
    DistBackendError,
    DistError,
    DistNetworkError,
    DistStoreError,
    QueueEmptyError,
)
from mpdist.random import manual_seed
from mpdist.store import HashStore, PrefixStore, Store

__version__ = "0.1.0"

__all__ = [
    "DistBackendError",
    "DistError",
    "DistNetworkError",
    "DistStoreError",
    "QueueEmptyError",
    "HashStore",
    "PrefixStore",
    "Store",
    "manual_seed",
]
