"""pytest's private names the harness needs, each behind a small function with a fallback.

pytest has no public API for these. Each name, why the harness uses it, and what
happens when a pytest version lacks it:

- ``_pytest.unittest.TestCaseFunction`` and ``UnitTestCase``: the item and collector
  pytest makes for a ``unittest.TestCase``. The plugin's items and collector for
  ``MultiProcessTestCase`` / ``MultiThreadedTestCase`` subclass them (one item per
  size of a class's ``world_size`` marker; the item hands its node id and world size
  to the test case). Without them the plugin leaves those classes to pytest's own
  unittest support: they still run, a class's ``world_size`` marker does nothing,
  and a failure's rerun command names the test by its unittest id.
- ``TestCaseFunction._getinstance()`` (pytest >= 8): builds the item's test case.
  Routed to :meth:`make_instance` of the item class below, so the item
  ``test_x[ws2]`` builds ``test_x``. A pytest that never calls it builds the case
  by the item's name: unmarked classes are unaffected.
- ``Node._id`` and ``NodeId.child()`` / ``with_params()`` / ``params`` (pytest >= 9.2,
  which builds a Function's node id from its original name): keep ``[wsN]`` in the
  node ids of a ``world_size``-marked class. Older pytest takes the id from the name,
  ``[wsN]`` included; where neither holds, the sizes of a test share one id.
- ``Function._fixtureinfo.argnames``: the fixtures an ``mpdist``-marked function asks
  for itself (their values are sent to the ranks; ``funcargs`` also holds autouse
  ones). Without it: the function's parameters that have a fixture value.
- ``_pytest.assertion.rewrite.rewrite_asserts``, and the ``@py_builtins`` global it
  puts into every module it rewrote: ranks run a test module with its asserts
  rewritten, as pytest ran it in the parent. Without them ranks run plain asserts
  (a failing one says ``AssertionError`` and nothing more).
- ``_pytest.assertion.util._reprcompare`` (the slot rewritten asserts call to explain
  a comparison), ``assertrepr_compare`` and ``dummy_highlighter``, and
  ``_pytest._io.TerminalWriter`` (for the Config that ``assertrepr_compare`` takes
  before pytest 9.2): ranks have no pytest session to fill the slot, so the harness
  fills it with pytest's own explanation of a failed ``assert a == b``. Without them
  a failing comparison shows its values but no diff.

No longer needed: ``_pytest.outcomes.Skipped``; ``_outcomes`` recognises a rank's
``pytest.skip()`` through its public name, ``pytest.skip.Exception``.

pytest is imported here only when one of these is used: importing ``mpdist.testing``
never imports it.
"""

from __future__ import annotations

import ast
import functools
import inspect
import io
import types
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import pytest

__all__ = [
    "explain_comparisons",
    "requested_fixtures",
    "rewrite_asserts",
    "set_param_id",
    "unittest_nodes",
    "was_rewritten",
]


@functools.cache
def unittest_nodes() -> tuple[Any, Any] | None:
    """pytest's unittest item class (with :meth:`make_instance`) and collector class.

    None when pytest has no such classes: then the harness's classes are left to
    pytest's own unittest collection.
    """
    try:
        from _pytest.unittest import TestCaseFunction, UnitTestCase
    except ImportError:
        return None

    class TestCaseItem(TestCaseFunction):
        """pytest's item for a TestCase method, its test case built by :meth:`make_instance`."""

        def _getinstance(self) -> Any:
            return self.make_instance()

        def make_instance(self) -> Any:
            """The test case this item runs (pytest's: the class built with the item's name)."""
            return super()._getinstance()

    return TestCaseItem, UnitTestCase


def set_param_id(item: pytest.Function, name: str, param_id: str) -> None:
    """Give ``item`` the node id ``<parent>::<name>[<param_id>]`` where pytest would drop it.

    pytest >= 9.2 builds a Function's node id from ``originalname`` and its callspec,
    not from its name: without this every size of a test would share one id ("test_x"
    twice instead of "test_x[ws1]", "test_x[ws4]"). Older pytest took the id from the
    name, ``[param_id]`` included: nothing to do.
    """
    node_id = getattr(item, "_id", None)
    if node_id is None or not hasattr(node_id, "with_params") or node_id.params is not None:
        return
    assert item.parent is not None
    item._id = item.parent.id.child(name).with_params(param_id)


def requested_fixtures(item: pytest.Function) -> list[str]:
    """The names of the fixtures the test function of ``item`` asks for itself."""
    info = getattr(item, "_fixtureinfo", None)
    names = getattr(info, "argnames", None)
    if isinstance(names, tuple):
        return list(names)
    try:
        parameters = inspect.signature(item.obj).parameters
    except (TypeError, ValueError):
        return []
    return [name for name in parameters if name in item.funcargs]


def was_rewritten(module: types.ModuleType) -> bool:
    """Whether pytest rewrote the asserts of ``module`` when it imported it."""
    return "@py_builtins" in vars(module)


def rewrite_asserts(tree: ast.Module, source: bytes, path: str) -> None:
    """Rewrite the asserts of the parsed module ``tree`` in place, as pytest does on import.

    Without pytest's rewriter the tree is left as it is (plain asserts).
    """
    try:
        from _pytest.assertion.rewrite import rewrite_asserts as rewrite
    except ImportError:
        return
    rewrite(tree, source, path, None)


class _QuietConfig:
    """Just enough of a pytest Config for pytest's comparison explanations (before 9.2)."""

    def get_verbosity(self, *args: Any) -> int:
        return 0

    def getoption(self, name: str, default: Any = None) -> Any:
        return default

    def get_terminal_writer(self) -> Any:
        from _pytest._io import TerminalWriter

        return TerminalWriter(file=io.StringIO())


def _comparison_lines(util: types.ModuleType, op: str, left: object, right: object) -> list[str]:
    # pytest's own explanation of a failed comparison, whichever pytest is installed:
    # before 9.2 it takes a Config first, from 9.2 on keyword-only settings.
    compare = util.assertrepr_compare
    params = inspect.signature(compare).parameters
    if "config" in params:
        return list(compare(_QuietConfig(), op, left, right) or [])
    kwargs: dict[str, Any] = {}
    if "verbose" in params:
        kwargs["verbose"] = 0
    if "highlighter" in params:
        kwargs["highlighter"] = getattr(util, "dummy_highlighter", lambda source, lexer="": source)
    if "assertion_text_diff_style" in params:
        kwargs["assertion_text_diff_style"] = "ndiff"
    return list(compare(op, left, right, **kwargs) or [])


def explain_comparisons() -> None:
    """Make rewritten asserts in this process explain a failed comparison as pytest does.

    In the parent pytest explains ``assert a == b`` through a hook; a rank has no
    session, so pytest's own explanation is installed directly (once; never over one
    that is set). Without pytest's slot for it, nothing happens.
    """
    try:
        from _pytest.assertion import util
    except ImportError:
        return
    if not hasattr(util, "_reprcompare") or util._reprcompare is not None:
        return

    def explain(op: str, left: object, right: object) -> str | None:
        try:
            lines = _comparison_lines(util, op, left, right)
        except Exception:
            return None
        if not lines:
            return None
        return "\n~".join(line.replace("\n", "\\n") for line in lines).replace("%", "%%")

    util._reprcompare = explain
