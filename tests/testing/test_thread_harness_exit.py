"""The thread harness as the process harness: a rank thread's ``sys.exit(0)`` that leaves failing
peers behind is named as the cause, and ``--max-ranks`` skips (or fails) bigger thread worlds."""

from __future__ import annotations

import pytest
from _harness_helpers import check_limit_from_env_and_ini

CASES = """
import sys

import numpy as np
from mpdist import distributed as dist
from mpdist.testing import MultiThreadedTestCase
from mpdist.testing.multithreaded import spawn_threads


class TestEarly(MultiThreadedTestCase):
    @property
    def world_size(self):
        return 2

    def test_exit_zero(self):
        if self.rank == 1:
            sys.exit(0)
        dist.all_reduce(np.ones(1))  # rank 1 is gone: a lost connection

    def test_exit_after_its_part(self):
        dist.barrier()
        if self.rank == 1:
            sys.exit(0)  # its peer needs nothing more from it


def leaves(rank, world_size):
    if rank == 0:
        sys.exit()
    dist.all_reduce(np.ones(1))


def test_spawn_threads_exit():
    spawn_threads(leaves, 3)
"""


def test_exit_zero_in_a_rank_thread_names_the_rank_that_left(pytester: pytest.Pytester) -> None:
    pytester.makepyfile(test_early=CASES)
    result = pytester.runpytest("-p", "no:cacheprovider", "-k", "exit_zero")
    result.assert_outcomes(failed=1)
    result.stdout.fnmatch_lines(
        [
            "*rank 1: SystemExit: sys.exit(0): "
            "rank 1 left the test while ranks [[]0[]] were still running*",
            "*failed in rank 1 (world size 2); failing ranks: [[]0, 1[]] "
            "([[]0[]] only because rank 1 failed)",
        ]
    )
    result.stdout.fnmatch_lines(["=== rank 1: failed: SystemExit: sys.exit(0)*"])
    result.stdout.fnmatch_lines(["=== rank 0: failed after losing a peer (rank 1 failed first)*"])


def test_spawn_threads_names_the_thread_that_left(pytester: pytest.Pytester) -> None:
    pytester.makepyfile(test_early=CASES)
    result = pytester.runpytest("-p", "no:cacheprovider", "-k", "spawn_threads_exit")
    result.assert_outcomes(failed=1)
    # sys.exit() with no code is sys.exit(0); both peers were still running.
    result.stdout.fnmatch_lines(
        [
            "*rank 0: SystemExit: sys.exit(0): "
            "rank 0 left the test while ranks [[]1, 2[]] were still running*",
            "*failed in rank 0 (world size 3); failing ranks: [[]0, 1, 2[]] "
            "([[]1, 2[]] only because rank 0 failed)",
        ]
    )


def test_an_exit_after_which_no_peer_fails_is_a_pass(pytester: pytest.Pytester) -> None:
    pytester.makepyfile(test_early=CASES)
    result = pytester.runpytest("-p", "no:cacheprovider", "-k", "after_its_part")
    result.assert_outcomes(passed=1)


BIG = """
import pytest
from mpdist import distributed as dist
from mpdist.testing import MultiThreadedTestCase
from mpdist.testing.multithreaded import spawn_threads, spawn_threads_and_init_comms


class TestThree(MultiThreadedTestCase):
    @property
    def world_size(self):
        return 3

    def test_three(self):
        assert dist.get_world_size() == 3


class TestTwo(MultiThreadedTestCase):
    @property
    def world_size(self):
        return 2

    def test_two(self):
        assert dist.get_world_size() == 2

    @spawn_threads_and_init_comms(world_size=4)
    def test_decorated_four(self):
        pass


def test_spawn_threads_three():
    assert spawn_threads(lambda rank, ws: rank, 3) == [0, 1, 2]
"""


def test_max_ranks_skips_bigger_thread_worlds_naming_the_limit(
    pytester: pytest.Pytester, monkeypatch: pytest.MonkeyPatch
) -> None:
    pytester.makepyfile(test_big=BIG)
    result = pytester.runpytest("--max-ranks", "2", "-p", "no:cacheprovider", "-rs")
    result.assert_outcomes(passed=1, skipped=3)
    skips = [line for line in result.stdout.lines if line.startswith("SKIPPED")]
    # The test case's and spawn_threads' worlds of 3, the decorated method's of 4.
    assert sum("world size 3 is over the limit of 2 ranks (--max-ranks)" in s for s in skips) == 2
    assert sum("world size 4 is over the limit of 2 ranks (--max-ranks)" in s for s in skips) == 1
    check_limit_from_env_and_ini(pytester, monkeypatch)
    result = pytester.runpytest("-p", "no:cacheprovider", "-rs")  # the ini alone skips
    result.assert_outcomes(passed=1, skipped=3)
