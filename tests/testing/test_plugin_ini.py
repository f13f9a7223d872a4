"""The plugin's ini keys and their precedence, the report header, capacity limits, reuse switched off."""

from __future__ import annotations

import os
import textwrap

import pytest
from _harness_helpers import check_limit_from_env_and_ini

from mpdist.testing import _config

SIZES = textwrap.dedent(
    """
    import os
    import pytest
    from mpdist.testing import MultiProcessTestCase

    EXPECTED = int(os.environ["EXPECTED"])

    @pytest.mark.mpdist
    def test_default(world_size):
        assert world_size == EXPECTED

    @pytest.mark.mpdist(world_size=1)
    def test_marker_wins(world_size):
        assert world_size == 1

    class TestCase(MultiProcessTestCase):
        def test_size(self):
            assert self.world_size == EXPECTED
    """
)


def test_ini_ranks_sits_below_the_option_and_the_environment(
    pytester: pytest.Pytester, monkeypatch: pytest.MonkeyPatch
) -> None:
    pytester.makeini("[pytest]\nmpdist_ranks = 3\n")
    pytester.makepyfile(test_sizes=SIZES)
    for option, env, expected in [([], None, 3), ([], "1", 1), (["--ranks", "2"], "1", 2)]:
        if env is None:
            monkeypatch.delenv("MPDIST_WORLD_SIZE", raising=False)
        else:
            monkeypatch.setenv("MPDIST_WORLD_SIZE", env)
        monkeypatch.setenv("EXPECTED", str(expected))
        result = pytester.runpytest(*option, "-p", "no:cacheprovider")
        result.assert_outcomes(passed=3)


def test_the_header_says_what_the_run_uses(
    pytester: pytest.Pytester, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("MPDIST_WORLD_SIZE")
    monkeypatch.delenv("MPDIST_TIMEOUT", raising=False)
    monkeypatch.delenv("MPDIST_START_METHOD", raising=False)
    pytester.makeini("[pytest]\nmpdist_timeout = 45\nmpdist_start_method = spawn\n")
    cpus = _config.usable_cpus()
    result = pytester.runpytest("--ranks", "3", "-p", "no:cacheprovider")
    result.stdout.fnmatch_lines(
        [
            f"mpdist *: ranks=3 (from --ranks), timeout=45 s (from ini mpdist_timeout), "
            f"start=spawn, cpus={cpus}"
        ]
    )
    result = pytester.runpytest("--mp-timeout", "7", "--max-ranks", "2", "-p", "no:cacheprovider")
    result.stdout.fnmatch_lines(
        [
            "mpdist *: ranks=4 for test classes, 2 for functions, timeout=7 s (from --mp-timeout), "
            f"start=spawn, max ranks=2 (from --max-ranks), cpus={cpus}"
        ]
    )


def test_a_bad_ini_value_is_a_usage_error(pytester: pytest.Pytester) -> None:
    pytester.makeini("[pytest]\nmpdist_ranks = two\n")
    result = pytester.runpytest("-p", "no:cacheprovider")
    result.stderr.fnmatch_lines(["*ini mpdist_ranks must be an integer, got 'two'*"])
    assert result.ret == pytest.ExitCode.USAGE_ERROR


BIG = textwrap.dedent(
    """
    import pytest
    from mpdist.testing import MultiProcessTestCase, spawn_ranks

    def rank_of(rank, world_size):
        return rank

    @pytest.mark.mpdist(world_size=3)
    def test_three(rank):
        pass

    class TestFour(MultiProcessTestCase):
        reuse_processes = True

        @property
        def world_size(self):
            return 4

        def test_four(self):
            pass

    def test_spawn_three():
        assert spawn_ranks(rank_of, 3, backend=None) == [0, 1, 2]

    @pytest.mark.mpdist
    def test_two(rank):
        pass
    """
)


def test_max_ranks_skips_bigger_worlds_naming_the_limit(
    pytester: pytest.Pytester, monkeypatch: pytest.MonkeyPatch
) -> None:
    pytester.makepyfile(test_big=BIG)
    result = pytester.runpytest("--max-ranks", "2", "-p", "no:cacheprovider", "-rs")
    result.assert_outcomes(passed=1, skipped=3)
    # The function and spawn_ranks' world of 3, the test case's of 4 (before its pool started).
    result.stdout.fnmatch_lines(
        ["SKIPPED [[]2[]] *world size 3 is over the limit of 2 ranks (--max-ranks)"]
    )
    result.stdout.fnmatch_lines(
        ["SKIPPED [[]1[]] *world size 4 is over the limit of 2 ranks (--max-ranks)"]
    )
    check_limit_from_env_and_ini(pytester, monkeypatch)


REUSE = textwrap.dedent(
    """
    import os
    from mpdist.testing import MultiProcessTestCase

    class TestReuse(MultiProcessTestCase):
        reuse_processes = True

        def _note(self):
            with open(os.path.join(os.environ["PID_DIR"], f"{os.getpid()}"), "w") as f:
                f.write(str(self.rank))

        def test_a(self):
            self._note()

        def test_b(self):
            self._note()
    """
)


@pytest.mark.parametrize(("env", "ini", "pids"), [(None, None, 2), ("0", None, 4), (None, "0", 4)])
def test_reuse_can_be_switched_off_for_a_run(
    pytester: pytest.Pytester,
    monkeypatch: pytest.MonkeyPatch,
    pid_dir: str,
    env: str | None,
    ini: str | None,
    pids: int,
) -> None:
    pytester.makepyfile(test_reuse=REUSE)
    if env is not None:
        monkeypatch.setenv("MPDIST_REUSE_PROCESSES", env)
    if ini is not None:
        pytester.makeini(f"[pytest]\nmpdist_reuse_processes = {ini}\n")
    pytester.runpytest("-p", "no:cacheprovider").assert_outcomes(passed=2)
    assert len(os.listdir(pid_dir)) == pids  # 2 ranks x (1 pool, or 1 process set per test)


THREADS = textwrap.dedent(
    """
    import os
    import pytest

    @pytest.mark.mpdist
    def test_threads(rank):
        assert [os.environ.get(n) for n in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS")] == [
            os.environ["EXPECTED_THREADS"], os.environ["EXPECTED_THREADS"]
        ]
    """
)


def test_ranks_get_thread_pool_sizes_unless_the_user_set_them(
    pytester: pytest.Pytester, monkeypatch: pytest.MonkeyPatch
) -> None:
    for name in _config.THREAD_VARS:
        monkeypatch.delenv(name, raising=False)
    pytester.makepyfile(test_threads=THREADS)
    expected = max(1, _config.usable_cpus() // 2)
    monkeypatch.setenv("EXPECTED_THREADS", str(expected))
    pytester.runpytest("-p", "no:cacheprovider").assert_outcomes(passed=1)
    assert "OMP_NUM_THREADS" not in os.environ  # the session put the environment back
    monkeypatch.setenv("OMP_NUM_THREADS", "5")
    monkeypatch.setenv("OPENBLAS_NUM_THREADS", "5")
    monkeypatch.setenv("EXPECTED_THREADS", "5")
    pytester.runpytest("-p", "no:cacheprovider").assert_outcomes(passed=1)


def test_thread_pool_sizes_share_the_cpus() -> None:
    assert _config.blas_threads(2, 1, cpus=8) == 4
    assert _config.blas_threads(2, 2, cpus=8) == 2
    assert _config.blas_threads(4, 3, cpus=8) == 1
    assert 1 <= _config.usable_cpus() <= len(os.sched_getaffinity(0))
