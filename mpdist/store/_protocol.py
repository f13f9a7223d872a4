"""The TCPStore wire format: length-prefixed frames of length-prefixed fields.

Every frame, request or response, is ``<magic u16><code u8><payload length u32>``
followed by the payload. The payload is ``<field count u32>`` then, per field,
``<length u32><bytes>``. A request's code is the operation; a response's code is
its status. Timeouts travel as a field of 8 bytes (little-endian float seconds,
-1 for "forever"). Anything that does not parse exactly is garbage, and the
server drops the connection that sent it.
"""

from __future__ import annotations

import enum
import struct

__all__ = [
    "HEADER",
    "MAGIC",
    "Op",
    "ProtocolError",
    "Status",
    "decode_fields",
    "decode_timeout",
    "encode_frame",
    "encode_timeout",
]

MAGIC = 0x4D53  # "MS" read little-endian as a u16
HEADER = struct.Struct("<HBI")
_U32 = struct.Struct("<I")
_F64 = struct.Struct("<d")
# Timeouts longer than this (about 31 years) are treated as "forever".
MAX_TIMEOUT_S = 1e9
# A frame larger than this is treated as garbage rather than buffered.
MAX_PAYLOAD = (1 << 32) - 1


class Op(enum.IntEnum):
    """Request codes."""

    SET = 1
    GET = 2
    ADD = 3
    COMPARE_SET = 4
    WAIT = 5
    CHECK = 6
    DELETE_KEY = 7
    NUM_KEYS = 8
    APPEND = 9
    MULTI_GET = 10
    MULTI_SET = 11
    WAIT_COUNT = 12  # block until int(key) >= n: used to wait for workers


class Status(enum.IntEnum):
    """Response codes."""

    OK = 0
    TIMEOUT = 1  # fields: the keys still missing (WAIT_COUNT: the current count)
    ERROR = 2  # fields: one message


class ProtocolError(Exception):
    """Bytes that are not a valid frame."""


def encode_frame(code: int, fields: list[bytes]) -> bytes:
    """One frame carrying ``fields``."""
    parts = [b"", _U32.pack(len(fields))]
    size = 4
    for f in fields:
        parts.append(_U32.pack(len(f)))
        parts.append(f)
        size += 4 + len(f)
    parts[0] = HEADER.pack(MAGIC, code, size)
    return b"".join(parts)


def decode_fields(payload: bytes | bytearray | memoryview) -> list[bytes]:
    """The fields of a payload; ``ProtocolError`` unless it parses exactly."""
    view = memoryview(payload)
    n = len(view)
    if n < 4:
        raise ProtocolError("payload shorter than its field count")
    (count,) = _U32.unpack_from(view, 0)
    pos = 4
    fields = []
    for _ in range(count):
        if pos + 4 > n:
            raise ProtocolError("field length past the end of the payload")
        (length,) = _U32.unpack_from(view, pos)
        pos += 4
        if pos + length > n:
            raise ProtocolError("field past the end of the payload")
        fields.append(bytes(view[pos : pos + length]))
        pos += length
    if pos != n:
        raise ProtocolError("bytes left over after the last field")
    return fields


def encode_timeout(timeout: float | None) -> bytes:
    """A timeout field (None = wait forever)."""
    return _F64.pack(-1.0 if timeout is None else timeout)


def decode_timeout(field: bytes) -> float | None:
    """Inverse of :func:`encode_timeout`; ``ProtocolError`` if malformed."""
    if len(field) != 8:
        raise ProtocolError("timeout field is not 8 bytes")
    (t,) = _F64.unpack(field)
    if t != t:
        raise ProtocolError("timeout is NaN")
    # Negative means forever; so does anything beyond any deadline a clock can reach
    # (an infinite or huge deadline would overflow the selector's timeout).
    return None if t < 0 or t > MAX_TIMEOUT_S else t
