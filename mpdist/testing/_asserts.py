"""A torch-style ``assertEqual`` for the test cases: arrays compare by value, floats with tolerance.

PyTorch's distributed tests call ``self.assertEqual(tensor, expected)``; plain
unittest would ask ``bool(a == b)`` of an array and fail. Here numpy arrays,
mpdist autograd Tensors and torch tensors (when torch is imported) compare
element-wise: same shape, integers and bools exactly, floating and complex
values within dtype-dependent tolerances (torch's defaults). Lists, tuples and
dicts are compared item by item. ``msg`` may be a callable: it gets the generated
message and returns the one to raise.

Where a torch test expects torch's own ``TestCase.assertEqual`` (sparse and
bfloat16 tensors, exact dtypes, ``exact_device``, ``equal_nan``...), it gets it:
when torch is imported, an argument holds a torch tensor or the test class uses
torch (``_world.uses_torch``), and no argument holds an mpdist Tensor, the
comparison is torch's, made by a torch ``TestCase`` kept beside the test. The
other public methods of torch's ``TestCase`` (``assertEqualIgnoreType``,
``assertExpectedInline``...) resolve on the test cases as well. torch is never
imported here unless a test already did.
"""

from __future__ import annotations

import sys
import threading
import unittest
import weakref
from collections.abc import Callable
from typing import Any

import numpy as np

from mpdist.testing import _torch_internals
from mpdist.testing._world import uses_torch

# A message for a failed comparison: appended to the generated one, or a callable that
# gets the generated one and returns the message to raise (as torch's assertEqual takes).
Message = str | Callable[[str], str] | None

# (rtol, atol) by dtype, as torch.testing uses them.
_TOLERANCES = {
    np.dtype(np.float16): (1e-3, 1e-5),
    np.dtype(np.float32): (1.3e-6, 1e-5),
    np.dtype(np.float64): (1e-7, 1e-7),
    np.dtype(np.complex64): (1.3e-6, 1e-5),
    np.dtype(np.complex128): (1e-7, 1e-7),
}


def as_array(value: Any) -> np.ndarray | None:
    """``value`` as an ndarray if it is array-like (ndarray, mpdist or torch tensor), else None."""
    if isinstance(value, np.ndarray):
        return value
    data = getattr(value, "data", None)
    if isinstance(data, np.ndarray) and type(value).__module__.startswith("mpdist"):
        return data
    torch = sys.modules.get("torch")
    if torch is not None and isinstance(value, torch.Tensor):
        return value.detach().cpu().numpy()
    return None


def _tolerance(a: np.ndarray, b: np.ndarray) -> tuple[float, float]:
    found = [_TOLERANCES[d] for d in (a.dtype, b.dtype) if d in _TOLERANCES]
    if not found:
        return 0.0, 0.0
    return max(t[0] for t in found), max(t[1] for t in found)


def assert_equal(
    first: Any,
    second: Any,
    msg: Message = None,
    *,
    rtol: float | None = None,
    atol: float | None = None,
    fallback: Any = None,
) -> None:
    """Compare like torch's ``TestCase.assertEqual``; ``fallback`` handles everything else."""
    __tracebackhide__ = True
    if callable(msg):
        try:
            assert_equal(first, second, None, rtol=rtol, atol=atol, fallback=fallback)
        except AssertionError as exc:
            raise AssertionError(msg(str(exc))) from None
        return
    a, b = as_array(first), as_array(second)
    if a is not None or b is not None:
        a = np.asarray(first if a is None else a)
        b = np.asarray(second if b is None else b)
        if a.shape != b.shape and a.size != 1 and b.size != 1:
            raise AssertionError(
                f"shapes differ: {a.shape} != {b.shape}" + (f" : {msg}" if msg else "")
            )
        if a.dtype.kind not in "fc" and b.dtype.kind not in "fc":
            np.testing.assert_array_equal(a, b, err_msg=msg or "", strict=False)
            return
        default_rtol, default_atol = _tolerance(a, b)
        np.testing.assert_allclose(
            a,
            b,
            rtol=default_rtol if rtol is None else rtol,
            atol=default_atol if atol is None else atol,
            equal_nan=True,
            err_msg=msg or "",
        )
        return
    if isinstance(first, (list, tuple)) and isinstance(second, (list, tuple)):
        if len(first) != len(second):
            raise AssertionError(
                f"lengths differ: {len(first)} != {len(second)}" + (f" : {msg}" if msg else "")
            )
        for x, y in zip(first, second, strict=True):
            assert_equal(x, y, msg, rtol=rtol, atol=atol, fallback=fallback)
        return
    if isinstance(first, dict) and isinstance(second, dict):
        if first.keys() != second.keys():
            raise AssertionError(
                f"keys differ: {sorted(map(str, first))} != {sorted(map(str, second))}"
                + (f" : {msg}" if msg else "")
            )
        for key in first:
            assert_equal(first[key], second[key], msg, rtol=rtol, atol=atol, fallback=fallback)
        return
    if fallback is not None:
        fallback(first, second, msg)
    elif first != second:
        raise AssertionError(f"{first!r} != {second!r}" + (f" : {msg}" if msg else ""))


def _holds_tensors(values: tuple[Any, ...], torch_tensor: type) -> tuple[bool, bool]:
    """Whether ``values`` (looked into through lists, tuples and dicts) hold a torch tensor,
    and whether they hold an mpdist Tensor."""
    found_torch = False
    todo = list(values)
    seen: set[int] = set()
    while todo:
        value = todo.pop()
        if isinstance(value, (list, tuple, dict)):
            # A container that holds itself would loop forever.
            if id(value) not in seen:
                seen.add(id(value))
                todo.extend(value.values() if isinstance(value, dict) else value)
        elif isinstance(value, torch_tensor):
            found_torch = True
        elif type(value).__module__.startswith("mpdist") and as_array(value) is not None:
            return found_torch, True
    return found_torch, False


# uses_torch() by class, with the class's ``torch_world`` it was worked out for: it walks
# the test module's globals (a fraction of a millisecond) and assertEqual runs in loops.
_uses_torch_cache: weakref.WeakKeyDictionary[type, tuple[Any, bool]] = weakref.WeakKeyDictionary()


def _class_uses_torch(cls: type) -> bool:
    explicit = getattr(cls, "torch_world", None)
    cached = _uses_torch_cache.get(cls)
    if cached is None or cached[0] is not explicit:
        cached = _uses_torch_cache[cls] = (explicit, uses_torch(cls))
    return cached[1]


# Serialises making the torch delegate: the rank threads of a MultiThreadedTestCase share
# one test instance and may all compare at once.
_delegate_lock = threading.Lock()
# The attribute of a test instance that caches its torch delegate (not pickled or copied).
_DELEGATE = "_mpdist_torch_delegate"
# What torch's assertEqual reads from its test case: a test sets them on itself.
_TORCH_SETTINGS = ("precision", "rel_tol", "longMessage")


class ArrayAssertions:
    """Mixin for unittest.TestCase: ``assertEqual`` / ``assertNotEqual`` that understand arrays,
    with torch's ``TestCase`` semantics and methods where torch tests expect them."""

    def _mpdist_torch_case(self) -> Any:
        """The torch ``TestCase`` that compares for this test (None without torch's utilities)."""
        torch_case_class = _torch_internals.test_case_class()
        if torch_case_class is None:
            return None
        # object.__getattribute__: never __getattr__, even on a half-built (unpickled) instance.
        try:
            delegate = object.__getattribute__(self, _DELEGATE)
        except AttributeError:
            with _delegate_lock:
                delegate = self.__dict__.get(_DELEGATE)
                if delegate is None:
                    delegate = torch_case_class()
                    self.__dict__[_DELEGATE] = delegate
        for name in _TORCH_SETTINGS:
            try:
                value = object.__getattribute__(self, name)
            except AttributeError:
                value = getattr(torch_case_class, "_" + name, None)
            if value is not None:
                setattr(delegate, name, value)
        return delegate

    def _mpdist_compare_with_torch(self, first: Any, second: Any) -> Any:
        """The torch delegate if ``first`` and ``second`` get torch's semantics, else None."""
        torch = sys.modules.get("torch")
        if torch is None:
            return None
        has_torch, has_mpdist = _holds_tensors((first, second), torch.Tensor)
        if has_mpdist or not (has_torch or _class_uses_torch(type(self))):
            return None
        return self._mpdist_torch_case()

    def assertEqual(  # noqa: N802 - unittest's name
        self,
        first: Any,
        second: Any,
        msg: Message = None,
        *,
        rtol: float | None = None,
        atol: float | None = None,
        **kwargs: Any,
    ) -> None:
        """Arrays and tensors by value (with tolerance for floats); anything else as unittest does.

        torch's ``TestCase.assertEqual`` (and all of its keywords: ``equal_nan``,
        ``exact_dtype``, ``exact_device``...) where torch tests expect it; see the module
        docstring. Otherwise extra keywords are ignored.
        """
        __tracebackhide__ = True
        torch_case = self._mpdist_compare_with_torch(first, second)
        if torch_case is not None:
            torch_case.assertEqual(first, second, msg, atol=atol, rtol=rtol, **kwargs)
            return
        plain = super().assertEqual  # type: ignore[misc]
        assert_equal(first, second, msg, rtol=rtol, atol=atol, fallback=plain)

    def assertNotEqual(  # noqa: N802 - unittest's name
        self, first: Any, second: Any, msg: Message = None, **kwargs: Any
    ) -> None:
        """The opposite of :meth:`assertEqual`."""
        __tracebackhide__ = True
        torch_case = self._mpdist_compare_with_torch(first, second)
        if torch_case is not None:
            torch_case.assertNotEqual(first, second, msg, **kwargs)
            return
        try:
            self.assertEqual(first, second, **kwargs)
        except AssertionError:
            return
        generated = f"{first!r} == {second!r}"
        raise AssertionError(msg(generated) if callable(msg) else msg or generated)

    def __getattr__(self, name: str) -> Any:
        """torch ``TestCase``'s own public methods (``assertEqualIgnoreType``,
        ``assertExpectedInline``...), once torch is imported; bound to the torch delegate."""
        # Only names normal lookup missed get here. Private and dunder names are
        # unittest's, pytest's, copy's and pickle's probes (also of half-built instances):
        # never ours. The test's own method name is probed when the case is built.
        missing = AttributeError(
            f"{type(self).__name__!r} object has no attribute {name!r}", name=name, obj=self
        )
        if name.startswith("_") or name == self.__dict__.get("_testMethodName"):
            raise missing
        torch_case_class = _torch_internals.test_case_class()
        if (
            torch_case_class is None
            or not hasattr(torch_case_class, name)
            or hasattr(unittest.TestCase, name)
        ):
            raise missing
        return getattr(self._mpdist_torch_case(), name)

    def __getstate__(self) -> dict[str, Any]:
        """The instance's state without the torch delegate (a copy makes its own)."""
        state = dict(self.__dict__)
        state.pop(_DELEGATE, None)
        return state
