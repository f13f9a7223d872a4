"""Run under mpiexec: the mpi:// rendezvous makes and broadcasts a secret; strangers are refused."""

from __future__ import annotations

import contextlib
import os
import socket

import numpy as np

import mpdist as dist
from mpdist.store import _protocol as proto
from mpdist.store.rendezvous import rendezvous

assert "MPDIST_JOB_SECRET" not in os.environ
store, rank, size = rendezvous("mpi://")
assert store.authenticated  # type: ignore[attr-defined]
if rank == 0:
    with socket.create_connection(("127.0.0.1", store.port)) as s:  # type: ignore[attr-defined]
        s.sendall(proto.encode_frame(proto.Op.NUM_KEYS, []))
        with contextlib.suppress(ConnectionResetError):  # closed, or reset: no answer
            assert s.recv(100) == b""
    assert store.refused_connections == 1  # type: ignore[attr-defined]
    store.set("checked", b"1")
store.get("checked")
dist.init_process_group("tcp", store=store, rank=rank, world_size=size)
a = np.full(2, rank + 1.0)
dist.all_reduce(a)
assert a[0] == size * (size + 1) / 2
dist.destroy_process_group()
print(f"rank {rank} ok", flush=True)
