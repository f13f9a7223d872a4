"""The private names of pytest, multiprocessing and torch the harness uses: each works
today, and each has its fallback when a version lacks it."""

from __future__ import annotations

import ast
import sys
import types
from typing import Any

import pytest

from mpdist.testing import _mp_internals, _outcomes, _pytest_internals, _torch_internals

# -- pytest --------------------------------------------------------------------------------------


def test_pytest_skip_in_a_rank_is_a_skip() -> None:
    with pytest.raises(pytest.skip.Exception) as info:
        pytest.skip("no GPU here")
    verdict = _outcomes.judge(info.value)
    assert (verdict.status, verdict.message) == ("skipped", "no GPU here")


def test_requested_fixtures_without_pytest_fixture_info() -> None:
    def test_body(tmp_path: Any, rank: int) -> None: ...

    item: Any = types.SimpleNamespace(
        obj=test_body, funcargs={"tmp_path": "/tmp/x", "rank": 0, "autouse_one": 1}
    )
    assert _pytest_internals.requested_fixtures(item) == ["tmp_path", "rank"]
    item._fixtureinfo = types.SimpleNamespace(argnames=("rank",))
    assert _pytest_internals.requested_fixtures(item) == ["rank"]


def _rewritten(source: str) -> str:
    tree = ast.parse(source)
    _pytest_internals.rewrite_asserts(tree, source.encode(), "mod.py")
    return ast.dump(tree)


def test_without_pytest_rewriter_asserts_stay_plain(monkeypatch: pytest.MonkeyPatch) -> None:
    source = "def test_x():\n    assert 1 + 1 == 3\n"
    assert "@py_assert" in _rewritten(source)
    monkeypatch.setitem(sys.modules, "_pytest.assertion.rewrite", None)
    assert _rewritten(source) == ast.dump(ast.parse(source))


def test_explain_comparisons_fills_an_empty_slot_once(monkeypatch: pytest.MonkeyPatch) -> None:
    from _pytest.assertion import util

    monkeypatch.setattr(util, "_reprcompare", None)
    _pytest_internals.explain_comparisons()
    explain = util._reprcompare
    assert explain is not None
    assert "Right contains one more item" in (explain("==", [1], [1, 2]) or "")
    _pytest_internals.explain_comparisons()
    assert util._reprcompare is explain  # never replaces one that is set
    # A pytest without the slot: nothing happens.
    monkeypatch.delattr(util, "_reprcompare")
    _pytest_internals.explain_comparisons()
    assert not hasattr(util, "_reprcompare")


def test_was_rewritten() -> None:
    assert _pytest_internals.was_rewritten(sys.modules[__name__])  # pytest rewrote this module
    assert not _pytest_internals.was_rewritten(types.ModuleType("plain"))


# -- multiprocessing -------------------------------------------------------------------------


def test_a_forkserver_it_cannot_see_is_left_alone(monkeypatch: pytest.MonkeyPatch) -> None:
    import multiprocessing.forkserver

    monkeypatch.setattr(multiprocessing.forkserver, "_forkserver", object())
    assert not _mp_internals.server_visible()
    assert _mp_internals.server_pid() is None
    assert not _mp_internals.stop_server(2**22 + 1)  # never signals anything without _stop


# -- torch ---------------------------------------------------------------------------------------


def test_torch_is_not_looked_at_unless_imported(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in [n for n in sys.modules if n == "torch" or n.startswith("torch.")]:
        monkeypatch.delitem(sys.modules, name)
    assert _torch_internals.skip_message(77) is None
    assert _torch_internals.test_case_class() is None
    assert _torch_internals.timeout_override("test_x") is None
    assert "torch" not in sys.modules


def _fake_torch(monkeypatch: pytest.MonkeyPatch, **modules: types.ModuleType) -> None:
    """Stand-in torch modules (only those named), so nothing of the real torch is imported."""
    for name in [n for n in sys.modules if n == "torch" or n.startswith("torch.")]:
        monkeypatch.delitem(sys.modules, name)
    for name, module in modules.items():
        monkeypatch.setitem(sys.modules, name, module)


def test_torch_fallbacks(monkeypatch: pytest.MonkeyPatch) -> None:
    c10d_impl = types.ModuleType("torch.distributed.distributed_c10d")  # no _world, no getter
    c10d = types.ModuleType("torch.distributed")
    c10d.distributed_c10d = c10d_impl  # type: ignore[attr-defined]
    c10d.group = types.SimpleNamespace(WORLD="the world group")  # type: ignore[attr-defined]
    torch = types.ModuleType("torch")
    torch._C = types.SimpleNamespace(_distributed_c10d=types.SimpleNamespace())  # type: ignore[attr-defined]
    # A package without multi_threaded_pg (a plain module: nothing can be imported from it).
    distributed_tests = types.ModuleType("torch.testing._internal.distributed")
    _fake_torch(
        monkeypatch,
        torch=torch,
        **{
            "torch.distributed": c10d,
            "torch.distributed.distributed_c10d": c10d_impl,
            "torch.testing": types.ModuleType("torch.testing"),
            "torch.testing._internal": types.ModuleType("torch.testing._internal"),
            "torch.testing._internal.distributed": distributed_tests,
        },
    )
    assert _torch_internals.default_group(c10d) == "the world group"
    world = object()
    assert _torch_internals.threaded_world_is(world)  # no _world to tell: the harness's
    c10d_impl._world = object()  # type: ignore[attr-defined]
    assert not _torch_internals.threaded_world_is(world)
    _torch_internals.set_thread_isolation(True)  # a torch without the switch: nothing to do
    with pytest.raises(RuntimeError, match="no threaded process groups"):
        _torch_internals.install_threaded_world()
