"""The harness's failure types, the first line of a failure, and the rank that left early named as the cause."""

from __future__ import annotations

import sys
import time

import numpy as np
import pytest

from mpdist import distributed as dist
from mpdist.testing import MultiProcessFailure, MultiProcessTimeout, spawn_ranks


def test_the_failure_types_are_runtime_errors_not_assertion_errors() -> None:
    assert issubclass(MultiProcessFailure, RuntimeError)
    assert issubclass(MultiProcessTimeout, MultiProcessFailure)
    assert not issubclass(MultiProcessFailure, AssertionError)
    assert not issubclass(MultiProcessTimeout, AssertionError)


def fails_in_rank_one(rank: int, world_size: int) -> None:
    if rank == 1:
        raise ConnectionResetError("the switch ate it")


def test_the_first_line_is_the_first_failure() -> None:
    with pytest.raises(MultiProcessFailure) as info:
        spawn_ranks(fails_in_rank_one, 2, backend=None)
    assert type(info.value) is MultiProcessFailure
    lines = str(info.value).splitlines()
    assert lines[0] == "rank 1: ConnectionResetError: the switch ate it"
    assert "failed in rank 1 (world size 2); failing ranks: [1]" in lines[1]


def sleeps(rank: int, world_size: int) -> None:
    time.sleep(60)


def test_a_timeout_is_a_multi_process_timeout() -> None:
    with pytest.raises(MultiProcessTimeout) as info:
        spawn_ranks(sleeps, 2, backend=None, timeout=1)
    text = str(info.value)
    # No rank failed: the headline comes first, and nothing in the text is an AssertionError.
    assert "timed out after 1 s (world size 2); ranks still running: [0, 1]" in text.splitlines()[0]
    assert "AssertionError" not in text


def leaves_early(rank: int, world_size: int, code: int | None) -> None:
    if rank == 1:
        sys.exit(code)
    dist.all_reduce(np.ones(1))  # rank 1 is gone: this fails with a lost connection


@pytest.mark.parametrize("code", [0, None, 3])
def test_a_rank_that_exits_while_its_peer_runs_is_the_cause(code: int | None) -> None:
    with pytest.raises(MultiProcessFailure) as info:
        spawn_ranks(leaves_early, 2, code)
    text = str(info.value)
    lines = text.splitlines()
    shown = 0 if code is None else code
    assert lines[0].startswith(f"rank 1: SystemExit: sys.exit({shown})"), text
    assert lines[1].endswith(
        "failed in rank 1 (world size 2); failing ranks: [0, 1] ([0] only because rank 1 failed)"
    ), text
    sections = [line for line in lines if line.startswith("=== rank ")]
    assert sections[0].startswith(f"=== rank 1: failed: SystemExit: sys.exit({shown})"), text
    # Rank 0 lost its peer (sys.exit(0)), or was aborted first (a failing exit announces itself).
    assert sections[1].startswith("=== rank 0: failed after "), text
    assert "(rank 1 failed first)" in sections[1], text


def exits_after_its_part(rank: int, world_size: int) -> int:
    dist.barrier()
    if rank == 1:
        sys.exit(0)  # its peer needs nothing more from it
    return rank


def test_an_exit_after_which_no_peer_fails_is_a_pass() -> None:
    assert spawn_ranks(exits_after_its_part, 2) == [0, None]


CASES = """
import sys
import time

import numpy as np
import pytest
from mpdist import distributed as dist
from mpdist.store import FileStore
from mpdist.testing import MultiProcessTestCase


class TestEarly(MultiProcessTestCase):
    def test_exit_zero(self):
        dist.init_process_group(
            "tcp", store=FileStore(self.file_name, 2), rank=self.rank, world_size=2
        )
        if self.rank == 1:
            sys.exit(0)
        dist.all_reduce(np.ones(1))


@pytest.mark.mpdist(timeout=1)
def test_hangs(rank):
    time.sleep(60)


@pytest.mark.mpdist
def test_asserts(rank):
    assert rank == 0
"""


def test_reruns_except_assertion_error_reruns_a_timeout_not_a_rank_assertion(
    pytester: pytest.Pytester,
) -> None:
    pytest.importorskip("pytest_rerunfailures")
    pytester.makepyfile(test_kinds=CASES)
    result = pytester.runpytest(
        "--reruns", "1", "--rerun-except", "AssertionError", "-p", "no:cacheprovider",
        "-k", "hangs or asserts",
    )  # fmt: skip
    # The timeout is rerun once; the failed assert in rank 1 is not rerun at all.
    assert result.parseoutcomes() == {"failed": 2, "rerun": 1, "deselected": 1}
    result.stdout.fnmatch_lines(["test_kinds.py RFF*", "*test_hangs timed out after 1 s*"])


def test_only_rerun_can_target_the_first_line(pytester: pytest.Pytester) -> None:
    pytest.importorskip("pytest_rerunfailures")
    pytester.makepyfile(test_kinds=CASES)
    result = pytester.runpytest(
        "--reruns", "1", "--only-rerun", r"rank 1: AssertionError", "-p", "no:cacheprovider",
        "-k", "asserts",
    )  # fmt: skip
    assert result.parseoutcomes() == {"failed": 1, "rerun": 1, "deselected": 2}


def test_exit_zero_in_a_test_case_names_the_rank_that_left(pytester: pytest.Pytester) -> None:
    pytester.makepyfile(test_kinds=CASES)
    result = pytester.runpytest("-p", "no:cacheprovider", "-k", "exit_zero")
    result.assert_outcomes(failed=1)
    result.stdout.fnmatch_lines(
        [
            "rank 1: SystemExit: sys.exit(0): "
            "rank 1 left the test while ranks [[]0[]] were still running*",
            "*failed in rank 1 (world size 2); failing ranks: [[]0, 1[]] "
            "([[]0[]] only because rank 1 failed)",
        ]
    )
    result.stdout.fnmatch_lines(["=== rank 1: failed: SystemExit: sys.exit(0)*"])
