"""What a killed rank leaves on the host is gone once the harness has its outcome.

A rank makes a shared-memory ring for each peer while its mesh connects; the peer unlinks it
once mapped, and the owner on close. A rank killed in between leaves the file (named with
its pid) to be swept by the next transport of the host, maybe never: the harness sweeps
them when its ranks are gone (``debug.remove_stale_files``).
"""

from __future__ import annotations

import os
import signal

import pytest

from mpdist.testing import MultiProcessFailure, spawn_ranks

SHM = "/dev/shm"


def _killed_with_a_ring(rank: int, world_size: int, name_file: str) -> None:
    if rank == 1:
        # the name a ring of this process would have (mpdist.transport.shm.ring_path)
        path = os.path.join(SHM, f"mpdist-{os.getpid()}-{'ab' * 16}-0-1")
        with open(os.open(path, os.O_CREAT | os.O_EXCL | os.O_RDWR, 0o600), "wb") as f:
            f.write(b"\0" * 64)
        with open(name_file, "w") as f:
            f.write(path)
        os.kill(os.getpid(), signal.SIGKILL)


@pytest.mark.skipif(not os.access(SHM, os.W_OK), reason="no writable /dev/shm")
def test_ring_of_a_killed_rank_is_removed(tmp_path) -> None:
    name_file = str(tmp_path / "ring")
    with pytest.raises(MultiProcessFailure, match="rank 1"):
        spawn_ranks(_killed_with_a_ring, 2, name_file, backend=None, timeout=60)
    with open(name_file) as f:
        path = f.read()
    assert path.startswith(SHM)
    assert not os.path.exists(path), f"{path} was left behind"
