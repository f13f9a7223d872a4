"""MultiProcessTestCase outcomes under pytest: pass, fail, skip, exit codes, signals, abort, timeout."""

from __future__ import annotations

import textwrap
import xml.etree.ElementTree as ET

import pytest
from _harness_helpers import alive, leftover_files, read_pids

HEADER = """
import os, signal, sys, time
import numpy as np
from mpdist import distributed as dist
from mpdist.store import FileStore
from mpdist.testing import MultiProcessTestCase


def init(case):
    dist.init_process_group(
        "tcp", store=FileStore(case.file_name, case.world_size),
        rank=case.rank, world_size=case.world_size,
    )


def note_pid(tag="rank"):
    with open(os.path.join(os.environ["PID_DIR"], f"{tag}{os.getpid()}"), "w") as f:
        f.write(str(os.getpid()))
"""


def write(pytester: pytest.Pytester, name: str, body: str) -> None:
    pytester.makepyfile(**{name: HEADER + textwrap.dedent(body)})


def test_pass_fail_skip_with_rank_tracebacks_and_output(
    pytester: pytest.Pytester, pid_dir: str, private_tmp
) -> None:
    write(
        pytester,
        "test_outcomes",
        """
        class TestOutcomes(MultiProcessTestCase):
            def test_pass(self):
                note_pid()
                init(self)
                a = np.full(3, self.rank + 1.0)
                dist.all_reduce(a)
                assert (a == 3.0).all()
                print(f"sum seen by rank {self.rank}")

            def test_fail(self):
                note_pid()
                print(f"stdout of rank {self.rank}")
                print(f"stderr of rank {self.rank}", file=sys.stderr)
                if self.rank == 1:
                    raise ValueError("rank one is broken")

            def test_skip(self):
                self.skipTest("needs a GPU")
        """,
    )
    result = pytester.runpytest("-rs", "-p", "no:cacheprovider")
    result.assert_outcomes(passed=1, failed=1, skipped=1)
    out = result.stdout.str()
    result.stdout.fnmatch_lines(
        [
            "*test_outcomes.py::TestOutcomes::test_fail failed in rank 1 (world size 2)*",
            "=== rank 1: failed: ValueError: rank one is broken",
            "Traceback (most recent call last):",
            '*raise ValueError("rank one is broken")',
            "ValueError: rank one is broken",
            "=== rank 0: passed",
        ]
    )
    # Per-rank output in labelled report sections, the rerun command last.
    result.stdout.fnmatch_lines(
        [
            "*Captured stdout rank 0*",
            "stdout of rank 0",
            "*Captured stderr rank 0*",
            "stderr of rank 0",
            "*Captured stdout rank 1*",
            "stdout of rank 1",
            "*rerun just this test*",
            "python -m pytest test_outcomes.py::TestOutcomes::test_fail --ranks 2",
            "*short test summary info*",
        ]
    )
    result.stdout.fnmatch_lines(["SKIPPED*needs a GPU*"])
    # The parent-side harness frames are not the story: no wrapper traceback.
    assert "run_in_ranks" not in out
    assert not alive(read_pids(pid_dir))
    assert leftover_files(private_tmp) == []


def test_exit_code_signal_and_sys_exit_are_reported(pytester: pytest.Pytester) -> None:
    write(
        pytester,
        "test_exits",
        """
        class TestExits(MultiProcessTestCase):
            def test_os_exit(self):
                if self.rank == 1:
                    os._exit(3)

            def test_signal(self):
                if self.rank == 0:
                    os.kill(os.getpid(), signal.SIGKILL)

            def test_sys_exit(self):
                if self.rank == 1:
                    sys.exit(4)

            def test_segfault(self):
                import faulthandler
                if self.rank == 1:
                    faulthandler._sigsegv()
        """,
    )
    result = pytester.runpytest("-p", "no:cacheprovider")
    result.assert_outcomes(failed=4)
    result.stdout.fnmatch_lines(
        [
            "*test_os_exit failed in rank 1*",
            "=== rank 1: exited without reporting a result (exit code 3)",
        ]
    )
    result.stdout.fnmatch_lines(["=== rank 0: exited without reporting a result (signal SIGKILL)"])
    result.stdout.fnmatch_lines(["=== rank 1: failed: SystemExit: sys.exit(4)"])
    # A crash: the signal's name, and faulthandler's stack in the rank's stderr section.
    result.stdout.fnmatch_lines(
        [
            "=== rank 1: exited without reporting a result (signal SIGSEGV)",
            "*Captured stderr rank 1*",
            "Fatal Python error: Segmentation fault",
            "*",
            '*File "*test_exits.py", line * in test_segfault',
        ]
    )


def test_first_failure_aborts_the_other_ranks(pytester: pytest.Pytester, pid_dir: str) -> None:
    # Rank 0 fails while a forked child keeps its sockets open, so rank 1 would wait in
    # recv for the whole group timeout if nothing stopped it. What stops it is whichever
    # comes first: the harness's abort, or the transport noticing that rank 0 closed its
    # group (it can, forked child or not). Either way it is a consequence of rank 0, and
    # nothing waits for the timeout. (test_harness_failure_order has a case that only the
    # abort can end.)
    write(
        pytester,
        "test_abort",
        """
        from datetime import timedelta

        class TestAbort(MultiProcessTestCase):
            timeout = 120

            def test_abort(self):
                dist.init_process_group(
                    "tcp", store=FileStore(self.file_name, 2), rank=self.rank,
                    world_size=2, timeout=timedelta(seconds=100),
                )
                if self.rank == 0:
                    ready_r, ready_w = os.pipe()
                    pid = os.fork()
                    if pid == 0:  # the grandchild holds the connections open
                        note_pid("grandchild")
                        os.write(ready_w, b"x")
                        time.sleep(100)
                        os._exit(0)
                    os.read(ready_r, 1)  # the grandchild's pid is on record
                    raise RuntimeError("rank 0 gives up")
                buf = np.zeros(4)
                dist.recv(buf, src=0)
        """,
    )
    result = pytester.runpytest("-p", "no:cacheprovider")
    result.assert_outcomes(failed=1)
    result.stdout.fnmatch_lines(
        [
            "*failed in rank 0*",
            "=== rank 0: failed: RuntimeError: rank 0 gives up",
        ]
    )
    result.stdout.re_match_lines(
        [
            r"=== rank 1: failed after the abort \(rank 0 failed first\): "
            r".*aborted by the harness: rank 0 failed.*"
            r"|=== rank 1: failed after losing a peer \(rank 0 failed first\): "
            r".*DistNetworkError: recv: rank 1 lost its connection to rank 0.*"
        ]
    )
    assert "timed out" not in result.stdout.str()
    pids = read_pids(pid_dir)
    assert len(pids) == 1
    assert not alive(pids), "the grandchild of the failed rank outlived the test"


def test_timeout_dumps_stacks_and_last_collective(
    pytester: pytest.Pytester, pid_dir: str, private_tmp
) -> None:
    write(
        pytester,
        "test_hang",
        """
        class TestHang(MultiProcessTestCase):
            timeout = 4

            def test_hang(self):
                note_pid()
                init(self)
                a = np.ones(2)
                dist.all_reduce(a)
                print(f"rank {self.rank} before the hang", flush=True)
                if self.rank == 1:
                    time.sleep(100)
                dist.all_reduce(a)
        """,
    )
    result = pytester.runpytest("-p", "no:cacheprovider")
    result.assert_outcomes(failed=1)
    result.stdout.fnmatch_lines(
        [
            "*test_hang timed out after 4 s (world size 2); ranks still running: [[]0, 1[]]",
            "=== rank 0: still running at the timeout; last collective entered: all_reduce seq=2 *",
            "--- rank 0 stack dump ---",
            "*",
            "*in all_reduce",
            '  File "*test_hang.py", line *in test_hang',
        ]
    )
    result.stdout.fnmatch_lines(
        [
            "=== rank 1: still running at the timeout; last collective entered: all_reduce seq=1 *",
            "--- rank 1 stack dump ---",
        ]
    )
    result.stdout.fnmatch_lines(["*Captured stdout rank 1*", "rank 1 before the hang"])
    pids = read_pids(pid_dir)
    assert len(pids) == 2
    assert not alive(pids)
    assert leftover_files(private_tmp) == []


def test_skip_decorators_and_world_size_property(pytester: pytest.Pytester) -> None:
    write(
        pytester,
        "test_skips",
        """
        import unittest
        from mpdist.testing import requires_world_size, skip_if_lt_x_ranks

        class TestSkips(MultiProcessTestCase):
            @requires_world_size(5)
            def test_needs_five(self):
                raise AssertionError("must not run")

            @skip_if_lt_x_ranks(2)
            def test_two_is_enough(self):
                assert self.world_size == 2

            @unittest.skip("skipped in the parent")
            def test_unittest_skip(self):
                raise AssertionError("must not run")

        class TestFour(MultiProcessTestCase):
            @property
            def world_size(self):
                return 4

            def test_four(self):
                assert self.world_size == 4 and 0 <= self.rank < 4
        """,
    )
    result = pytester.runpytest("-rs", "-p", "no:cacheprovider")
    result.assert_outcomes(passed=2, skipped=2)
    result.stdout.fnmatch_lines(["SKIPPED*Need at least 5 ranks, world size is 2*"])
    result.stdout.fnmatch_lines(["SKIPPED*skipped in the parent*"])


def test_seeds_are_identical_in_every_rank(pytester: pytest.Pytester) -> None:
    write(
        pytester,
        "test_seed",
        """
        import random
        import mpdist

        class TestSeed(MultiProcessTestCase):
            def test_seed(self):
                init(self)
                mine = np.array(
                    [np.random.rand(), random.random(), mpdist.random.default_generator().random()]
                )
                theirs = mine.copy()
                dist.broadcast(theirs, src=0)
                np.testing.assert_array_equal(mine, theirs)
        """,
    )
    pytester.runpytest("-p", "no:cacheprovider").assert_outcomes(passed=1)


@pytest.mark.parametrize("on_ci", [False, True])
def test_one_line_summaries_show_the_first_failure_only(
    pytester: pytest.Pytester, monkeypatch: pytest.MonkeyPatch, on_ci: bool
) -> None:
    # pytest prints a plain-string failure in full in its short summary on CI ($CI set):
    # every rank's traceback again. The summary, --tb=line and JUnit's message take the
    # failure's first line.
    if on_ci:
        monkeypatch.setenv("CI", "true")
    else:
        monkeypatch.delenv("CI", raising=False)
        monkeypatch.delenv("BUILD_NUMBER", raising=False)
    write(
        pytester,
        "test_summary",
        """
        class TestSummary(MultiProcessTestCase):
            def test_fail(self):
                if self.rank == 1:
                    raise KeyError("lost")
        """,
    )
    first = "rank 1: KeyError: 'lost'"
    result = pytester.runpytest("--ranks", "2", "-p", "no:cacheprovider", "--junitxml=out.xml")
    result.assert_outcomes(failed=1)
    summary = [line for line in result.outlines if line.startswith("FAILED ")]
    assert summary == [f"FAILED test_summary.py::TestSummary::test_fail - {first}"]
    # once atop the report, once in the summary; the traceback's own line once
    assert "\n".join(result.outlines).count(first) == 2
    assert "\n".join(result.outlines).count('raise KeyError("lost")') == 1
    failure = next(ET.parse(pytester.path / "out.xml").getroot().iter("failure"))
    assert failure.get("message") == first
    assert 'raise KeyError("lost")' in (failure.text or "")
    line = pytester.runpytest("--ranks", "2", "-p", "no:cacheprovider", "--tb=line")
    line.stdout.fnmatch_lines([f"*test_summary.py:*: {first}"])
