"""Bytes between the ranks of one group: TCP pairs (TcpTransport) or threads (LocalTransport).

The transport knows nothing of collectives: it moves headers and payloads, matches them
and reports mismatches, lost peers, timeouts and aborts (see ``mpdist.transport.base``).
TcpTransport carries big payloads through per-pair shared-memory rings when both ends
have /dev/shm (``mpdist.transport.shm``; ``MPDIST_SHM=0`` turns that off).
"""

from __future__ import annotations

from mpdist.transport.base import RecvReq, SendReq, Transport, as_bytes
from mpdist.transport.local import LocalTransport
from mpdist.transport.tcp import TcpTransport

__all__ = ["Transport", "TcpTransport", "LocalTransport", "SendReq", "RecvReq", "as_bytes"]
