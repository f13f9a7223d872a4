"""pytest-timeout's deadline on a multi-rank test becomes the harness's: dumps, kill, JUnit, precedence."""

from __future__ import annotations

import os
import textwrap
import xml.etree.ElementTree as ET

import pytest
from _harness_helpers import alive

pytest.importorskip("pytest_timeout")

HANGING = textwrap.dedent(
    """
    import os
    import time

    import pytest
    from mpdist.testing import MultiProcessTestCase


    def _note_pid(rank):
        with open(os.path.join(os.environ["PID_DIR"], f"{os.getpid()}"), "w") as f:
            f.write(str(rank))


    @pytest.mark.timeout(2)
    @pytest.mark.mpdist(timeout=100)
    def test_marker_wins(rank):
        _note_pid(rank)
        time.sleep(100)


    class TestCase(MultiProcessTestCase):
        timeout = 100  # pytest-timeout's --timeout still wins

        def test_option_wins(self):
            _note_pid(self.rank)
            time.sleep(100)
    """
)


@pytest.mark.parametrize("method", ["signal", "thread"])
def test_a_hanging_test_is_dumped_and_killed_with_junit_intact(
    pytester: pytest.Pytester, pid_dir: str, method: str
) -> None:
    pytester.makepyfile(test_hang=HANGING)
    result = pytester.runpytest_subprocess(
        "--timeout", "3", "--timeout-method", method, "--mp-timeout", "100",
        "--junitxml=out.xml", "-p", "no:cacheprovider", timeout=120,
    )  # fmt: skip
    result.assert_outcomes(failed=2)
    text = result.stdout.str()
    result.stdout.fnmatch_lines(["*test_marker_wins timed out after 2 s (world size 2)*"])
    result.stdout.fnmatch_lines(["*test_option_wins timed out after 3 s (world size 2)*"])
    # The ranks' stacks, not the parent's poll loop, and pytest-timeout's own dump never ran.
    assert text.count("--- rank 1 stack dump ---") == 2
    assert "in test_marker_wins" in text and "in test_option_wins" in text
    assert "Timeout +++" not in text
    cases = {
        c.get("name"): c for c in ET.parse(pytester.path / "out.xml").getroot().iter("testcase")
    }
    for name in ("test_marker_wins", "test_option_wins"):
        props = {p.get("name"): p.get("value") for p in cases[name].iter("property")}
        assert props["mpdist_timed_out"] == "yes"
    pids = [int(name) for name in os.listdir(pid_dir)]
    assert len(pids) == 4 and not alive(pids)


def test_the_ini_timeout_of_pytest_timeout_wins_over_mpdist_timeout(
    pytester: pytest.Pytester,
) -> None:
    pytester.makeini("[pytest]\ntimeout = 2\nmpdist_timeout = 100\n")
    pytester.makepyfile(
        test_ini=textwrap.dedent(
            """
            import time
            import pytest

            @pytest.mark.mpdist
            def test_sleeps(rank):
                time.sleep(100)
            """
        )
    )
    result = pytester.runpytest_subprocess("-p", "no:cacheprovider", timeout=120)
    result.assert_outcomes(failed=1)
    result.stdout.fnmatch_lines(["*test_sleeps timed out after 2 s*"])


def test_without_a_pytest_timeout_value_mpdist_own_deadline_applies(
    pytester: pytest.Pytester,
) -> None:
    pytester.makepyfile(
        test_own=textwrap.dedent(
            """
            import time
            import pytest

            @pytest.mark.mpdist(timeout=1)
            def test_sleeps(rank):
                time.sleep(100)

            @pytest.mark.mpdist
            def test_quick(rank):
                pass
            """
        )
    )
    result = pytester.runpytest("-p", "no:cacheprovider", "--mp-timeout", "100")
    result.assert_outcomes(failed=1, passed=1)
    result.stdout.fnmatch_lines(["*test_sleeps timed out after 1 s*"])
