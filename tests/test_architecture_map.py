"""ARCHITECTURE.md's layer map stays true: every top-level module is on it, and imports made
when a module loads point down the list, between packages and between the files of one.

Imports inside functions are the deliberate exceptions (``mpdist``'s lazy public names,
``mpdist.parallel``'s re-export of fsdp), so only module-level imports are read.
"""

from __future__ import annotations

import ast
import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "mpdist"


def _layer_lines() -> list[str]:
    text = (ROOT / "ARCHITECTURE.md").read_text()
    return text.split("## The layers", 1)[1].split("```", 2)[1].splitlines()


def _units_and_files() -> tuple[list[str], dict[str, dict[str, int]]]:
    """The top-level units in map order, and per package its files' line numbers (files on
    one line share it). Lines naming files in prose (lists with notes in parentheses) are
    not read; their files are simply not checked."""
    units: list[str] = []
    files: dict[str, dict[str, int]] = {}
    package: str | None = None
    for number, line in enumerate(_layer_lines()):
        if re.match(r"^  \S", line):
            names = re.split(r"\s{2,}", line.strip())[0].split(", ")
            units += [n.rstrip("/").removesuffix(".py") for n in names]
            package = names[0].rstrip("/") if names[0].endswith("/") else None
        elif package and (m := re.match(r"^    (\w+\.py(?:, \w+\.py)*)(?:\s{2,}|$)", line)):
            for name in m.group(1).split(", "):
                files.setdefault(package, {})[name.removesuffix(".py")] = number
    return units, files


def _imports(path: Path) -> list[tuple[str, ...]]:
    """The mpdist modules ``path`` imports when it loads, as name parts after ``mpdist``
    (``from mpdist import x`` and ``from . import x`` name module ``x``)."""
    package = path.relative_to(ROOT).with_suffix("").parts[:-1]  # what ``from .`` names
    found: list[tuple[str, ...]] = []
    for node in ast.parse(path.read_text()).body:
        if isinstance(node, ast.Import):
            found += [
                tuple(a.name.split(".")[1:]) for a in node.names if a.name.startswith("mpdist.")
            ]
        elif isinstance(node, ast.ImportFrom):
            base = package[: len(package) - node.level + 1] if node.level else ()
            module = (*base, *node.module.split(".")) if node.module else base
            if not module or module[0] != "mpdist":
                continue
            if node.module:
                found.append(module[1:])
            if len(module) <= 2:  # from mpdist import x / from mpdist.pkg import x: maybe modules
                found += [(*module[1:], a.name) for a in node.names]
    return [f for f in found if f]


def _modules() -> list[Path]:
    return sorted(p for p in PACKAGE.rglob("*.py") if "__pycache__" not in p.parts)


def test_every_top_level_module_and_package_is_on_the_map() -> None:
    units, _ = _units_and_files()
    here = {p.stem for p in PACKAGE.glob("*.py")} | {
        p.name for p in PACKAGE.iterdir() if (p / "__init__.py").exists()
    }
    assert sorted(here - set(units)) == []


def test_packages_import_only_what_the_map_lists_before_them() -> None:
    units, _ = _units_and_files()
    order = {u: i for i, u in enumerate(units)}
    upward = []
    for path in _modules():
        me = path.relative_to(PACKAGE).parts[0].removesuffix(".py")
        for target in _imports(path):
            if target[0] in order and me in order and order[target[0]] > order[me]:
                upward.append(f"{path.relative_to(ROOT)} imports mpdist.{'.'.join(target)}")
    assert upward == []


@pytest.mark.parametrize("package", sorted(_units_and_files()[1]))
def test_files_of_a_package_import_only_files_listed_before_them(package: str) -> None:
    listed = _units_and_files()[1][package]
    upward = []
    for path in sorted((PACKAGE / package).glob("*.py")):
        me = path.stem
        if me == "__init__" or me not in listed:
            continue  # a package's __init__ re-exports its files
        for target in _imports(path):
            if len(target) < 2 or target[0] != package:
                continue
            other = target[1]
            if other in listed and other != "__init__" and listed[other] > listed[me]:
                upward.append(f"{package}/{me}.py imports {package}/{other}.py")
    assert upward == []
