"""A stopped rank is blamed even when a peer's timeout took others down before it reported.

Rank 1 stops (SIGSTOP). Rank 0, waiting for it, times out (a lost-peer kind of error) but
tears its group down before its failure reaches the harness (as a rank hosting the
rendezvous store does when its own init fails: the store goes with it). Rank 2, connected
to rank 0, loses it and is the first failure the harness hears of. The cause is rank 1, the
one rank that neither failed nor answered the abort; before, the harness blamed rank 2.
Found by the fault campaign (group creation, a TCPStore hosted by rank 0, world size 5).
"""

from __future__ import annotations

import os
import signal
import time

import numpy as np
import pytest

from mpdist import distributed as dist
from mpdist.errors import DistNetworkError
from mpdist.testing import MultiProcessFailure, spawn_ranks


def _chain(rank: int, world_size: int) -> None:
    if rank == 1:
        os.kill(os.getpid(), signal.SIGSTOP)
    elif rank == 0:
        time.sleep(0.3)  # "waiting for rank 1"
        dist.destroy_process_group()  # rank 2 loses its peer now
        time.sleep(0.5)
        raise DistNetworkError("rank 0: timed out after 0.3 s waiting for rank 1")
    else:
        dist.recv(np.zeros(1), src=0)  # lost when rank 0's group goes


def test_stopped_rank_is_blamed_when_a_lost_peer_is_heard_of_first() -> None:
    with pytest.raises(MultiProcessFailure) as info:
        spawn_ranks(_chain, 3, timeout=60, group_timeout=30)
    text = str(info.value)
    first = text.splitlines()[0]
    assert first.startswith("rank 1: ") and "stopped responding" in first, text
    assert "failed in rank 1 " in text, text
