"""The plugin in a session: a project that never uses mpdist imports none of it beyond the
plugin's options; a test module that imports one harness class alone is still collected."""

from __future__ import annotations

import textwrap

import pytest

PLAIN = textwrap.dedent(
    """
    import sys

    def test_plain():
        assert 1 + 1 == 2

    def test_zz_nothing_of_mpdist_loaded():
        heavy = ("mpdist.distributed", "mpdist.process_group", "mpdist.store",
                 "mpdist.testing._worker", "mpdist.testing._coordinator",
                 "mpdist.testing.multiprocess", "mpdist.testing.multithreaded")
        assert "mpdist.testing.plugin" in sys.modules
        assert [m for m in heavy if m in sys.modules] == []
    """
)


def test_a_project_without_mpdist_tests_imports_only_the_plugin(pytester: pytest.Pytester) -> None:
    pytester.makepyfile(test_plain=PLAIN)
    # A fresh interpreter: this session has imported everything already.
    result = pytester.runpytest_subprocess("-p", "no:cacheprovider")
    result.assert_outcomes(passed=2)
    result.stdout.fnmatch_lines(["mpdist *: ranks=2 (from $MPDIST_WORLD_SIZE)*"])


@pytest.mark.parametrize(
    ("import_line", "base"),
    [
        ("from mpdist.testing import MultiProcessTestCase", "MultiProcessTestCase"),
        ("from mpdist.testing import MultiThreadedTestCase", "MultiThreadedTestCase"),
        ("from mpdist.testing.multiprocess import MultiProcessTestCase", "MultiProcessTestCase"),
    ],
)
def test_a_module_importing_one_harness_class_is_collected_per_world_size(
    pytester: pytest.Pytester, import_line: str, base: str
) -> None:
    pytester.makepyfile(
        test_one=textwrap.dedent(
            f"""
            import sys
            import pytest
            {import_line}

            @pytest.mark.world_size(1, 2)
            class TestSizes({base}):
                def test_rank(self):
                    assert 0 <= self.rank < self.world_size
                    # each world size ran in its own ranks
                    print("ran", self.world_size, self.rank)
            """
        )
    )
    result = pytester.runpytest_subprocess("-p", "no:cacheprovider", "-v")
    result.assert_outcomes(passed=2)
    result.stdout.fnmatch_lines(["*test_rank?ws1? PASSED*", "*test_rank?ws2? PASSED*"])
