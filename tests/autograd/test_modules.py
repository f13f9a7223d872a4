"""The autograd package's module layout: what ``mpdist.autograd`` names and where the pieces live."""

from __future__ import annotations

import ast
import importlib
import inspect
import types

import numpy as np

import mpdist.autograd
from mpdist.autograd import Tensor, graph


def test_package_tensor_is_the_factory_function() -> None:
    assert isinstance(mpdist.autograd.tensor, types.FunctionType)
    t = mpdist.autograd.tensor([1.0, 2.0], requires_grad=True)
    assert isinstance(t, Tensor) and t.requires_grad
    np.testing.assert_array_equal(t.data, [1.0, 2.0])


def test_tensor_class_module_is_importable_by_its_name() -> None:
    assert Tensor.__module__ == "mpdist.autograd._tensor"
    import mpdist.autograd._tensor as m

    assert isinstance(m, types.ModuleType) and m.Tensor is Tensor
    assert importlib.import_module(Tensor.__module__).Tensor is Tensor


def test_graph_imports_no_tensor_module() -> None:
    tree = ast.parse(inspect.getsource(graph))
    imported = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and node.module:
            imported.add(node.module)
        elif isinstance(node, ast.Import):
            imported.update(alias.name for alias in node.names)
    assert imported.isdisjoint({"mpdist.autograd._tensor", "mpdist.autograd._tensor_base"})
    assert all(not m.startswith("mpdist.autograd._") for m in imported)
