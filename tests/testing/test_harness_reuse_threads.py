"""Worker reuse (and recycling after a failure or timeout) and MultiThreadedTestCase."""

from __future__ import annotations

import os
import textwrap

import pytest
from _harness_helpers import alive

REUSE = """
import os, time
import numpy as np
from mpdist import distributed as dist
from mpdist.store import FileStore
from mpdist.testing import MultiProcessTestCase, with_comms


def note(name):
    with open(os.path.join(os.environ["PID_DIR"], name), "a") as f:
        f.write(f"{os.getpid()}\\n")


class TestReuse(MultiProcessTestCase):
    reuse_processes = True
    timeout = 4

    @with_comms
    def test_1_first(self):
        note("first")
        a = np.ones(2)
        dist.all_reduce(a)
        assert a[0] == 2

    @with_comms
    def test_2_same_workers_same_group(self):
        note("second")
        a = np.ones(2)
        dist.all_reduce(a)
        assert a[0] == 2

    def test_3_own_group(self):
        note("third")
        dist.init_process_group(
            "tcp", store=FileStore(self.file_name, 2), rank=self.rank, world_size=2
        )
        dist.barrier()

    def test_4_fails(self):
        note("fourth")
        raise RuntimeError(f"rank {self.rank} fails")

    @with_comms
    def test_5_after_failure(self):
        note("fifth")
        a = np.ones(2)
        dist.all_reduce(a)

    def test_6_hangs(self):
        note("sixth")
        if self.rank == 0:
            time.sleep(60)

    def test_7_after_timeout(self):
        note("seventh")


class TestZAfterwards(MultiProcessTestCase):
    def test_previous_class_pool_is_closed(self):
        import psutil

        with open(os.path.join(os.environ["PID_DIR"], "seventh")) as f:
            pids = [int(x) for x in f.read().split()]
        assert not [p for p in pids if psutil.pid_exists(p)
                    and psutil.Process(p).status() != psutil.STATUS_ZOMBIE]
"""


def pids(directory: str, name: str) -> list[int]:
    with open(os.path.join(directory, name)) as f:
        return sorted(int(x) for x in f.read().split())


def test_workers_are_reused_and_recycled_after_failure_and_timeout(
    pytester: pytest.Pytester, pid_dir: str
) -> None:
    pytester.makepyfile(test_reuse=REUSE)
    result = pytester.runpytest("-p", "no:cacheprovider")
    result.assert_outcomes(passed=6, failed=2)
    result.stdout.fnmatch_lines(
        ["*test_4_fails failed in rank ? (world size 2); failing ranks: [[]0, 1[]]"]
    )
    result.stdout.fnmatch_lines(["*test_6_hangs timed out after 4 s*ranks still running: [[]0[]]"])
    first = pids(pid_dir, "first")
    assert len(first) == 2
    assert pids(pid_dir, "second") == first
    assert pids(pid_dir, "third") == first
    assert pids(pid_dir, "fourth") == first
    # The failure recycled the workers; the timeout did it again.
    fifth = pids(pid_dir, "fifth")
    assert set(fifth).isdisjoint(first)
    assert pids(pid_dir, "sixth") == fifth
    seventh = pids(pid_dir, "seventh")
    assert set(seventh).isdisjoint(fifth)
    # TestZAfterwards saw the pool closed when its class was over; nothing is left now.
    assert not alive(first + fifth + seventh)


THREADS = """
import threading
import numpy as np
from mpdist import distributed as dist
from mpdist.testing import MultiThreadedTestCase


class TestThreads(MultiThreadedTestCase):
    def setUp(self):
        super().setUp()
        self._spawn_threads()

    @property
    def world_size(self):
        return 3

    def test_group_is_ready(self):
        assert dist.get_rank() == self.rank
        assert threading.current_thread().name == f"mpdist-rank-{self.rank}"
        a = np.full(2, float(self.rank))
        dist.all_reduce(a)
        assert a[0] == 3.0

    def test_same_rng_in_every_thread(self):
        mine = np.array([self.rng.random()])
        theirs = mine.copy()
        dist.broadcast(theirs, src=0)
        assert mine[0] == theirs[0]

    def test_one_thread_fails(self):
        if self.rank == 2:
            raise ValueError("thread two broke")
        dist.barrier()


class TestStuck(MultiThreadedTestCase):
    timeout = 2

    def test_deadlock(self):
        a = np.ones(1)
        dist.all_reduce(a)
        if self.rank == 0:
            dist.all_reduce(a)  # waits for rank 1, which waits for a message never sent
        else:
            dist.recv(a, src=0, tag=5)
"""


def test_multithreaded_test_case(pytester: pytest.Pytester) -> None:
    pytester.makepyfile(test_threads=THREADS)
    result = pytester.runpytest("-p", "no:cacheprovider", "--ranks", "2")
    result.assert_outcomes(passed=2, failed=2)
    result.stdout.fnmatch_lines(
        [
            "*test_one_thread_fails failed in rank 2 (world size 3)*",
            "=== rank 2: failed: ValueError: thread two broke",
            "in thread 'mpdist-rank-2':",
        ]
    )
    result.stdout.fnmatch_lines(
        [
            "*test_deadlock timed out after 2 s (world size 2); ranks still running: [[]0, 1[]]",
            "=== rank 0: still running at the timeout; last collective entered: *all_reduce seq=2*",
            "*thread 'mpdist-rank-0' is still running:",
        ]
    )
    result.stdout.fnmatch_lines(["*thread 'mpdist-rank-1' is still running:", "*in test_deadlock*"])
    result.stdout.fnmatch_lines(
        [
            "rerun just this test: python -m pytest test_threads.py::TestStuck::test_deadlock --ranks 2"
        ]
    )


def test_world_size_marker_on_threaded_case(pytester: pytest.Pytester) -> None:
    pytester.makepyfile(
        test_tws=textwrap.dedent(
            """
            import pytest
            from mpdist import distributed as dist
            from mpdist.testing import MultiThreadedTestCase

            @pytest.mark.world_size(1, 4)
            class TestSizes(MultiThreadedTestCase):
                def test_size(self):
                    assert dist.get_world_size() == self.world_size in (1, 4)
            """
        )
    )
    result = pytester.runpytest("-v", "-p", "no:cacheprovider")
    result.assert_outcomes(passed=2)
    result.stdout.fnmatch_lines(["*test_size[[]ws1[]] PASSED*", "*test_size[[]ws4[]] PASSED*"])
