"""The fixed binary header that travels in front of every payload, and its code tables.

A header says what the sender believes it is doing (collective number, op, dtype, sizes,
root, tag) so that the receiver can detect ranks that disagree before touching any data.
"""

from __future__ import annotations

import struct
import zlib
from dataclasses import dataclass

import numpy as np

__all__ = [
    "Header",
    "HeaderFields",
    "HEADER",
    "HEADER_SIZE",
    "MAGIC",
    "HELLO_SHM",
    "FLAG_SHM",
    "FLAG_FAREWELL",
    "KIND_COLL",
    "KIND_P2P",
    "KIND_ERROR",
    "KIND_WAKE",
    "ERR_BACKEND",
    "ERR_NETWORK",
    "WIRE_DTYPES",
    "describe_mismatch",
    "dtype_code",
    "dtype_name",
    "op_code",
    "op_name_of",
    "shape_signature",
]

MAGIC = 0x4D50  # "MP"

# kind of message
KIND_COLL = 0
KIND_P2P = 1
KIND_ERROR = 2
KIND_WAKE = 3  # no payload, nothing to match: ends the peer's poll (transport.mailbox)

# for KIND_ERROR, the "op" field says which error class the receiver should raise
ERR_BACKEND = 0
ERR_NETWORK = 1


# magic H, kind B, redop B, op H, dtype B, flags B, root i, tag i, step I,
# seq Q, total Q, shape signature Q, payload length Q, aux Q (shared-memory offset)
HEADER = struct.Struct("<HBBHBBiiIQQQQQ")
HEADER_SIZE = HEADER.size
_pack = HEADER.pack

# The fields of a header to send, in wire order: what ``HEADER.pack(*fields)`` packs and
# what ``Header(*fields)`` names.
HeaderFields = tuple[int, int, int, int, int, int, int, int, int, int, int, int, int, int]


@dataclass(slots=True)
class Header:
    """A message header with its fields named, as a receiver reads it:
    ``Header(*HEADER.unpack(data))`` (one struct call).

    The fields are HEADER's, in wire order. A sender has no field to read, so it passes a
    plain tuple (``HeaderFields``) that one struct call packs: making a Header costs about
    0.2 us, a few percent of what a small message costs. Slots rather than a NamedTuple:
    reading a slot is what the interpreter makes fast (a NamedTuple field is a descriptor
    call), and a receiver reads most fields of every header.
    """

    magic: int  # MAGIC
    kind: int  # KIND_COLL, KIND_P2P, KIND_ERROR or KIND_WAKE
    redop: int  # the reduce op of a collective (an index into ReduceOp's names)
    op: int  # op_code() of the operation; of an ERROR: ERR_BACKEND or ERR_NETWORK
    dtype: int  # dtype_code() of the payload (0: none or not checked)
    flags: int  # FLAG_SHM on data, FLAG_FAREWELL on an ERROR
    root: int  # a collective's root (-1: none); of an ERROR: the rank that detected it
    tag: int  # a point-to-point tag
    step: int  # which message of the collective this is
    seq: int  # the collective's number
    total: int  # the collective's byte count (a point-to-point message: its own)
    sig: int  # shape_signature() of the collective's shape
    nbytes: int  # payload bytes that follow (on TCP, or in the ring with FLAG_SHM)
    aux: int  # FLAG_SHM: where the payload is in the sender's ring (shm.ring_aux)

    def pack(self) -> bytes:
        """The HEADER_SIZE bytes of this header."""
        return _pack(
            self.magic,
            self.kind,
            self.redop,
            self.op,
            self.dtype,
            self.flags,
            self.root,
            self.tag,
            self.step,
            self.seq,
            self.total,
            self.sig,
            self.nbytes,
            self.aux,
        )


HELLO_SHM = 1  # handshake flag (mpdist.transport.mesh.Claims): this rank can carry payloads in shared-memory rings
FLAG_SHM = 1  # header flag: the payload is in the sender's shared-memory ring, not on TCP
# ERROR flag: why the sender is leaving; raised only by an operation that finds it gone
FLAG_FAREWELL = 2

_DTYPES = [
    "bool",
    "uint8",
    "int8",
    "int16",
    "int32",
    "int64",
    "float16",
    "float32",
    "float64",
    "complex64",
    "complex128",
    "uint16",
    "uint32",
    "uint64",
]
# every dtype a payload can be described as (the collectives accept exactly these)
WIRE_DTYPES: tuple[np.dtype, ...] = tuple(np.dtype(n) for n in _DTYPES)
_DTYPE_CODE: dict[np.dtype, int] = {d: i + 1 for i, d in enumerate(WIRE_DTYPES)}
_DTYPE_NAME: dict[int, str] = {i + 1: n for i, n in enumerate(_DTYPES)}


def dtype_code(dtype: np.dtype) -> int:
    """Small integer naming ``dtype`` on the wire (0 for dtypes outside the table)."""
    return _DTYPE_CODE.get(dtype, 0)


def dtype_name(code: int) -> str:
    """Inverse of :func:`dtype_code`, for error messages."""
    return _DTYPE_NAME.get(code, f"dtype#{code}")


# Collective names known in advance, so that a receiver can name the op a peer called even
# if it never called it itself.  Unknown names still get a stable code (a crc).
_KNOWN_OPS = [
    "all_reduce",
    "broadcast",
    "reduce",
    "all_gather",
    "all_gather_into_tensor",
    "gather",
    "scatter",
    "reduce_scatter",
    "reduce_scatter_tensor",
    "all_to_all",
    "all_to_all_single",
    "barrier",
    "monitored_barrier",
    "send",
    "recv",
    "isend",
    "irecv",
    "all_gather_object",
    "broadcast_object_list",
    "gather_object",
    "scatter_object_list",
    "send_object_list",
    "recv_object_list",
]
_OP_CODE: dict[str, int] = {n: i + 1 for i, n in enumerate(_KNOWN_OPS)}
_OP_NAME: dict[int, str] = {i + 1: n for i, n in enumerate(_KNOWN_OPS)}


def op_code(name: str) -> int:
    """Stable 16-bit code of an op name (the same in every process)."""
    code = _OP_CODE.get(name)
    if code is None:
        code = 256 + zlib.crc32(name.encode()) % (65536 - 256)
        _OP_CODE[name] = code
        _OP_NAME.setdefault(code, name)
    return code


def op_name_of(code: int) -> str:
    """Name of an op code, for error messages."""
    return _OP_NAME.get(code, f"op#{code}")


# ReduceOp names by value (this layer does not import the algorithms' enum)
_REDOP_NAMES = ("SUM", "AVG", "PRODUCT", "MIN", "MAX", "BAND", "BOR", "BXOR")


def describe_mismatch(
    me: str, them: str, mine_op: str, mine: tuple[int, ...], theirs: tuple[int, ...]
) -> str:
    """What differs between two ranks' calls, in words, for a mismatch error. ``mine`` and
    ``theirs`` are (op, reduce op, dtype, root, bytes, shape fingerprint) codes; ``me`` and
    ``them`` name the ranks ("rank 3"). Every difference is listed, except the dtype of a
    call that has none (a barrier: code 0), where the collectives differ already."""
    op, redop, dtype, root, total, sig = mine
    t_op, t_redop, t_dtype, t_root, t_total, t_sig = theirs
    diffs = []
    if op != t_op:
        diffs.append(f"{me} called {mine_op} but {them} called {op_name_of(t_op)}")
    if dtype != t_dtype and dtype and t_dtype:
        diffs.append(f"dtype {dtype_name(dtype)} on {me} vs {dtype_name(t_dtype)} on {them}")
    if total != t_total:
        diffs.append(f"{total} bytes on {me} vs {t_total} bytes on {them}")
    elif sig != t_sig:
        diffs.append(f"different shapes on {me} and {them}")
    if root != t_root:
        diffs.append(f"root {root} on {me} vs root {t_root} on {them}")
    if redop != t_redop:
        diffs.append(f"reduce op {_redop_name(redop)} on {me} vs {_redop_name(t_redop)} on {them}")
    return "; ".join(diffs)


def _redop_name(code: int) -> str:
    if code < 0:
        return "none"
    return _REDOP_NAMES[code] if code < len(_REDOP_NAMES) else f"#{code}"


def shape_signature(shape: tuple[int, ...]) -> int:
    """A 64-bit fingerprint of a shape, equal in every process (int tuples hash deterministically)."""
    return hash(shape) & 0xFFFFFFFFFFFFFFFF
