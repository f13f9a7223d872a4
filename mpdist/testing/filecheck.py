"""FileCheck: ordered substring checks over a text (a trace's graph), with torch's semantics and messages.

``FileCheck().check("all_gather").check_next("wait_tensor").run(text)`` passes when the
checks match in order, and raises ``RuntimeError`` otherwise, with the text torch's
``torch.testing.FileCheck`` gives for the same checks and text: the message, the searched
part of the text with its context lines, and the ``~~~ <--- HERE`` underline. Written here
from torch's documented behaviour (LLVM's FileCheck, simplified):

- ``check(s)``: ``s`` occurs at or after the end of the previous match.
- ``check_next(s)``: ``s`` occurs on the line after the previous match's line.
- ``check_same(s)``: ``s`` occurs on the previous match's line, after it.
- ``check_not(s)``: ``s`` does not occur between the previous match and the next check's
  match (the end of the text when no check follows); consecutive ``check_not`` share that span.
- ``check_count(s, n, exactly=False)``: ``n`` non-overlapping occurrences of ``s`` after the
  previous match; ``exactly`` adds a ``check_not(s)``, so no further occurrence follows.
- ``check_dag(s)``: consecutive ``check_dag`` match in any order, each after the previous match.
- ``run(checks, text)`` reads the checks from ``# CHECK: s`` lines of ``checks`` first.

Positions are counted in characters (torch counts UTF-8 bytes: the same for ASCII text).
"""

from __future__ import annotations

import enum
from typing import Any, NamedTuple

__all__ = ["FileCheck"]

# Lines of context the error text shows around the searched part: torch's value
# (SourceRange::CONTEXT), which prints two lines before and after.
_CONTEXT = 3


class _Kind(enum.Enum):
    CHECK = "CHECK"
    NEXT = "CHECK-NEXT"
    SAME = "CHECK-SAME"
    NOT = "CHECK-NOT"
    COUNT = "CHECK-COUNT"
    DAG = "CHECK-DAG"


class _Check(NamedTuple):
    kind: _Kind
    text: str
    times: int = 0

    def __str__(self) -> str:
        label = f"{self.kind.value}-{self.times}" if self.kind is _Kind.COUNT else self.kind.value
        return f"{label}: {self.text}"


class _Span(NamedTuple):
    """A part of the text, ``start`` to ``end`` (as torch's SourceRange: ``end`` may precede ``start``)."""

    start: int
    end: int


def _quoted(s: str) -> str:
    """``s`` in double quotes with C escapes, as torch prints a searched string."""
    named = {"\\": "\\\\", "'": "\\'", '"': '\\"', "\a": "\\a", "\b": "\\b", "\f": "\\f"}
    named.update({"\n": "\\n", "\r": "\\r", "\t": "\\t", "\v": "\\v"})
    out = []
    for ch in s:
        if ch in named:
            out.append(named[ch])
        elif ord(ch) < 0x20 or ord(ch) == 0x7F:
            out.append(f"\\{ord(ch):03o}")
        else:
            out.append(ch)
    return '"' + "".join(out) + '"'


def _find(text: str, sub: str, start: int) -> int:
    """Where ``sub`` first occurs at or after ``start``, or -1; the empty string is found at 0.

    (An empty search string matches at the very beginning of the text, wherever the search
    starts: torch's search does so, and checks after it continue from there.)
    """
    if not sub:
        return 0
    return text.find(sub, start) if start <= len(text) else -1


def _tail(text: str, start: int, count: int) -> str:
    """``count`` characters from ``start``; a negative count (an unsigned underflow in C++) means the rest."""
    return text[start:] if count < 0 else text[start : start + count]


def _excerpt(text: str, span: _Span) -> str:
    """The part of ``text`` in ``span`` with up to two lines of context each side, underlined.

    Follows torch's SourceRange printing exactly, including what it does with a span whose
    end precedes its start (torch reports a failed search that way): then no line is
    underlined, and the text after the start is printed to its end.
    """
    n = len(text)
    start, end = span
    if end - start == n:  # the whole text: printed as is
        return text
    stop = min(end, n)
    if start > n:
        return ""
    first = start  # the first and last lines of the span
    while first > 0 and text[first - 1] != "\n":
        first -= 1
    last = stop
    while last < n and text[last] != "\n":
        last += 1
    before = first  # back over _CONTEXT - 1 more line breaks
    seen = 0
    while before > 0:
        if text[before - 1] == "\n":
            seen += 1
        if seen >= _CONTEXT:
            break
        before -= 1
    after = last  # forward to the _CONTEXT-th line break from the span's end
    seen = 0
    while after < n:
        if text[after] == "\n":
            seen += 1
        if seen >= _CONTEXT:
            break
        after += 1
    out = [text[before:start]]
    line_start = line_end = start
    while line_start < stop:
        while line_end < n and text[line_end] != "\n":
            line_end += 1
        line = text[line_start : line_end + 1]
        out.append(line if line.endswith("\n") else line + "\n")
        row_begin = line_start
        while row_begin > 0 and text[row_begin - 1] != "\n":
            row_begin -= 1
        row_end = line_start
        while row_end < stop and text[row_end] != "\n":
            row_end += 1
        blank = 0
        for i in range(row_begin, row_end):
            if text[i] == " " or i < start:
                blank += 1
            else:
                break
        marked = row_end - row_begin - blank
        if marked > 0:
            # past the end C++ reads the string's terminating NUL, which counts as more text
            more = any(i >= n or text[i] not in "\n " for i in range(line_end, stop + 1))
            out.append(" " * blank + "~" * marked)
            out.append("\n" if more and line_end != stop else " <--- HERE\n")
        line_end += 1
        line_start = line_end
    if line_end <= n:
        rest = _tail(text, line_end, after - line_end)
        out.append(rest if not rest or rest.endswith("\n") else rest + "\n")
    return "".join(out)


def _not_found(text: str, sub: str, span: _Span, check: _Check | None) -> RuntimeError:
    # torch shows the place the search started, over len(sub) characters counted from 0
    msg = f"Expected to find {_quoted(sub)} but did not find it\nSearched string:\n"
    msg += _excerpt(text, _Span(span.start, len(sub)))
    if check is not None:
        msg += f"From {check}\n"
    return RuntimeError(msg)


def _assert_find(text: str, sub: str, span: _Span, check: _Check | None) -> int:
    pos = _find(text, sub, span.start)
    if pos < 0 or pos + len(sub) > span.end:
        raise _not_found(text, sub, span, check)
    return pos


def _assert_not_find(text: str, sub: str, span: _Span, check: _Check) -> None:
    pos = _find(text, sub, span.start)
    if pos >= 0 and pos + len(sub) <= span.end:
        msg = f"Expected to not find {_quoted(sub)} but found it\n"
        msg += _excerpt(text, _Span(pos, pos + len(sub)))
        raise RuntimeError(msg + f"From {check}\n")


def _is_count(n: Any) -> bool:
    return hasattr(n, "__index__") and not isinstance(n, bool) and n.__index__() >= 0


class FileCheck:
    """Checks that strings occur in a text in a given order (torch.testing.FileCheck's API).

    Each ``check*`` method adds a check and returns the FileCheck, so checks chain;
    ``run(text)`` applies them and raises ``RuntimeError`` at the first that fails.
    """

    def __init__(self) -> None:
        # consecutive CHECK-NOTs, and consecutive CHECK-DAGs, form one group
        self._groups: list[list[_Check]] = []

    def _add(self, kind: _Kind, s: Any, count: int = 0) -> FileCheck:
        if not isinstance(s, str):
            raise TypeError(f"FileCheck: the string to check must be a str, got {s!r}")
        check = _Check(kind, s, count)
        last = self._groups[-1] if self._groups else None
        if last is not None and kind in (_Kind.NOT, _Kind.DAG) and last[0].kind is kind:
            last.append(check)
        else:
            self._groups.append([check])
        return self

    def check(self, s: str) -> FileCheck:
        """``s`` occurs after the previous match."""
        return self._add(_Kind.CHECK, s)

    def check_not(self, s: str) -> FileCheck:
        """``s`` does not occur between the previous match and the next one."""
        return self._add(_Kind.NOT, s)

    def check_same(self, s: str) -> FileCheck:
        """``s`` occurs after the previous match, on the same line."""
        return self._add(_Kind.SAME, s)

    def check_next(self, s: str) -> FileCheck:
        """``s`` occurs on the line after the previous match's line."""
        return self._add(_Kind.NEXT, s)

    def check_count(self, s: str, count: int, exactly: bool = False) -> FileCheck:
        """``count`` occurrences of ``s`` follow; with ``exactly``, no more after them."""
        if not _is_count(count):
            raise TypeError(f"check_count(): count must be a non-negative int, got {count!r}")
        count = count.__index__()
        if count == 0 and not exactly:
            raise RuntimeError("Count == 0 && !exactly doesn't do anything")
        if count:
            self._add(_Kind.COUNT, s, count)
        if exactly:
            self._add(_Kind.NOT, s)
        return self

    def check_dag(self, s: str) -> FileCheck:
        """``s`` occurs after the previous match; consecutive check_dags in any order."""
        return self._add(_Kind.DAG, s)

    def run(self, checks_or_text: Any, text: Any = None) -> None:
        """Apply the checks to ``text``; ``run(checks, text)`` first adds the ``# CHECK`` lines of ``checks``."""
        if text is not None:
            if not isinstance(checks_or_text, str):
                raise TypeError(f"FileCheck.run: checks must be a str, got {checks_or_text!r}")
            self._parse(checks_or_text)
        else:
            text = checks_or_text
        if not isinstance(text, str):
            raise TypeError(f"FileCheck.run: the text to check must be a str, got {text!r}")
        if not self._groups:
            raise RuntimeError(
                "No checks have been added to this instance ofFilecheck! Check for bad input."
            )
        self._run(text)

    # ---- checks written in the text: "# CHECK: s", "# CHECK-NEXT: s", "# CHECK-COUNT-2: s", ...
    _SUFFIXES = (
        (_Kind.CHECK, ": "),
        (_Kind.NEXT, "-NEXT: "),
        (_Kind.SAME, "-SAME: "),
        (_Kind.NOT, "-NOT: "),
        (_Kind.DAG, "-DAG: "),
        (_Kind.COUNT, "-COUNT-"),
    )

    def _parse(self, source: str) -> None:
        pos = self._next_check(source, 0)
        while pos >= 0:
            pos = self._parse_one(source, pos)
            pos = self._next_check(source, pos)

    @staticmethod
    def _next_check(source: str, pos: int) -> int:
        """Where the text after the next "#<up to 6 blanks>CHECK" starts, or -1."""
        while True:
            hash_at = source.find("#", pos)
            if hash_at < 0:
                return -1
            i = hash_at + 1
            while i < len(source) and i - hash_at - 1 < 6 and source[i] in " \t":
                i += 1
            if source.startswith("CHECK", i):
                return i + len("CHECK")
            pos = i + 1

    def _parse_one(self, source: str, pos: int) -> int:
        for kind, suffix in self._SUFFIXES:
            if not source.startswith(suffix, pos):
                continue
            begin = pos + len(suffix)
            eol = source.find("\n", begin)
            eol = len(source) if eol < 0 else eol
            count, exactly = 0, False
            if kind is _Kind.COUNT:
                if source.startswith("EXACTLY-", begin):
                    exactly = True
                    begin += len("EXACTLY-")
                colon = _assert_find(source, ":", _Span(begin, eol), None)
                count = int(source[begin:colon])
                begin = colon + 2  # past ": "
            s = source[begin:eol]
            self._add(kind, s, count)
            if exactly:
                self._add(_Kind.NOT, s)
            return eol
        msg = "Could not parse check at:\n" + _excerpt(source, _Span(pos, pos + 1))
        raise RuntimeError(msg + "Check for bad input.")

    # ---- matching
    def _run(self, text: str) -> None:
        prev = _Span(0, 0)
        groups = self._groups
        i = 0
        while i < len(groups):
            group = groups[i]
            if group[0].kind is not _Kind.NOT:
                prev = self._match(group, text, prev)
            elif i + 1 < len(groups):
                following = self._match(groups[i + 1], text, prev)
                self._check_nots(group, text, prev.end, following.start)
                prev = following
                i += 1
            else:
                self._check_nots(group, text, prev.end, len(text) + 1)
            i += 1

    @staticmethod
    def _check_nots(nots: list[_Check], text: str, start: int, end: int) -> None:
        if end < start:
            return
        for check in nots:
            _assert_not_find(text, check.text, _Span(start, end), check)

    @staticmethod
    def _match(group: list[_Check], text: str, prev: _Span) -> _Span:
        everything = len(text)
        check = group[0]
        begin = prev.end
        if check.kind is _Kind.DAG:
            first, last = everything + 1, 0
            for dag in group:
                pos = _assert_find(text, dag.text, _Span(begin, everything), dag)
                first, last = min(first, pos), max(last, pos + len(dag.text))
            return _Span(first, last)
        if check.kind is _Kind.CHECK:
            pos = _assert_find(text, check.text, _Span(begin, everything), check)
            return _Span(pos, pos + len(check.text))
        if check.kind is _Kind.SAME:
            pos = _assert_find(text, check.text, _Span(begin, everything), check)
            _assert_not_find(text, "\n", _Span(begin, pos), check)
            return _Span(pos, pos + len(check.text))
        if check.kind is _Kind.NEXT:
            eol = _assert_find(text, "\n", _Span(begin, everything), check)
            pos = _assert_find(text, check.text, _Span(eol + 1, everything), check)
            _assert_not_find(text, "\n", _Span(eol + 1, pos), check)
            return _Span(pos, pos + len(check.text))
        # COUNT: that many matches, each after the one before
        if check.times == 0:  # only "# CHECK-COUNT-0: s" in a checks text gets here
            raise RuntimeError(f"{check}: a count of 0 checks nothing (torch asserts count != 0)")
        first = -1
        end = begin
        for _ in range(check.times):
            pos = _assert_find(text, check.text, _Span(end, everything), check)
            first = pos if first < 0 else min(first, pos)
            end = pos + len(check.text)
        return _Span(first, end)
