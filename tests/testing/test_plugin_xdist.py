"""pytest-xdist: how many workers -n auto starts, and reuse_processes classes kept on one worker."""

from __future__ import annotations

import textwrap

import pytest

from mpdist.testing import _config
from mpdist.testing.plugin import pytest_xdist_auto_num_workers

pytest.importorskip("xdist")


@pytest.mark.parametrize(
    ("args", "ini", "cpus", "workers"),
    [
        (["--ranks", "2"], None, 8, 4),
        (["--ranks", "3"], None, 8, 2),
        (["--ranks", "4"], None, 2, 1),
        ([], "2", 6, 3),  # ini mpdist_ranks
        ([], None, 8, 2),  # nothing set: the test classes' 4 ranks
    ],
)
def test_auto_workers_share_the_cpus_between_ranks(
    pytester: pytest.Pytester,
    monkeypatch: pytest.MonkeyPatch,
    args: list[str],
    ini: str | None,
    cpus: int,
    workers: int,
) -> None:
    monkeypatch.delenv("MPDIST_WORLD_SIZE")
    monkeypatch.delenv("PYTEST_XDIST_AUTO_NUM_WORKERS", raising=False)
    monkeypatch.setattr(_config, "usable_cpus", lambda: cpus)
    if ini is not None:
        pytester.makeini(f"[pytest]\nmpdist_ranks = {ini}\n")
    config = pytester.parseconfig(*args)
    assert pytest_xdist_auto_num_workers(config) == workers


def test_the_environment_variable_of_xdist_wins(
    pytester: pytest.Pytester, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("PYTEST_XDIST_AUTO_NUM_WORKERS", "7")
    assert pytest_xdist_auto_num_workers(pytester.parseconfig("--ranks", "2")) is None


REUSED = textwrap.dedent(
    """
    import os
    import pytest
    from mpdist.testing import MultiProcessTestCase

    class TestKept(MultiProcessTestCase):
        reuse_processes = True

        def _note(self, name):
            path = os.path.join(os.environ["PID_DIR"], f"{name}-{self.rank}")
            with open(path, "w") as f:
                f.write(f"{os.getpid()} {os.environ.get('PYTEST_XDIST_WORKER')}")

    for i in range(4):
        setattr(TestKept, f"test_{i}", lambda self, i=i: self._note(f"t{i}"))

    @pytest.mark.mpdist
    def test_fn(rank):
        pass
    """
)


def test_a_reused_class_is_an_xdist_group(
    pytester: pytest.Pytester, monkeypatch: pytest.MonkeyPatch
) -> None:
    # What --dist loadgroup reads. (Whether xdist then honours it is xdist's part: with
    # pytest 9.2 and xdist 3.8 it does not, pytest-xdist#1386; --dist loadscope does.)
    pytester.makepyfile(test_kept=REUSED)
    items, _ = pytester.inline_genitems("-p", "no:cacheprovider")
    groups = {}
    for item in items:
        marker = item.get_closest_marker("xdist_group")
        groups[item.name] = None if marker is None else marker.kwargs["name"]
    assert groups == {
        **{f"test_{i}": "mpdist:test_kept.py::TestKept" for i in range(4)},
        "test_fn": None,
    }
    monkeypatch.setenv("MPDIST_REUSE_PROCESSES", "0")  # no reuse, no need to group
    items, _ = pytester.inline_genitems("-p", "no:cacheprovider")
    assert all(item.get_closest_marker("xdist_group") is None for item in items)


def test_auto_through_xdist_itself(
    pytester: pytest.Pytester, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("PYTEST_XDIST_AUTO_NUM_WORKERS", raising=False)
    pytester.makepyfile(test_kept=REUSED)
    quiet = ("-p", "no:cacheprovider", "-p", "no:hypothesispytest")
    workers = _config.usable_cpus()  # one rank per test: a worker per cpu
    result = pytester.runpytest_subprocess(
        "-n", "auto", "--ranks", "1", "-k", "test_fn", *quiet, timeout=180
    )
    result.assert_outcomes(passed=1)
    result.stdout.fnmatch_lines([f"created: {workers}/{workers} worker*"])
