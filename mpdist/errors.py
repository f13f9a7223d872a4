"""The exception hierarchy every mpdist layer raises.

All errors derive from ``RuntimeError`` so code written against
``torch.distributed`` that catches ``RuntimeError`` keeps working.

    DistError
    ├── DistBackendError   a collective failed (mismatch between ranks, aborted group)
    ├── DistNetworkError   a peer closed, died, or a port could not be bound
    └── DistStoreError     a store timed out or its file is corrupt
        └── QueueEmptyError
"""

from __future__ import annotations

__all__ = [
    "DistError",
    "DistBackendError",
    "DistNetworkError",
    "DistStoreError",
    "QueueEmptyError",
]


class DistError(RuntimeError):
    """Base class of every error raised by mpdist's distributed layers."""


class DistBackendError(DistError):
    """A collective failed inside a backend (mismatched calls between ranks, abort)."""


class DistNetworkError(DistError):
    """A connection to a peer or a store failed, or a peer went away."""


class DistStoreError(DistError):
    """A store operation failed: timeout, corrupt file, closed store."""


class QueueEmptyError(DistStoreError):
    """A store queue had nothing to take."""
