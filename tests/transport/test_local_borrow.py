"""LocalTransport lends a borrowing receive the payload the sender copied (one copy per
reduced payload), whether the message arrives after the receive is posted or before."""

from __future__ import annotations

import threading

import numpy as np
from mesh_helpers import run_ranks

from mpdist.algorithms import Communicator
from mpdist.transport.base import as_bytes


def test_borrowing_receive_reads_the_sent_copy_posted_or_early() -> None:
    early = threading.Event()

    def fn(comm: Communicator):
        t = comm.transport
        comm.start("all_reduce", np.dtype(np.float64), 8 * 1000, (1000,))
        if comm.rank == 0:
            sent = [np.full(1000, float(step)) for step in (1, 2)]
            t.wait([t.isend(1, 1, as_bytes(sent[0]))], "all_reduce")
            t.wait([t.isend(1, 2, as_bytes(sent[1]))], "all_reduce")
            for a in sent:
                a[:] = -1.0  # the sender owns its buffers again: the receiver has copies
            early.set()
            comm.finish()
            return None
        fallback = np.zeros(1000)
        posted = t.irecv_borrow(0, 1, as_bytes(fallback))  # posted before the data comes
        t.wait([posted], "all_reduce")
        assert early.wait(20)
        while not t._stash:  # message 2 arrives with no receive posted: stashed
            t._progress(1.0)
        stashed = t.irecv_borrow(0, 2, as_bytes(fallback))
        out = []
        for req in (posted, stashed):
            lent = req.view is not req.buf
            out.append((lent, np.frombuffer(req.view, np.float64).copy()))
            t.release(req)
        comm.finish()
        return out, fallback

    res = run_ranks(2, fn, "local")
    out, fallback = res[1]
    assert [lent for lent, _ in out] == [True, True]  # neither copied into the fallback
    np.testing.assert_array_equal(out[0][1], np.full(1000, 1.0))
    np.testing.assert_array_equal(out[1][1], np.full(1000, 2.0))
    assert not fallback.any()
