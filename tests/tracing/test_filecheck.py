"""mpdist.testing.FileCheck: torch's FileCheck semantics and messages, checked against torch where installed."""

from __future__ import annotations

import contextlib
import io
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from mpdist.testing import FileCheck

TEXT = "abc\nbar\nbaz"

# (checks, text, None if they pass else the exact message); the messages are those torch
# 2.13 gives for the same checks and text
CASES: list[tuple[list[tuple[Any, ...]], str, str | None]] = [
    ([("check", "abc"), ("check", "baz")], TEXT, None),
    (  # the whole text is shown as is, without a line break before "From"
        [("check", "baz"), ("check", "abc")],
        TEXT,
        'Expected to find "abc" but did not find it\nSearched string:\nabc\nbar\nbaz'
        "From CHECK: abc\n",
    ),
    (
        [("check", "foo")],
        TEXT,
        'Expected to find "foo" but did not find it\nSearched string:\nabc\n~~~ <--- HERE\n'
        "bar\nbaz\nFrom CHECK: foo\n",
    ),
    (
        [("check", "a"), ("check", "foo")],
        TEXT + "\n",
        'Expected to find "foo" but did not find it\nSearched string:\nabc\n ~~ <--- HERE\n'
        "bar\nbaz\nFrom CHECK: foo\n",
    ),
    (
        [("check_not", "bar")],
        TEXT,
        'Expected to not find "bar" but found it\nabc\nbar\n~~~ <--- HERE\nbaz\n'
        "From CHECK-NOT: bar\n",
    ),
    ([("check", "abc"), ("check_next", "bar"), ("check_next", "baz")], TEXT, None),
    (
        [("check", "bar"), ("check_next", "abc")],
        TEXT,
        'Expected to find "abc" but did not find it\nSearched string:\nabc\nbar\nbaz\n'
        "From CHECK-NEXT: abc\n",
    ),
    ([("check", "a"), ("check_same", "c")], TEXT, None),
    (
        [("check", "b"), ("check_same", "z")],
        TEXT,
        'Expected to not find "\\n" but found it\nabc\nbar\nbaz\nFrom CHECK-SAME: z\n',
    ),
    ([("check_count", "a", 3)], TEXT, None),
    (
        [("check_count", "a", 4)],
        TEXT,
        'Expected to find "a" but did not find it\nSearched string:\nabc\nbar\nbaz\n'
        "From CHECK-COUNT-4: a\n",
    ),
    (
        [("check_count", "a", 2, True)],
        TEXT,
        'Expected to not find "a" but found it\nabc\nbar\nbaz\n ~ <--- HERE\nFrom CHECK-NOT: a\n',
    ),
    ([("check_count", "q", 0, True)], TEXT, None),
    ([("check_dag", "bar"), ("check_dag", "abc"), ("check_next", "baz")], TEXT, None),
    (
        [("check", "a"), ("check_not", 'q"\t\x01')],
        'abc\nbar q"\t\x01',
        'Expected to not find "q\\"\\t\\001" but found it\nabc\nbar q"\t\x01\n    ~~~~ <--- HERE\n'
        'From CHECK-NOT: q"\t\x01\n',
    ),
    (  # consecutive CHECK-NOTs: each is searched for up to the next match
        [("check_not", "c"), ("check_not", "z"), ("check", "r")],
        TEXT,
        'Expected to not find "c" but found it\nabc\n  ~ <--- HERE\nbar\nbaz\nFrom CHECK-NOT: c\n',
    ),
    ([("check", ""), ("check_same", "")], TEXT, None),
]

LINES = "\n".join(f"line number {i}" for i in range(40))


def _apply(fc: Any, checks: list[tuple[Any, ...]]) -> Any:
    for name, *args in checks:
        fc = getattr(fc, name)(*args)
    return fc


def _outcome(
    factory: Any, checks: list[tuple[Any, ...]], text: str, spec: str | None = None
) -> str:
    """'PASS' or the exception's type and message (torch's unrun-instance notice to stdout is dropped)."""
    with contextlib.redirect_stdout(io.StringIO()):
        try:
            fc = _apply(factory(), checks)
            if spec is None:
                fc.run(text)
            else:
                fc.run(spec, text)
        except Exception as exc:  # noqa: BLE001 - the outcome is compared, whatever it is
            return f"{type(exc).__name__}: {exc}"
    return "PASS"


@pytest.mark.parametrize("checks, text, message", CASES)
def test_passes_and_fails_with_torchs_messages(checks: Any, text: str, message: str | None) -> None:
    expected = "PASS" if message is None else f"RuntimeError: {message}"
    assert _outcome(FileCheck, checks, text) == expected


def test_a_failure_far_into_a_long_text_shows_two_lines_of_context() -> None:
    out = _outcome(FileCheck, [("check_not", "line number 20")], LINES)
    assert out == (
        'RuntimeError: Expected to not find "line number 20" but found it\nline number 18\n'
        "line number 19\nline number 20\n~~~~~~~~~~~~~~ <--- HERE\nline number 21\n"
        "line number 22\nFrom CHECK-NOT: line number 20\n"
    )
    # a failed search shows the text from two lines before where it started, to the end
    out = _outcome(FileCheck, [("check", "line number 20"), ("check", "zzz")], LINES)
    shown = "".join(f"line number {i}\n" for i in range(18, 40))
    assert out == (
        f'RuntimeError: Expected to find "zzz" but did not find it\nSearched string:\n{shown}'
        "From CHECK: zzz\n"
    )


def test_check_not_applies_between_its_neighbours() -> None:
    text = "all_gather\nall_reduce\nwait_tensor\n"
    ok = FileCheck().check("all_gather").check_not("all_reduce").check("wait_tensor")
    with pytest.raises(RuntimeError, match='Expected to not find "all_reduce"'):
        ok.run(text)
    FileCheck().check("all_reduce").check_not("all_gather").check("wait_tensor").run(text)
    FileCheck().check("wait_tensor").check_not("all_gather").run(text)  # to the end


def test_checks_written_in_a_checks_text() -> None:
    spec = "# CHECK: abc\n#  CHECK-NEXT: bar\n# CHECK-COUNT-EXACTLY-1: z\n"
    assert _outcome(FileCheck, [], TEXT, spec) == "PASS"
    out = _outcome(FileCheck, [], TEXT, "# CHECK-NOT: bar\n")
    assert out.startswith('RuntimeError: Expected to not find "bar" but found it')
    out = _outcome(FileCheck, [], TEXT, "# CHECK-WHAT: bar\n")
    assert (
        out
        == "RuntimeError: Could not parse check at:\n# CHECK-WHAT: bar\n       ~ <--- HERE\nCheck for bad input."
    )


def test_bad_use_is_refused() -> None:
    with pytest.raises(RuntimeError, match="No checks have been added"):
        FileCheck().run("text")
    with pytest.raises(RuntimeError, match=r"Count == 0 && !exactly doesn't do anything"):
        FileCheck().check_count("a", 0)
    with pytest.raises(TypeError):
        FileCheck().check_count("a", -1)
    with pytest.raises(TypeError):
        FileCheck().check(3)  # type: ignore[arg-type]
    with pytest.raises(TypeError):
        FileCheck().check("a").run(3)


# ---- against torch's FileCheck on the same checks and texts


def _torch_filecheck() -> Any:
    torch = pytest.importorskip("torch")
    return torch.testing.FileCheck


@pytest.mark.parametrize("checks, text, message", CASES)
def test_the_cases_give_what_torch_gives(checks: Any, text: str, message: str | None) -> None:
    torch_fc = _torch_filecheck()
    assert _outcome(FileCheck, checks, text) == _outcome(torch_fc, checks, text)


def test_long_texts_give_what_torch_gives() -> None:
    torch_fc = _torch_filecheck()
    for checks in (
        [("check_not", "line number 20")],
        [("check", "line number 20"), ("check", "zzz")],
        [("check", "number 3"), ("check_next", "line number 5")],
        [("check", "line number 39"), ("check_not", "line")],
        [("check_dag", "number 30"), ("check_dag", "number 2"), ("check_same", "nope")],
    ):
        assert _outcome(FileCheck, checks, LINES) == _outcome(torch_fc, checks, LINES), checks


_CHECK = st.one_of(
    st.tuples(
        st.sampled_from(["check", "check_not", "check_next", "check_same", "check_dag"]),
        st.text("ab \n", max_size=3),
    ),
    st.tuples(
        st.just("check_count"), st.text("ab \n", max_size=3), st.integers(1, 3), st.booleans()
    ),
    st.tuples(st.just("check_count"), st.text("ab \n", max_size=3), st.just(0), st.just(True)),
)


@settings(max_examples=400, deadline=None)
@given(text=st.text("aab  \n\n", max_size=80), checks=st.lists(_CHECK, max_size=5))
def test_random_checks_give_what_torch_gives(text: str, checks: list[tuple[Any, ...]]) -> None:
    torch_fc = _torch_filecheck()
    assert _outcome(FileCheck, checks, text) == _outcome(torch_fc, checks, text)


_LINE = st.tuples(
    st.sampled_from(["#", "# ", "#\t", "#       ", "x #  "]),
    st.sampled_from(
        ["CHECK: ", "CHECK-NEXT: ", "CHECK-SAME: ", "CHECK-NOT: ", "CHECK-DAG: "]
        + ["CHECK-COUNT-2: ", "CHECK-COUNT-EXACTLY-1: ", "CHECK-ODD: "]
    ),
    st.text("ab ", min_size=1, max_size=3),
)


@settings(max_examples=200, deadline=None)
@given(text=st.text("ab \n", max_size=40), lines=st.lists(_LINE, min_size=1, max_size=4))
def test_random_checks_texts_give_what_torch_gives(
    text: str, lines: list[tuple[str, str, str]]
) -> None:
    torch_fc = _torch_filecheck()
    spec = "\n".join("".join(parts) for parts in lines)
    assert _outcome(FileCheck, [], text, spec) == _outcome(torch_fc, [], text, spec)
