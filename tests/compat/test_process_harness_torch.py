"""MultiProcessTestCase and its derived classes serve torch tests with torch's surface.

The inner modules are torch tests of our own that import only the harness from
mpdist: ``destroy_pg_upon_exit``, ``TIMEOUT_OVERRIDE`` (ours and torch's), the
return-code checks, torch's internals (``is_master``, ``_current_test_name``,
``TEST_ERROR_EXIT_CODE``), ``DistributedTestBase`` and ``MultiProcContinuousTest``
with torch's gloo groups in real processes.
"""

from __future__ import annotations

import textwrap

import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("expecttest")  # torch's test utilities import it
# Imported before pytester snapshots sys.modules: torch cannot import them twice.
pytest.importorskip("torch.testing._internal.common_distributed")

HEADER = """
import json
import os
import sys
import time
from multiprocessing import util

import torch
import torch.distributed as tdist

from mpdist.testing import (
    TIMEOUT_OVERRIDE,
    DistributedTestBase,
    MultiProcContinuousTest,
    MultiProcessTestCase,
)


class TwoRanks(MultiProcessTestCase):
    @property
    def world_size(self):
        return 2

    def setUp(self):
        super().setUp()
        self._spawn_processes()

    def init_gloo(self):
        tdist.init_process_group(
            "gloo", store=tdist.FileStore(self.file_name, 2), rank=self.rank, world_size=2
        )
        # Both ranks are connected before either may end: a rank whose test returns at
        # once would otherwise exit while its peer still sets up gloo's mesh.
        tdist.barrier()
"""


def run_inner(pytester: pytest.Pytester, source: str, *args: str) -> pytest.RunResult:
    pytester.makepyfile(test_inner=HEADER + textwrap.dedent(source))
    return pytester.runpytest("-p", "no:cacheprovider", "-rA", *args)


def test_destroy_pg_upon_exit_decides_whether_the_group_outlives_the_test(
    pytester: pytest.Pytester, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("OUT", str(pytester.path))
    result = run_inner(
        pytester,
        """
        def record_at_exit(path):
            # Runs when the rank process exits, after the harness is done with the test.
            def record():
                with open(path, "w") as f:
                    json.dump(tdist.is_initialized(), f)
            util.Finalize(None, record, exitpriority=0)

        class TestDestroyed(TwoRanks):
            def test_group(self):
                self.init_gloo()
                record_at_exit(os.path.join(os.environ["OUT"], f"destroyed{self.rank}"))

        class TestKept(TwoRanks):
            @property
            def destroy_pg_upon_exit(self):
                return False

            def test_group(self):
                self.init_gloo()
                record_at_exit(os.path.join(os.environ["OUT"], f"kept{self.rank}"))
        """,
    )
    result.assert_outcomes(passed=2)
    out = pytester.path
    for rank in (0, 1):
        assert (out / f"destroyed{rank}").read_text() == "false"
        assert (out / f"kept{rank}").read_text() == "true"


def test_timeout_override_sets_a_tests_deadline(pytester: pytest.Pytester) -> None:
    result = run_inner(
        pytester,
        """
        from torch.testing._internal.common_distributed import TIMEOUT_OVERRIDE as TORCH_OVERRIDE

        TIMEOUT_OVERRIDE["test_sleeps_past_our_override"] = 1
        TORCH_OVERRIDE["test_sleeps_past_torchs_override"] = 1

        class TestDeadlines(TwoRanks):
            def test_sleeps_past_our_override(self):
                time.sleep(60)

            def test_sleeps_past_torchs_override(self):
                time.sleep(60)
        """,
        "--mp-timeout",
        "100",
    )
    result.assert_outcomes(failed=2)
    result.stdout.fnmatch_lines_random(
        [
            "*test_sleeps_past_our_override timed out after 1 s*",
            "*test_sleeps_past_torchs_override timed out after 1 s*",
        ]
    )


def test_return_code_checks_and_torchs_internals(pytester: pytest.Pytester) -> None:
    result = run_inner(
        pytester,
        """
        class TestCodes(TwoRanks):
            def setUp(self):
                super().setUp()
                # torch's suites list the methods themselves (or their __wrapped__)
                self.special_return_code_checks = {
                    self.test_every_rank_exits_3: 3,
                    "test_expects_3_but_passes": 3,
                }
                self.skip_return_code_checks = [self.test_rank_1_dies, self.test_listed_but_raises]

            def test_every_rank_exits_3(self):
                sys.exit(3)

            def test_expects_3_but_passes(self):
                pass

            def test_rank_1_dies(self):
                if self.rank == 1:
                    os._exit(5)

            def test_listed_but_raises(self):
                raise ValueError("a real failure")

            def test_unlisted_exit_fails(self):
                sys.exit(self.TEST_ERROR_EXIT_CODE)

            def test_surface(self):
                assert self.is_master == (self.rank == 0)
                assert self._current_test_name() == "test_surface"
                assert self.TEST_ERROR_EXIT_CODE == 10
        """,
    )
    result.assert_outcomes(passed=3, failed=3)
    result.stdout.fnmatch_lines_random(
        [
            "*Expected exit code 3 but got 0 for rank 0*",
            "*rank 0: failed: ValueError: a real failure*",
            "*rank 0: failed: SystemExit: sys.exit(10)*",
        ]
    )


def test_distributed_test_base_makes_torch_gloo_groups(pytester: pytest.Pytester) -> None:
    result = run_inner(
        pytester,
        """
        class TestBase(DistributedTestBase):
            @property
            def world_size(self):
                return 2

            def test_create_pg(self):
                assert os.environ["WORLD_SIZE"] == "2"
                assert self.backend("cpu") == "gloo"
                pg = self.create_pg("cpu")
                assert pg.size() == 2 and tdist.get_backend() == "gloo"
                t = torch.tensor([self.rank + 1.0])
                tdist.all_reduce(t)
                self.assertEqual(t, torch.tensor([3.0]))
                assert self.rank_to_device("cpu") == {0: [0], 1: [0]}
        """,
    )
    result.assert_outcomes(passed=1)


def test_continuous_test_keeps_ranks_and_group_for_the_class(
    pytester: pytest.Pytester, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("OUT", str(pytester.path))
    result = run_inner(
        pytester,
        """
        def note(name, rank):
            with open(os.path.join(os.environ["OUT"], f"{name}{rank}"), "w") as f:
                json.dump([os.getpid(), id(tdist.group.WORLD)], f)

        class TestContinuous(MultiProcContinuousTest):
            world_size = 2

            def test_a_all_reduce(self):
                t = torch.ones(2) * (self.rank + 1)
                tdist.all_reduce(t)
                self.assertEqual(t, torch.full((2,), 3.0))
                assert type(self).pg is tdist.group.WORLD
                note("a", self.rank)

            def test_b_same_processes_same_group(self):
                assert self.world_size == 2 and self.rank == tdist.get_rank()
                note("b", self.rank)

            def test_c_fails(self):
                assert self.rank == 0, "rank 1 disagrees"

            def test_d_skipped_after_the_failure(self):
                pass
        """,
    )
    result.assert_outcomes(passed=2, failed=1, skipped=1)
    result.stdout.fnmatch_lines(["*Previous test failed, skipping*test_d_skipped_after*"])
    for rank in (0, 1):
        first = (pytester.path / f"a{rank}").read_text()
        assert first == (pytester.path / f"b{rank}").read_text()
