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

from dataclasses import dataclass

__all__ = [
    "DistError",
    "DistBackendError",
    "DistNetworkError",
    "DistStoreError",
    "QueueEmptyError",
    "RemoteOrigin",
]


@dataclass(frozen=True)
class RemoteOrigin:
    """Where an error a peer reported came from (``DistError.remote``): the error's
    ``text`` as the detecting rank wrote it, the transport rank that detected it
    (``origin``) and the peer whose message brought it here (``sender``)."""

    text: str
    origin: int
    sender: int


class DistError(RuntimeError):
    """Base class of every error raised by mpdist's distributed layers."""

    # set by a transport on an error that a peer reported to this rank; None when it
    # was raised here
    remote: RemoteOrigin | None = None


class DistBackendError(DistError):
    """A collective failed inside a backend (mismatched calls between ranks, abort)."""


class DistNetworkError(DistError):
    """A connection to a peer or a store failed, or a peer went away."""


class DistStoreError(DistError):
    """A store operation failed: timeout, corrupt file, closed store."""


class QueueEmptyError(DistStoreError):
    """A store queue had nothing to take."""
