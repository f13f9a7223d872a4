"""Collectives on picklable Python objects, built on the array collectives."""

from __future__ import annotations

import pickle
from typing import Any

import numpy as np

from mpdist.distributed._checks import _group_rank, _me, _resolve, _root_only, _size
from mpdist.distributed.collectives import all_gather, broadcast, gather, recv, scatter, send
from mpdist.process_group import (
    ProcessGroup,
)


def _pickle(obj: Any) -> np.ndarray:
    return np.frombuffer(pickle.dumps(obj, protocol=pickle.HIGHEST_PROTOCOL), dtype=np.uint8)


def _unpickle(buf: np.ndarray) -> Any:
    return pickle.loads(buf.tobytes())


def _pack(objects: list[Any]) -> tuple[np.ndarray, np.ndarray]:
    """The pickles of ``objects`` laid end to end, and their lengths: (sizes, payload)."""
    parts = [_pickle(o) for o in objects]
    sizes = np.array([p.size for p in parts], dtype=np.int64)
    return sizes, np.concatenate(parts) if parts else np.zeros(0, np.uint8)


def _unpack(object_list: list[Any], sizes: np.ndarray, payload: np.ndarray) -> None:
    """Fill ``object_list`` from pickles laid end to end in ``payload`` (inverse of ``_pack``)."""
    off = 0
    for i, s in enumerate(sizes.tolist()):
        object_list[i] = _unpickle(payload[off : off + s])
        off += s


def _padded_pickle(obj: Any, n: int, pg: ProcessGroup) -> tuple[np.ndarray, list[int]]:
    """This rank's pickled ``obj`` zero-padded to the longest pickle in the group, and every
    rank's pickle length; the lengths travel in an all_gather, so every rank must call it.

    Padding to one width lets the pickles travel in a plain all_gather / gather.
    """
    data = _pickle(obj)
    sizes = np.zeros((n, 1), dtype=np.int64)
    all_gather(list(sizes), np.array([data.size], dtype=np.int64), group=pg)
    mine = np.zeros(int(sizes.max()), dtype=np.uint8)
    mine[: data.size] = data
    return mine, sizes[:, 0].tolist()


def _object_list(xs: Any, op: str, what: str, n: int | None) -> list[Any]:
    if not isinstance(xs, list):
        raise TypeError(f"{op}: {what} must be a list, got {type(xs).__name__}")
    if n is not None and len(xs) != n:
        raise ValueError(f"{op}: {what} has {len(xs)} entries, but the group has {n} ranks")
    return xs


def all_gather_object(object_list: list[Any], obj: Any, group: ProcessGroup | None = None) -> None:
    """``object_list[i]`` <- rank i's ``obj`` (pickled); one entry per rank."""
    world, pg = _resolve(group, "all_gather_object")
    if pg is None:
        return
    n = _size(world, pg)
    _object_list(object_list, "all_gather_object", "object_list", n)
    mine, sizes = _padded_pickle(obj, n, pg)
    bufs = np.zeros((n, mine.size), dtype=np.uint8)
    all_gather(list(bufs), mine, group=pg)
    for i in range(n):
        object_list[i] = _unpickle(bufs[i, : sizes[i]])


def broadcast_object_list(
    object_list: list[Any], src: int = 0, group: ProcessGroup | None = None, device: Any = None
) -> None:
    """Every rank's ``object_list`` <- global rank ``src``'s (same length on every rank)."""
    world, pg = _resolve(group, "broadcast_object_list")
    if pg is None:
        return
    _object_list(object_list, "broadcast_object_list", "object_list", None)
    root = _group_rank(world, pg, src, "src", "broadcast_object_list")
    if _me(world, pg) == root:
        sizes, payload = _pack(object_list)
        broadcast(sizes, src, group=pg)
        broadcast(payload, src, group=pg)
        return
    sizes = np.zeros(len(object_list), dtype=np.int64)
    broadcast(sizes, src, group=pg)
    payload = np.zeros(int(sizes.sum()), np.uint8)
    broadcast(payload, src, group=pg)
    _unpack(object_list, sizes, payload)


def gather_object(
    obj: Any,
    object_gather_list: list[Any] | None = None,
    dst: int = 0,
    group: ProcessGroup | None = None,
) -> None:
    """On global rank ``dst``, ``object_gather_list[i]`` <- rank i's ``obj`` (list on dst only)."""
    world, pg = _resolve(group, "gather_object")
    if pg is None:
        return
    n = _size(world, pg)
    root = _group_rank(world, pg, dst, "dst", "gather_object")
    is_root = _me(world, pg) == root
    _root_only(object_gather_list, is_root, "object_gather_list", "destination")
    if is_root:
        _object_list(object_gather_list, "gather_object", "object_gather_list", n)
    mine, sizes = _padded_pickle(obj, n, pg)
    bufs = np.zeros((n, mine.size), dtype=np.uint8) if is_root else None
    gather(mine, list(bufs) if bufs is not None else None, dst, group=pg)
    if bufs is not None:
        assert object_gather_list is not None
        for i in range(n):
            object_gather_list[i] = _unpickle(bufs[i, : sizes[i]])


def scatter_object_list(
    scatter_object_output_list: list[Any],
    scatter_object_input_list: list[Any] | None = None,
    src: int = 0,
    group: ProcessGroup | None = None,
) -> None:
    """Rank i's ``scatter_object_output_list[0]`` <- ``scatter_object_input_list[i]`` of ``src``."""
    name = "scatter_object_list"
    world, pg = _resolve(group, name)
    if pg is None:
        return
    if not isinstance(scatter_object_output_list, list) or len(scatter_object_output_list) < 1:
        raise ValueError(
            "Expected argument scatter_object_output_list to be a list of size at least 1."
        )
    n = _size(world, pg)
    root = _group_rank(world, pg, src, "src", name)
    is_root = _me(world, pg) == root
    _root_only(scatter_object_input_list, is_root, "scatter_object_input_list", "source")
    # every pickle travels in a buffer of one width: its length (8 bytes), then the pickle
    width = np.zeros(1, dtype=np.int64)
    parts: list[np.ndarray] = []
    if is_root:
        objs = _object_list(scatter_object_input_list, name, "scatter_object_input_list", n)
        parts = [_pickle(o) for o in objs]
        width[0] = max(p.size for p in parts) + 8
    broadcast(width, src, group=pg)
    w = int(width[0])
    out = np.zeros(w, dtype=np.uint8)
    ins = None
    if is_root:
        ins = []
        for p in parts:
            buf = np.zeros(w, dtype=np.uint8)
            buf[:8] = np.array([p.size], dtype=np.int64).view(np.uint8)
            buf[8 : 8 + p.size] = p
            ins.append(buf)
    scatter(out, ins, src, group=pg)
    size = int(out[:8].view(np.int64)[0])
    scatter_object_output_list[0] = _unpickle(out[8 : 8 + size])


def send_object_list(object_list: list[Any], dst: int, group: ProcessGroup | None = None) -> None:
    """Send the pickled objects of ``object_list`` to global rank ``dst``."""
    world, pg = _resolve(group, "send_object_list")
    if pg is None:
        return
    _object_list(object_list, "send_object_list", "object_list", None)
    sizes, payload = _pack(object_list)
    send(sizes, dst, group=pg)
    send(payload, dst, group=pg)


def recv_object_list(
    object_list: list[Any], src: int | None = None, group: ProcessGroup | None = None
) -> int:
    """Fill ``object_list`` with objects sent by ``send_object_list``; returns the sender."""
    world, pg = _resolve(group, "recv_object_list")
    if pg is None:
        return -1
    _object_list(object_list, "recv_object_list", "object_list", None)
    sizes = np.zeros(len(object_list), dtype=np.int64)
    sender = recv(sizes, src, group=pg)
    payload = np.zeros(int(sizes.sum()), dtype=np.uint8)
    recv(payload, sender, group=pg)
    _unpack(object_list, sizes, payload)
    return sender
