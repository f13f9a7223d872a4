"""The parent compiles a test module with pytest's assertion rewriting once per version of
the file and sends the code with each task; ranks run that code instead of parsing,
rewriting and compiling the file again."""

from __future__ import annotations

import marshal
import os
import sys

import pytest

from mpdist.testing import _worker
from mpdist.testing._worker import TaskSpec, rewritten_code


def spec_for(path: str, rewrite: bool = True) -> TaskSpec:
    return TaskSpec(
        kind="function",
        module="mod_under_test",
        path=path,
        qualname="test_x",
        method="test_x",
        world_size=2,
        file_name="store",
        workdir="wd",
        test_id="mod_under_test.py::test_x",
        rewrite=rewrite,
    )


def test_compiled_once_per_version_of_the_file(tmp_path) -> None:
    path = tmp_path / "mod_under_test.py"
    path.write_text("def test_x():\n    assert 1 + 1 == 3\n")
    first = spec_for(str(path))
    assert first.code is rewritten_code(str(path))  # cached: the same bytes object
    code = marshal.loads(first.code)
    assert "@py_builtins" in code.co_names or "@py_assert" in str(code.co_consts)
    path.write_text("def test_x():\n    assert 2 + 2 == 5\n")
    os.utime(path, ns=(1, 1))  # a new version, whatever the clock's resolution
    assert spec_for(str(path)).code != first.code
    assert spec_for(str(path), rewrite=False).code is None


def test_a_rank_runs_the_parents_code_not_the_file(tmp_path, monkeypatch) -> None:
    path = tmp_path / "mod_under_test.py"
    path.write_text("VALUE = 'from the file'\n")
    sent = marshal.dumps(compile("VALUE = 'from the parent'\n", str(path), "exec"))
    monkeypatch.setattr(_worker, "_rewritten", {})
    monkeypatch.delitem(sys.modules, "mod_under_test", raising=False)
    try:
        module = _worker._load_module("mod_under_test", str(path), True, sent)
        assert module.VALUE == "from the parent"
    finally:
        sys.modules.pop("mod_under_test", None)


def test_a_file_that_does_not_compile_is_left_to_the_rank(tmp_path) -> None:
    path = tmp_path / "mod_under_test.py"
    path.write_text("def broken(:\n")
    assert spec_for(str(path)).code is None
    with pytest.raises(SyntaxError):
        rewritten_code(str(path))
