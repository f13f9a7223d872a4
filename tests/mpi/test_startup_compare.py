"""What rank 0 makes of the ranks' start-up reports (``_mpi_startup.compare``), no MPI needed."""

from __future__ import annotations

from mpdist.testing._mpi_startup import Hello, compare


def _hello(rank: int, nodeids: list[str], **kw: object) -> Hello:
    return Hello(rank, "host", 100 + rank, nodeids=nodeids, **kw)  # type: ignore[arg-type]


def test_alike_ranks_have_no_problem() -> None:
    tests = ["t.py::a", "t.py::b"]
    assert compare([_hello(r, tests) for r in range(3)]) == ([], [])


def test_the_same_collection_error_everywhere_is_pytests_to_report() -> None:
    errors = {"bad.py": "SyntaxError"}
    assert compare([_hello(r, ["t.py::a"], errors=dict(errors)) for r in range(2)]) == ([], [])


def test_every_rank_leaving_alike_is_no_problem() -> None:
    assert compare([_hello(r, [], left="usage error") for r in range(2)]) == ([], [])


def test_a_rank_with_its_own_collection_error_is_named_with_its_report() -> None:
    hellos = [_hello(0, ["t.py::a"]), _hello(1, [], errors={"t.py": "E   RuntimeError: no"})]
    problems, details = compare(hellos)
    assert problems == ["rank 1 failed to collect t.py"]  # not also its shorter list
    assert "--- rank 1 (pid 101 on host): error during collection ---" in details
    assert "t.py:\nE   RuntimeError: no" in details


def test_rank_zero_alone_failing_is_named() -> None:
    hellos = [_hello(0, [], errors={"t.py": "boom"}), _hello(1, ["t.py::a"])]
    assert compare(hellos)[0] == ["rank 0 failed to collect t.py"]


def test_a_rank_that_left_is_named_with_the_first_line_of_its_reason() -> None:
    hellos = [_hello(0, ["t.py::a"]), _hello(1, [], left="it called os._exit(0)\n  stack")]
    problems, details = compare(hellos)
    assert problems == ["rank 1 left before the tests started: it called os._exit(0)"]
    assert details[-1] == "it called os._exit(0)\n  stack"


def test_different_lists_name_the_rank_and_the_first_difference() -> None:
    mine = ["t.py::a", "t.py::b", "t.py::c"]
    hellos = [
        _hello(0, mine),
        _hello(1, mine),
        _hello(2, ["t.py::a", "t.py::c", "t.py::b"]),
        _hello(3, mine[:2]),
        _hello(4, [*mine, "t.py::d"]),
    ]
    problems, _ = compare(hellos)
    assert problems == [
        "rank 2 collected 3 tests, rank 0 3: test 2 is t.py::c in rank 2, t.py::b in rank 0",
        "rank 3 collected 2 tests, rank 0 3: rank 0 also has t.py::c",
        "rank 4 collected 4 tests, rank 0 3: rank 4 also has t.py::d",
    ]
