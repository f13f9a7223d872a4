"""JUnit XML of multi-rank tests: every rank's output in <system-out>/<system-err>, and properties."""

from __future__ import annotations

import textwrap
import xml.etree.ElementTree as ET

import pytest

TESTS = textwrap.dedent(
    """
    import sys

    import pytest
    import mpdist as dist
    from mpdist.testing import MultiProcessTestCase

    @pytest.mark.mpdist
    def test_fails_in_rank_one(rank):
        print(f"out of rank {rank}")
        print(f"err of rank {rank}", file=sys.stderr)
        # both ranks have printed before rank 1 fails: a failure stops the other ranks, and
        # a rank stopped before it printed (a slow start on a loaded machine) has no output
        dist.barrier()
        assert rank == 0

    class TestCase(MultiProcessTestCase):
        def test_passes(self):
            print(f"case output of rank {self.rank}")
    """
)


def _cases(path) -> dict[str, ET.Element]:
    root = ET.parse(path).getroot()
    return {case.get("name", ""): case for case in root.iter("testcase")}


def _properties(case: ET.Element) -> dict[str, str]:
    return {p.get("name", ""): p.get("value", "") for p in case.iter("property")}


def test_rank_output_and_properties_reach_the_junit_xml(pytester: pytest.Pytester) -> None:
    pytester.makepyfile(test_junit=TESTS)
    result = pytester.runpytest(
        "--junitxml=out.xml", "-o", "junit_logging=out-err", "-p", "no:cacheprovider"
    )
    result.assert_outcomes(passed=1, failed=1)
    cases = _cases(pytester.path / "out.xml")

    failing = cases["test_fails_in_rank_one"]
    out = "".join(e.text or "" for e in failing.iter("system-out"))
    err = "".join(e.text or "" for e in failing.iter("system-err"))
    assert "--- rank 0 ---\nout of rank 0\n--- rank 1 ---\nout of rank 1\n" in out
    assert "--- rank 0 ---\nerr of rank 0\n--- rank 1 ---\nerr of rank 1\n" in err
    assert _properties(failing) == {
        "mpdist_world_size": "2",
        "mpdist_failed_ranks": "1",
        "mpdist_first_failing_rank": "1",
        "mpdist_timed_out": "no",
    }
    failure = failing.find("failure")
    assert failure is not None
    assert failure.get("message", "").startswith("rank 1: AssertionError: assert 1 == 0")

    passing = cases["test_passes"]
    out = "".join(e.text or "" for e in passing.iter("system-out"))
    assert "--- rank 0 ---\ncase output of rank 0\n--- rank 1 ---\ncase output of rank 1\n" in out
    assert _properties(passing) == {
        "mpdist_world_size": "2",
        "mpdist_failed_ranks": "",
        "mpdist_first_failing_rank": "",
        "mpdist_timed_out": "no",
    }


def test_without_junit_the_terminal_shows_each_rank_once(pytester: pytest.Pytester) -> None:
    pytester.makepyfile(test_junit=TESTS)
    result = pytester.runpytest("-p", "no:cacheprovider", "-k", "fails")
    result.assert_outcomes(failed=1)
    text = result.stdout.str()
    assert text.count("out of rank 1") == 1  # the call report's section, not the teardown's
    assert "--- rank 1 ---" not in text
