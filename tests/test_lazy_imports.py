"""mpdist and mpdist.testing import their names on first use: the plugin costs a project that
never uses mpdist nothing beyond its options, and every public name still resolves."""

from __future__ import annotations

import ast
import importlib
import subprocess
import sys
from pathlib import Path

import pytest

import mpdist
import mpdist.testing

HEAVY = ("numpy", "mpdist.distributed", "mpdist.process_group", "mpdist.testing._worker")


def _fresh(code: str) -> str:
    """Run code in a fresh interpreter; its stdout."""
    done = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=120, check=False
    )
    assert done.returncode == 0, done.stderr
    return done.stdout


def _loaded_after(statement: str) -> set[str]:
    out = _fresh(f"import sys\n{statement}\nprint(' '.join(sorted(sys.modules)))")
    return set(out.split())


@pytest.mark.parametrize(
    "statement", ["import mpdist", "import mpdist.testing", "import mpdist.testing.plugin"]
)
def test_importing_the_package_or_the_plugin_imports_no_stack(statement: str) -> None:
    loaded = _loaded_after(statement)
    assert not loaded & set(HEAVY), sorted(loaded & set(HEAVY))


def test_first_use_imports_what_the_name_needs() -> None:
    out = _fresh(
        "import sys\n"
        "import mpdist as dist\n"
        "f = dist.all_reduce\n"
        "from mpdist.distributed import all_reduce\n"
        "print(f is all_reduce, 'mpdist.distributed' in sys.modules)\n"
        "from mpdist.testing import MultiProcessFailure\n"
        "print('mpdist.testing.multiprocess' in sys.modules, MultiProcessFailure.__name__)\n"
    )
    assert out.split() == ["True", "True", "False", "MultiProcessFailure"]


def _type_checking_names(module: object) -> tuple[set[str], set[str]]:
    """The names a module's ``if TYPE_CHECKING:`` block imports, and the modules it star-imports."""
    tree = ast.parse(Path(module.__file__).read_text())  # type: ignore[attr-defined]
    names: set[str] = set()
    stars: set[str] = set()
    for node in tree.body:
        if isinstance(node, ast.If) and ast.unparse(node.test) == "TYPE_CHECKING":
            for stmt in node.body:
                assert isinstance(stmt, ast.ImportFrom)
                for alias in stmt.names:
                    if alias.name == "*":
                        stars.add(str(stmt.module))
                    else:
                        names.add(alias.asname or alias.name)
    return names, stars


@pytest.mark.parametrize("package", [mpdist, mpdist.testing], ids=["mpdist", "mpdist.testing"])
def test_type_checkers_see_the_names_the_package_exports(package: object) -> None:
    names, stars = _type_checking_names(package)
    assert names == set(package._EXPORTS)  # type: ignore[attr-defined]
    assert stars == set(getattr(package, "_STAR_MODULES", ()))


def test_every_public_name_of_mpdist_is_its_module_object() -> None:
    namespace: dict[str, object] = {}
    exec("from mpdist import *", namespace)
    for name in mpdist.__all__:
        assert name in namespace
        assert getattr(mpdist, name) is namespace[name]
    for star in mpdist._STAR_MODULES:
        source = importlib.import_module(star)
        for name in source.__all__:
            assert getattr(mpdist, name) is getattr(source, name), name
    for name, (module, attribute) in mpdist._EXPORTS.items():
        source = importlib.import_module(module)
        expected = source if attribute is None else getattr(source, attribute)
        assert getattr(mpdist, name) is expected, name
    assert mpdist._Work is mpdist.Work
    assert mpdist.distributed_c10d is mpdist.distributed
    assert set(mpdist.__all__) <= set(dir(mpdist))


def test_every_name_of_mpdist_testing_resolves() -> None:
    for name, module in mpdist.testing._EXPORTS.items():
        assert getattr(mpdist.testing, name) is getattr(importlib.import_module(module), name)
    assert set(mpdist.testing._EXPORTS) <= set(dir(mpdist.testing))


def test_unknown_names_are_attribute_errors() -> None:
    with pytest.raises(AttributeError, match="module 'mpdist' has no attribute 'no_such_name'"):
        _ = mpdist.no_such_name  # type: ignore[attr-defined]
    with pytest.raises(AttributeError, match="'mpdist.testing' has no attribute 'no_such'"):
        _ = mpdist.testing.no_such  # type: ignore[attr-defined]
    assert not hasattr(mpdist, "__wrapped__")


def test_probing_a_dunder_imports_nothing() -> None:
    out = _fresh(
        "import sys, mpdist, mpdist.testing\n"
        "print(hasattr(mpdist, '__wrapped__'), hasattr(mpdist.testing, '__wrapped__'))\n"
        "print('mpdist.distributed' in sys.modules, 'numpy' in sys.modules)\n"
    )
    assert out.split() == ["False", "False", "False", "False"]


def test_a_submodule_imported_first_does_not_pull_in_the_module_api() -> None:
    # store.tcp does `from mpdist import _auth, aborts`; were that resolved through the module
    # API, importing the store first would import distributed midway through store.tcp.
    out = _fresh(
        "import sys\n"
        "from mpdist.store.rendezvous import rendezvous\n"
        "from mpdist import aborts\n"
        "print(aborts.__name__, 'mpdist.distributed' in sys.modules)\n"
        "import mpdist\n"
        "print(mpdist.init_process_group.__module__)\n"
    )
    assert out.split() == ["mpdist.aborts", "False", "mpdist.distributed.setup"]


def test_a_harness_name_reads_the_module_sys_modules_holds_now() -> None:
    # pytester's in-process runs drop the modules first imported inside them; a harness
    # class read afterwards must come from the module imported again, the one the plugin
    # recognises. (mpdist's own names are cached instead: see the next test.)
    out = _fresh(
        "import sys, mpdist, mpdist.testing\n"
        "old_case = mpdist.testing.MultiProcessTestCase\n"
        "del sys.modules['mpdist.testing.multiprocess']\n"
        "import mpdist.testing.multiprocess\n"
        "case = mpdist.testing.MultiProcessTestCase\n"
        "print(case is sys.modules['mpdist.testing.multiprocess'].MultiProcessTestCase)\n"
        "print(case is not old_case)\n"
    )
    assert out.split() == ["True", "True"]


def test_a_name_of_the_package_is_a_plain_attribute_once_read() -> None:
    # dist.all_reduce is on the latency path: after the first read no __getattr__ runs
    out = _fresh(
        "import mpdist\n"
        "print('all_reduce' in vars(mpdist))\n"
        "f = mpdist.all_reduce\n"
        "print(vars(mpdist)['all_reduce'] is f)\n"
        "from mpdist.distributed import collectives\n"
        "print(f is collectives.all_reduce)\n"
    )
    assert out.split() == ["False", "True", "True"]
