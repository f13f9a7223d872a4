"""MultiThreadedTestCase serves torch tests as torch's own class does: torch's threaded world per test.

Each inner module below is a torch test of our own, importing only the harness from
mpdist. Its rank threads must see torch's threaded process group (their own rank,
nothing left by an earlier test), skip through torch's skip exit codes, run
``perThreadSetUp`` / ``perThreadTearDown`` around the body on a per-rank copy of
the test, and leave torch's global state as they found it.
"""

from __future__ import annotations

import textwrap
import threading

import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("expecttest")  # torch's test utilities import it
# Imported here, before pytester snapshots sys.modules: an inner session that imported
# them first would have them dropped afterwards, and torch cannot import them twice.
pytest.importorskip("torch.testing._internal.common_distributed")
pytest.importorskip("torch.testing._internal.distributed.multi_threaded_pg")

import torch.distributed as tdist  # noqa: E402

import mpdist  # noqa: E402
from mpdist.testing import MultiThreadedTestCase, spawn_threads  # noqa: E402
from mpdist.testing._world import uses_torch  # noqa: E402

HEADER = """
import sys
import threading
import unittest

import numpy as np
import torch
import torch.distributed as tdist
from torch.testing._internal.common_distributed import skip_if_lt_x_gpu

import mpdist
from mpdist.testing import MultiThreadedTestCase, spawn_threads_and_init_comms
"""


def run_inner(pytester: pytest.Pytester, source: str, *args: str) -> pytest.RunResult:
    pytester.makepyfile(test_inner=HEADER + textwrap.dedent(source))
    return pytester.runpytest("-p", "no:cacheprovider", "-rA", *args)


def test_rank_threads_talk_through_torchs_threaded_group(pytester: pytest.Pytester) -> None:
    result = run_inner(
        pytester,
        """
        class TestTorchCollectives(MultiThreadedTestCase):
            @property
            def world_size(self):
                return 3

            def setUp(self):
                super().setUp()
                self._spawn_threads()

            def test_all_reduce_and_ranks(self):
                assert tdist.get_backend() == "threaded"
                assert tdist.get_rank() == self.rank == mpdist.get_rank()
                assert tdist.get_world_size() == 3
                t = torch.arange(4, dtype=torch.float32) * (self.rank + 1)
                tdist.all_reduce(t)
                self.assertEqual(t, torch.arange(4, dtype=torch.float32) * 6)

            def test_all_gather_objects(self):
                out = [None] * 3
                tdist.all_gather_object(out, {"rank": self.rank})
                assert out == [{"rank": r} for r in range(3)]
        """,
    )
    result.assert_outcomes(passed=2)
    # torch's world is put back after each test: the main thread has no group.
    assert not tdist.is_initialized()


def test_every_test_gets_a_fresh_world(pytester: pytest.Pytester) -> None:
    # A group left behind by one test must not be what the next test's ranks see
    # (that made both ranks of a later test think they were rank 0).
    result = run_inner(
        pytester,
        """
        class TestFresh(MultiThreadedTestCase):
            @property
            def world_size(self):
                return 2

            def test_a_leaves_a_subgroup(self):
                self.sub = tdist.new_group([0, 1])
                assert tdist.get_rank() == self.rank

            def test_b_sees_its_own_ranks(self):
                ranks = [None, None]
                tdist.all_gather_object(ranks, tdist.get_rank())
                assert ranks == [0, 1]
                assert tdist.get_rank() == self.rank
        """,
    )
    result.assert_outcomes(passed=2)


def test_skips_in_rank_threads_become_skips_with_torchs_message(
    pytester: pytest.Pytester,
) -> None:
    result = run_inner(
        pytester,
        """
        class TestSkips(MultiThreadedTestCase):
            @property
            def world_size(self):
                return 2

            @skip_if_lt_x_gpu(2)
            def test_needs_gpus(self):
                raise AssertionError("never runs on a CPU-only machine")

            def test_skip_test_in_one_rank(self):
                if self.rank == 1:
                    raise unittest.SkipTest("rank 1 has nothing to do")

            def test_exit_zero_passes(self):
                sys.exit(0)
        """,
    )
    result.assert_outcomes(passed=1, skipped=2)
    result.stdout.fnmatch_lines_random(
        ["*Need at least 2 CUDA devices*", "*rank 1 has nothing to do*"]
    )


def test_a_failing_rank_stops_the_others_in_torch_collectives(
    pytester: pytest.Pytester,
) -> None:
    result = run_inner(
        pytester,
        """
        class TestFailure(MultiThreadedTestCase):
            @property
            def world_size(self):
                return 3

            def test_rank_two_breaks(self):
                if self.rank == 2:
                    raise ValueError("rank two broke")
                t = torch.ones(2)
                for _ in range(3):
                    tdist.all_reduce(t)   # the others wait here for rank 2
        """,
        "--mp-timeout",
        "60",
    )
    result.assert_outcomes(failed=1)
    result.stdout.fnmatch_lines(
        [
            "*failed in rank 2 (world size 3)*",
            "=== rank 2: failed: ValueError: rank two broke",
            "=== rank 0: failed after the abort (rank 2 failed first)*",
        ]
    )
    assert "timed out" not in result.stdout.str()
    assert not tdist.is_initialized()


def test_per_thread_setup_teardown_and_per_rank_instances(pytester: pytest.Pytester) -> None:
    result = run_inner(
        pytester,
        """
        EVENTS = []
        LOCK = threading.Lock()

        def note(*event):
            with LOCK:
                EVENTS.append(event)

        class TestPerThread(MultiThreadedTestCase):
            @property
            def world_size(self):
                return 2

            def setUp(self):
                super().setUp()
                self.shared = "from setUp"
                self._spawn_threads()

            def perThreadSetUp(self):
                # the groups are already up, the body has not run
                note(self._current_test_name, "setup", self.rank, tdist.get_rank(),
                     mpdist.get_rank())

            def perThreadTearDown(self):
                # the groups are gone by now
                note(self._current_test_name, "teardown", self.rank, tdist.is_initialized(),
                     mpdist.is_initialized())

            def test_attributes_are_per_rank(self):
                assert self.shared == "from setUp"
                self.mine = self.rank
                tdist.barrier()  # both ranks have set self.mine
                assert self.mine == self.rank
                note(self._current_test_name, "body", self.rank)

            def test_zz_events(self):
                first = sorted(e[1:] for e in EVENTS if e[0] == "test_attributes_are_per_rank")
                assert first == [
                    ("body", 0), ("body", 1), ("setup", 0, 0, 0), ("setup", 1, 1, 1),
                    ("teardown", 0, False, False), ("teardown", 1, False, False),
                ]
        """,
    )
    result.assert_outcomes(passed=2)


def test_assert_equal_on_rank(pytester: pytest.Pytester) -> None:
    result = run_inner(
        pytester,
        """
        class TestOnRank(MultiThreadedTestCase):
            @property
            def world_size(self):
                return 2

            def test_only_rank_one_compares(self):
                self.assertEqualOnRank(torch.tensor([self.rank]), torch.tensor([1]), rank=1)
                self.assertNotEqualOnRank(torch.tensor([self.rank]), torch.tensor([1]))

            def test_rank_zero_compares_by_default(self):
                self.assertEqualOnRank(self.rank, 1)
        """,
    )
    result.assert_outcomes(passed=1, failed=1)
    result.stdout.fnmatch_lines(["*test_rank_zero_compares_by_default failed in rank 0*"])


def test_spawn_threads_and_init_comms_on_both_kinds_of_class(pytester: pytest.Pytester) -> None:
    result = run_inner(
        pytester,
        """
        class TestPlain(unittest.TestCase):
            @spawn_threads_and_init_comms(world_size=3)
            def test_torch_and_mpdist_groups(self):
                t = torch.ones(1)
                tdist.all_reduce(t)
                a = np.ones(1)
                mpdist.all_reduce(a)
                assert t.item() == a.item() == 3
                assert tdist.get_rank() == mpdist.get_rank()

        class TestOurs(MultiThreadedTestCase):
            @spawn_threads_and_init_comms(world_size=2)
            def test_decorated(self):
                # the decorator's threads, not the class's (no nesting): two ranks
                assert tdist.get_world_size() == 2 and self.rank == tdist.get_rank()
                tdist.barrier()  # both rank threads are alive between the barriers
                names = [t.name for t in threading.enumerate()]
                tdist.barrier()
                assert sorted(n for n in names if n.startswith("mpdist-rank-")) == [
                    "mpdist-rank-0", "mpdist-rank-1"]
        """,
    )
    result.assert_outcomes(passed=2)


def test_classes_without_torch_keep_mpdists_world_alone() -> None:
    class NumpyOnly(MultiThreadedTestCase):
        torch_world = False

    class ThisModule(MultiThreadedTestCase):  # this test module uses torch
        pass

    assert not uses_torch(NumpyOnly)
    assert uses_torch(ThisModule)

    def body(rank: int, world_size: int) -> tuple[int, bool]:
        return mpdist.get_rank(), tdist.is_initialized()

    # spawn_threads is numpy-first: torch's world only when asked for.
    assert spawn_threads(body, 2) == [(0, False), (1, False)]
    assert spawn_threads(body, 2, torch_world=True) == [(0, True), (1, True)]
    assert not tdist.is_initialized()
    assert not [t for t in threading.enumerate() if t.name.startswith("mpdist-rank-")]


def test_a_failing_inner_run_raises_what_torch_raises(pytester: pytest.Pytester) -> None:
    # torch's suites wrap a deliberately failing threaded run in assertRaises(RuntimeError).
    result = run_inner(
        pytester,
        """
        class TestExpectedFailure(unittest.TestCase):
            def test_inner_failure_is_a_runtime_error(self):
                @spawn_threads_and_init_comms(world_size=2)
                def fails_on_rank_1(self):
                    t = torch.ones(1)
                    tdist.all_reduce(t)
                    if tdist.get_rank() == 1:
                        raise AssertionError("rank 1 fails on purpose")
                    tdist.all_reduce(t)

                with self.assertRaisesRegex(RuntimeError, "rank 1 fails on purpose"):
                    fails_on_rank_1(self)
        """,
    )
    result.assert_outcomes(passed=1)
