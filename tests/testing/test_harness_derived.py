"""DistributedTestBase and MultiProcContinuousTest on mpdist's own groups (numpy, no torch).

torch's derived harness classes, for suites that never touch torch: ``create_pg``
makes an mpdist group, a continuous class keeps its rank processes and their group
for all of its tests, and neither imports torch.
"""

from __future__ import annotations

import textwrap

import pytest

MODULE = """
import json
import os
import sys

import numpy as np

import mpdist as dist
from mpdist.testing import DistributedTestBase, MultiProcContinuousTest


def note(name, rank):
    with open(os.path.join(os.environ["OUT"], f"{name}{rank}"), "w") as f:
        json.dump([os.getpid(), id(dist.group.WORLD)], f)


class TestBase(DistributedTestBase):
    @property
    def world_size(self):
        return 2

    def test_create_pg_on_the_cpu(self):
        pg = self.create_pg("cpu")
        a = np.array([self.rank + 1.0])
        dist.all_reduce(a)
        assert a.tolist() == [3.0] and pg.size() == 2

    def test_other_devices_are_refused(self):
        try:
            self.create_pg("cuda")
        except ValueError as exc:
            assert "mpdist runs on the CPU" in str(exc)
        else:
            raise AssertionError("create_pg('cuda') did not raise")


class TestContinuous(MultiProcContinuousTest):
    world_size = 3

    def test_0_skips_in_the_ranks(self):
        note("0", self.rank)
        self.skipTest("nothing to do here")  # the group stays up for the next test

    def test_a(self):
        a = np.ones(2) * self.rank
        dist.all_reduce(a)
        assert a.tolist() == [3.0, 3.0] and type(self).pg is dist.group.WORLD
        note("a", self.rank)

    def test_b(self):
        assert dist.get_rank() == self.rank and self.world_size == 3
        note("b", self.rank)

    def test_c_fails(self):
        assert self.rank != 2, "rank 2 says no"

    def test_d(self):
        pass


def test_torch_stayed_out():
    assert "torch" not in sys.modules
"""


def test_derived_classes_on_mpdist_groups(
    pytester: pytest.Pytester, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("OUT", str(pytester.path))
    pytester.makepyfile(test_derived=textwrap.dedent(MODULE))
    # A subprocess: this session may have imported torch already.
    result = pytester.runpytest_subprocess("-p", "no:cacheprovider", "-rA")
    result.assert_outcomes(passed=5, failed=1, skipped=2)
    result.stdout.fnmatch_lines_random(
        [
            "*rank 2: failed: AssertionError: rank 2 says no*",
            "*Previous test failed, skipping test_derived.TestContinuous.test_d*",
        ]
    )
    for rank in range(3):
        # The same process and the same group served the tests, a skip notwithstanding.
        notes = {(pytester.path / f"{test}{rank}").read_text() for test in "0ab"}
        assert len(notes) == 1, notes
