"""The pytest plugin: options, markers and ids, mpdist function tests, xdist, module import paths."""

from __future__ import annotations

import re
import subprocess
import sys
import textwrap

import pytest

CASE = """
import numpy as np
import pytest
from mpdist import distributed as dist
from mpdist.store import FileStore
from mpdist.testing import MultiProcessTestCase
"""


def test_options_and_markers_are_registered(pytester: pytest.Pytester) -> None:
    result = pytester.runpytest("--markers")
    result.stdout.fnmatch_lines(
        [
            "@pytest.mark.world_size(*sizes): run the test once per world size (test ids [[]ws2[]]*",
        ]
    )
    result.stdout.fnmatch_lines(['@pytest.mark.mpdist(world_size=None, backend="tcp"*'])
    help_text = pytester.runpytest("--help").stdout.str()
    for option in ("--ranks", "--mp-timeout", "--mp-start-method", "--mp-debug-rank"):
        assert option in help_text


def test_world_size_marker_makes_one_item_per_size(pytester: pytest.Pytester) -> None:
    pytester.makepyfile(
        test_ids=CASE
        + textwrap.dedent(
            """
            @pytest.mark.world_size(2, 3)
            class TestSizes(MultiProcessTestCase):
                def test_size(self):
                    dist.init_process_group(
                        "tcp", store=FileStore(self.file_name, self.world_size),
                        rank=self.rank, world_size=self.world_size,
                    )
                    a = np.ones(1)
                    dist.all_reduce(a)
                    assert a[0] == self.world_size in (2, 3)

            @pytest.mark.world_size(1, 3)
            @pytest.mark.mpdist
            def test_fn(rank, world_size):
                a = np.ones(1)
                dist.all_reduce(a)
                assert a[0] == world_size and dist.get_world_size() == world_size
            """
        )
    )
    collected = pytester.runpytest("--collect-only", "-q")
    collected.stdout.fnmatch_lines(
        [
            "test_ids.py::TestSizes::test_size[[]ws2[]]",
            "test_ids.py::TestSizes::test_size[[]ws3[]]",
            "test_ids.py::test_fn[[]ws1[]]",
            "test_ids.py::test_fn[[]ws3[]]",
        ]
    )
    pytester.runpytest("-p", "no:cacheprovider").assert_outcomes(passed=4)


def test_ranks_option_and_environment_set_the_default_world_size(
    pytester: pytest.Pytester, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Precedence: a class's own world_size > --ranks > $MPDIST_WORLD_SIZE > the default,
    # which is torch's 4 for the test case classes and 2 for marked functions.
    pytester.makepyfile(
        test_ranks=CASE
        + textwrap.dedent(
            """
            import os

            from mpdist.testing import MultiThreadedTestCase

            CASES = int(os.environ["EXPECTED_CASES"])
            FUNCTIONS = int(os.environ["EXPECTED_FUNCTIONS"])

            class TestRanks(MultiProcessTestCase):
                def test_world_size(self):
                    assert self.world_size == CASES and 0 <= self.rank < CASES

            class TestThreadRanks(MultiThreadedTestCase):
                def test_world_size(self):
                    assert self.world_size == CASES and 0 <= self.rank < CASES

            class TestOwnSize(MultiProcessTestCase):
                @property
                def world_size(self):
                    return 3

                def test_world_size(self):
                    assert self.world_size == 3 and 0 <= self.rank < 3

            @pytest.mark.mpdist(backend=None)
            def test_fn(rank, world_size):
                assert world_size == FUNCTIONS
            """
        )
    )
    for option, env, cases, functions in [
        (["--ranks", "1"], "2", 1, 1),
        ([], "1", 1, 1),
        ([], None, 4, 2),
    ]:
        monkeypatch.setenv("EXPECTED_CASES", str(cases))
        monkeypatch.setenv("EXPECTED_FUNCTIONS", str(functions))
        if env is None:
            monkeypatch.delenv("MPDIST_WORLD_SIZE", raising=False)
        else:
            monkeypatch.setenv("MPDIST_WORLD_SIZE", env)
        result = pytester.runpytest(*option, "-p", "no:cacheprovider")
        result.assert_outcomes(passed=4)


def test_mpdist_function_runs_in_every_rank_with_fixtures_and_assert_rewriting(
    pytester: pytest.Pytester,
) -> None:
    pytester.makepyfile(
        test_fn=CASE
        + textwrap.dedent(
            """
            @pytest.fixture
            def payload():
                return {"scale": 10}

            @pytest.mark.mpdist(world_size=3)
            def test_shared_tmp_path(rank, world_size, tmp_path, payload):
                assert dist.get_rank() == rank and dist.get_world_size() == world_size == 3
                (tmp_path / f"rank{rank}").write_text(str(rank * payload["scale"]))
                dist.barrier()
                seen = sorted(p.name for p in tmp_path.iterdir())
                assert seen == ["rank0", "rank1", "rank2"]

            @pytest.mark.parametrize("n", [4])
            @pytest.mark.mpdist
            def test_plain_assert(rank, n):
                values = [rank, n]
                assert values == [0, n]

            class TestInClass:
                @pytest.mark.mpdist(backend="tcp")
                def test_method(self, rank):
                    a = np.array([rank], dtype=np.int64)
                    dist.all_reduce(a)
                    assert a[0] == 1
            """
        )
    )
    result = pytester.runpytest("-p", "no:cacheprovider")
    result.assert_outcomes(passed=2, failed=1)
    # Rank 1 fails; pytest's assertion rewriting explains the comparison inside the rank.
    result.stdout.fnmatch_lines(
        [
            "*test_plain_assert?4? failed in rank 1*",
            "=== rank 1: failed: AssertionError: assert [1, 4] == [0, 4]",
            "*",
            "*At index 0 diff: 1 != 0*",
        ]
    )
    result.stdout.fnmatch_lines(
        ["rerun just this test: python -m pytest 'test_fn.py::test_plain_assert[[]4[]]' --ranks 2"]
    )


def test_unpicklable_fixture_is_a_clear_error(pytester: pytest.Pytester) -> None:
    pytester.makepyfile(
        test_bad=CASE
        + textwrap.dedent(
            """
            import threading

            @pytest.fixture
            def lock():
                return threading.Lock()

            @pytest.mark.mpdist
            def test_lock(rank, lock):
                pass
            """
        )
    )
    result = pytester.runpytest("-p", "no:cacheprovider")
    result.assert_outcomes(failed=1)
    result.stdout.fnmatch_lines(
        ["*fixture 'lock' of test_bad.py::test_lock cannot be sent to the ranks*"]
    )


def test_the_threaded_backend_runs_the_ranks_as_threads(pytester: pytest.Pytester) -> None:
    # One process per rank would give each rank a threaded world of its own: the
    # collective would wait for peers that can never come.
    pytester.makepyfile(
        test_thr=CASE
        + textwrap.dedent(
            """
            import os
            import threading

            PID = os.getpid()

            @pytest.mark.mpdist(world_size=3, backend="threaded", timeout=20)
            def test_sum(rank, world_size, tmp_path):
                assert os.getpid() == PID and threading.current_thread().name.startswith("mpdist")
                a = np.array([rank + 1.0])
                dist.all_reduce(a)
                assert world_size == 3 and a[0] == 6.0
                (tmp_path / f"rank{rank}").write_text("ran")  # one tmp_path for the ranks
                SHARED.append(tmp_path)

            SHARED = []

            def test_every_rank_ran_once():
                assert len(SHARED) == 3 and len(set(SHARED)) == 1
                assert sorted(p.name for p in SHARED[0].iterdir()) == ["rank0", "rank1", "rank2"]

            @pytest.mark.mpdist(world_size=2, backend="threaded", timeout=20)
            def test_fails_in_rank_one(rank):
                dist.barrier()
                assert rank != 1
            """
        )
    )
    result = pytester.runpytest("-p", "no:cacheprovider")
    result.assert_outcomes(passed=2, failed=1)
    result.stdout.fnmatch_lines(["*rank 1: AssertionError: assert 1 != 1*"])


def test_spawn_start_method_and_importlib_mode(pytester: pytest.Pytester) -> None:
    # A test module in a sub-directory, imported by pytest's importlib mode (not on sys.path).
    pytester.mkpydir("pkg")
    pytester.path.joinpath("pkg", "sub").mkdir()
    pytester.path.joinpath("pkg", "sub", "test_nested.py").write_text(
        CASE
        + textwrap.dedent(
            """
            class TestNested(MultiProcessTestCase):
                def test_nested(self):
                    assert self.rank in (0, 1)
            """
        )
    )
    result = pytester.runpytest(
        "--mp-start-method", "spawn", "--import-mode", "importlib", "-p", "no:cacheprovider"
    )
    result.assert_outcomes(passed=1)


def test_file_run_directly_with_unittest_main(pytester: pytest.Pytester) -> None:
    path = pytester.makepyfile(
        direct=CASE
        + textwrap.dedent(
            """
            import unittest

            class TestDirect(MultiProcessTestCase):
                def test_direct(self):
                    dist.init_process_group(
                        "tcp", store=FileStore(self.file_name, 2), rank=self.rank, world_size=2
                    )
                    a = np.ones(2)
                    dist.all_reduce(a)
                    assert a[0] == 2

                def test_fails(self):
                    raise KeyError(f"rank {self.rank}")

            if __name__ == "__main__":
                unittest.main()
            """
        )
    )
    proc = subprocess.run(
        [sys.executable, str(path)], capture_output=True, text=True, timeout=120, cwd=pytester.path
    )
    assert proc.returncode == 1, proc.stderr
    assert "Ran 2 tests" in proc.stderr
    # A RuntimeError, as torch's harness raises: unittest counts it as an error.
    assert "FAILED (errors=1)" in proc.stderr
    # Both ranks fail; the one that failed first heads the text.
    assert re.search(
        r"^mpdist\.testing\._report\.MultiProcessFailure: rank (\d): KeyError: 'rank \1'$",
        proc.stderr,
        re.MULTILINE,
    ), proc.stderr
    assert "=== rank 0: failed: KeyError: 'rank 0'" in proc.stderr
    assert f"MPDIST_WORLD_SIZE=2 python {path} TestDirect.test_fails" in proc.stderr


def test_xdist_runs_without_port_or_file_clashes(pytester: pytest.Pytester) -> None:
    pytest.importorskip("xdist")
    body = CASE + textwrap.dedent(
        """
        class TestMany(MultiProcessTestCase):
        """
    )
    for i in range(2):
        body += textwrap.indent(
            textwrap.dedent(
                f"""
                def test_{i}(self):
                    dist.init_process_group(
                        "tcp", store=FileStore(self.file_name, 2), rank=self.rank, world_size=2
                    )
                    a = np.full(2, {i}.0)
                    dist.all_reduce(a)
                    assert a[0] == {2 * i}
                """
            ),
            "    ",
        )
    body += textwrap.dedent(
        """
        @pytest.mark.mpdist
        @pytest.mark.parametrize("i", range(2))
        def test_fn(rank, i):
            a = np.full(2, float(i))
            dist.all_reduce(a)
            assert a[0] == 2 * i
        """
    )
    pytester.makepyfile(test_xdist=body)
    # Without hypothesis and benchmark: the three pytest processes would import them for nothing.
    quiet = ("-p", "no:cacheprovider", "-p", "no:hypothesispytest", "-p", "no:benchmark")
    result = pytester.runpytest_subprocess("-n", "2", *quiet, timeout=180)
    result.assert_outcomes(passed=4)
