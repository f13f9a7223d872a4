"""The soak (issue 17 item 6): nothing grows over many collectives or many harness tests.

* Mixed collectives on 4 ranks (the fault campaign's mix, with no fault): each rank's fd
  count and RSS after a warm-up and at the end; fds must be equal, RSS within RSS_BOUND.
* Consecutive harness tests, with worker reuse and with fresh ranks each: the parent's fds
  and threads after the first tests and after the last must be equal.

Short mode (CI) runs 2,000 collectives and 40 + 40 tests; ``MPDIST_SOAK=thorough`` runs the
issue's 10,000 collectives and 200 + 200 tests. Each test prints its figures.
"""

from __future__ import annotations

import os
import sys
import textwrap
import threading

import psutil
import pytest

sys.path.insert(0, os.path.join(os.path.dirname(__file__), os.pardir, "faults"))
from campaign import Case, Op, plan, run_plan, subgroup_ranks  # noqa: E402

from mpdist import distributed as dist  # noqa: E402
from mpdist.testing import spawn_ranks  # noqa: E402

THOROUGH = os.environ.get("MPDIST_SOAK", "short") == "thorough"
N_COLLECTIVES = 10_000 if THOROUGH else 2_000
N_TESTS = 200 if THOROUGH else 40
WARM = 0.2  # the share of the run counted as warm-up
RSS_BOUND = 8 << 20  # RSS may move by allocator noise, not by a leak of every collective


def _usage() -> tuple[int, int]:
    me = psutil.Process()
    return me.num_fds(), me.memory_info().rss


def soak_rank(rank: int, world_size: int, case: Case) -> tuple[tuple[int, int], tuple[int, int]]:
    """Run ``case`` in two parts; (fds, rss) after the first (the warm-up) and the second."""
    cut = int(len(case.ops) * WARM)
    group = dist.new_group(subgroup_ranks(world_size))
    run_plan(rank, world_size, Case(0, world_size, "none", -1, -1, case.ops[:cut]), None, group)
    warm = _usage()
    run_plan(rank, world_size, Case(0, world_size, "none", -1, -1, case.ops[cut:]), None, group)
    return warm, _usage()


def test_mixed_collectives_keep_fds_and_rss_flat() -> None:
    ops: tuple[Op, ...] = plan(0, 4, "none", n_ops=N_COLLECTIVES).ops
    results = spawn_ranks(soak_rank, 4, Case(0, 4, "none", -1, -1, ops), timeout=1800)
    for rank, ((fds0, rss0), (fds1, rss1)) in enumerate(results):
        print(
            f"rank {rank}: fds {fds0} -> {fds1}, RSS {rss0 / 2**20:.1f} -> {rss1 / 2**20:.1f} MiB"
            f" over {N_COLLECTIVES} collectives"
        )
        assert fds1 == fds0, f"rank {rank} fds grew: {fds0} -> {fds1}"
        assert rss1 - rss0 < RSS_BOUND, f"rank {rank} RSS grew: {rss0} -> {rss1}"


INNER = """
import numpy as np
from mpdist import distributed as dist
from mpdist.testing import MultiProcessTestCase, with_comms


class TestSoak(MultiProcessTestCase):
    reuse_processes = {reuse}

    @property
    def world_size(self):
        return 2

{tests}
"""

ONE = """
    @with_comms
    def test_{i:03d}(self):
        a = np.ones(3) * self.rank
        dist.all_reduce(a)
        assert a.tolist() == [1.0, 1.0, 1.0]
"""

INNER_CONFTEST = """
import os, threading, psutil

def pytest_runtest_teardown(item):
    with open(os.environ["SOAK_COUNTS"], "a") as f:
        f.write(f"{psutil.Process().num_fds()} {threading.active_count()}\\n")
"""


@pytest.mark.parametrize("reuse", [True, False], ids=["reused", "fresh"])
def test_consecutive_harness_tests_keep_parent_fds_and_threads_flat(
    reuse: bool, pytester: pytest.Pytester, tmp_path, monkeypatch
) -> None:
    counts = tmp_path / "counts"
    monkeypatch.setenv("SOAK_COUNTS", str(counts))
    tests = "".join(ONE.format(i=i) for i in range(N_TESTS))
    pytester.makeconftest(INNER_CONFTEST)
    pytester.makepyfile(test_inner=INNER.format(reuse=reuse, tests=textwrap.indent(tests, "")))
    fds, threads = psutil.Process().num_fds(), threading.active_count()
    result = pytester.runpytest("-p", "no:cacheprovider", "-q")
    result.assert_outcomes(passed=N_TESTS)
    rows = [tuple(int(x) for x in line.split()) for line in counts.read_text().splitlines()]
    assert len(rows) == N_TESTS
    warm = rows[int(N_TESTS * WARM)]
    print(
        f"{'reused' if reuse else 'fresh'} workers, {N_TESTS} tests: parent fds {warm[0]} ->"
        f" {rows[-1][0]}, threads {warm[1]} -> {rows[-1][1]} (before the session: {fds}, {threads})"
    )
    assert rows[-1] == warm, f"parent grew between test {int(N_TESTS * WARM)} and the last: {rows}"
