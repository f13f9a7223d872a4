"""Group creation waits for a peer that never comes as long as the group's timeout says.

A rank stopped, or gone with ``sys.exit(0)``, before it publishes its part of the rendezvous
(rank 0's group token or hub id, a lower rank's address) is noticed by nobody: its peers can
only time out. They must do so after the group's timeout (the fault campaign's 4 s), as
gloo's rendezvous does, not after the rendezvous store's own default (300 s).
"""

from __future__ import annotations

import threading
import time
from datetime import timedelta

import pytest

from mpdist import distributed as dist
from mpdist.errors import DistError
from mpdist.store import FileStore, HashStore


def _lone_rank(backend: str, store) -> float:
    """Rank 1 of 2 makes the default group alone (rank 0 never comes, as when it left with
    sys.exit(0) or was stopped): how long until it fails; it must fail."""
    start = time.monotonic()
    with pytest.raises(DistError, match=r"timed out after 1 s"):
        dist.init_process_group(
            backend, store=store, rank=1, world_size=2, timeout=timedelta(seconds=1)
        )
    return time.monotonic() - start


@pytest.mark.parametrize("backend", ["tcp", "threaded"])
def test_peer_that_never_comes_is_waited_for_the_group_timeout(backend, tmp_path) -> None:
    """The rendezvous waits of group creation (rank 0's group token or hub id, each lower
    rank's address) last the group's timeout, as gloo's: not the store's (300 s here)."""
    store = HashStore() if backend == "threaded" else FileStore(str(tmp_path / "store"), 2)
    assert store.timeout.total_seconds() == 300
    out: list[float] = []
    # a thread: the threaded backend's default group is a thread's, the tcp one is left alone
    t = threading.Thread(target=lambda: out.append(_lone_rank(backend, store)), daemon=True)
    t.start()
    t.join(20)
    assert not t.is_alive(), "still waiting for rank 0 after 20 s"
    store.close()
    assert out and out[0] < 10, out
