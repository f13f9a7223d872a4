"""The test cases' assertEqual follows torch's TestCase where a torch test expects it.

A comparison that involves a torch tensor (or happens in a test class that uses torch)
must behave as in torch's own test suite: sparse and bfloat16 tensors, exact dtypes,
``atol``/``rtol``, ``equal_nan``, callable and appended messages, tensors against Python
lists, and torch's extra assertion methods. numpy-only comparisons in classes that do
not use torch, and anything with an mpdist Tensor, keep mpdist's own semantics.
"""

from __future__ import annotations

import copy
import math
import pickle
import unittest
from collections.abc import Callable
from typing import Any

import numpy as np
import pytest

from mpdist.autograd import Tensor
from mpdist.testing import MultiProcessTestCase, MultiThreadedTestCase

torch = pytest.importorskip("torch")
# torch's TestCase lives in its test utilities, which import expecttest.
pytest.importorskip("expecttest")

HARNESS_CLASSES = [MultiProcessTestCase, MultiThreadedTestCase]


class ProcessCaseUsingTorch(MultiProcessTestCase):
    """A class of this module, which uses torch: its comparisons are torch's."""

    __test__ = False


class ThreadCaseUsingTorch(MultiThreadedTestCase):
    """As ProcessCaseUsingTorch, for the threaded harness."""

    __test__ = False


class ProcessCaseWithoutTorch(MultiProcessTestCase):
    """A class of this module that says it does not use torch."""

    __test__ = False
    torch_world = False


class ThreadCaseWithoutTorch(MultiThreadedTestCase):
    """As ProcessCaseWithoutTorch, for the threaded harness."""

    __test__ = False
    torch_world = False


@pytest.fixture(params=HARNESS_CLASSES, ids=lambda cls: cls.__name__)
def case(request: pytest.FixtureRequest) -> unittest.TestCase:
    """A harness test case as mpdist ships it (its class does not use torch), not run."""
    return request.param("runTest")


@pytest.fixture(params=[ProcessCaseUsingTorch, ThreadCaseUsingTorch], ids=lambda c: c.__name__)
def torch_case(request: pytest.FixtureRequest) -> unittest.TestCase:
    """A test case of a class that uses torch, not run."""
    return request.param("runTest")


@pytest.fixture(
    params=[MultiProcessTestCase, ProcessCaseWithoutTorch, ThreadCaseWithoutTorch],
    ids=lambda c: c.__name__,
)
def numpy_case(request: pytest.FixtureRequest) -> unittest.TestCase:
    """A test case of a class that does not use torch, not run."""
    return request.param("runTest")


def failure(check: Callable[..., Any], *args: Any, **kwargs: Any) -> str:
    """The message of the AssertionError ``check(*args, **kwargs)`` must raise."""
    with pytest.raises(AssertionError) as info:
        check(*args, **kwargs)
    return str(info.value)


def sparse(indices: list[list[int]], values: list[float], size: tuple[int, ...]) -> Any:
    """A coalesced sparse COO tensor (invariants checked, which also keeps torch quiet)."""
    return torch.sparse_coo_tensor(
        torch.tensor(indices), torch.tensor(values), size, check_invariants=True
    ).coalesce()


def test_sparse_coo_tensors_compare_by_indices_and_values(case: Any) -> None:
    dense = torch.tensor([[0.0, 2.0, 0.0], [5.0, 0.0, 7.0]])
    built = sparse([[0, 1, 1], [1, 0, 2]], [2.0, 5.0, 7.0], (2, 3))
    case.assertEqual(built, dense.to_sparse())
    case.assertEqual(built, built.clone())
    assert "values" in failure(
        case.assertEqual, built, sparse([[0, 1, 1], [1, 0, 2]], [2.0, 5.0, 7.5], (2, 3))
    )
    assert "indices" in failure(
        case.assertEqual, built, sparse([[0, 1, 1], [1, 0, 1]], [2.0, 5.0, 7.0], (2, 3))
    )
    # exact_layout is off by default: a sparse tensor equals its dense form.
    case.assertEqual(built, dense)
    assert "layout" in failure(case.assertEqual, built, dense, exact_layout=True)


def test_bfloat16_tensors_compare_with_bfloat16_tolerance(case: Any) -> None:
    half = torch.tensor([1.0, 2.5, -3.0], dtype=torch.bfloat16)
    case.assertEqual(half, half.clone())
    # 1.0078125 is the next bfloat16 after 1.0: within bfloat16's tolerance.
    case.assertEqual(half, torch.tensor([1.0078125, 2.5, -3.0], dtype=torch.bfloat16))
    assert "not close" in failure(
        case.assertEqual, half, torch.tensor([1.25, 2.5, -3.0], dtype=torch.bfloat16)
    )


def test_dtypes_must_match_unless_exact_dtype_is_false(case: Any) -> None:
    single = torch.ones(3)
    double = torch.ones(3, dtype=torch.float64)
    assert "dtype" in failure(case.assertEqual, single, double)
    assert "dtype" in failure(case.assertEqual, torch.arange(3), torch.arange(3.0))
    case.assertEqual(single, double, exact_dtype=False)
    case.assertEqual(torch.arange(3), torch.arange(3.0), exact_dtype=False)
    # Still compared by value when the dtype is let go.
    failure(case.assertEqual, single, double * 2, exact_dtype=False)


def test_atol_and_rtol_widen_the_tolerance(case: Any) -> None:
    base = torch.full((4,), 10.0)
    nearby = base + 0.5
    failure(case.assertEqual, base, nearby)
    case.assertEqual(base, nearby, atol=0.6, rtol=0)
    case.assertEqual(base, nearby, atol=0, rtol=0.06)
    failure(case.assertEqual, base, nearby, atol=0.4, rtol=0)
    failure(case.assertEqual, base, nearby, atol=0, rtol=0.04)


def test_nan_equals_nan_unless_equal_nan_is_false(case: Any) -> None:
    with_nan = torch.tensor([1.0, math.nan])
    case.assertEqual(with_nan, with_nan.clone())
    failure(case.assertEqual, with_nan, with_nan.clone(), equal_nan=False)
    failure(case.assertEqual, with_nan, torch.tensor([1.0, 2.0]))


def test_callable_msg_rewrites_the_generated_message(case: Any) -> None:
    seen: list[str] = []

    def rewrite(generated: str) -> str:
        seen.append(generated)
        return f"rank view differs -- {generated.splitlines()[0]}"

    message = failure(case.assertEqual, torch.ones(2), torch.zeros(2), rewrite)
    assert len(seen) == 1 and "Mismatched elements" in seen[0]
    assert message == "rank view differs -- " + seen[0].splitlines()[0]
    message = failure(case.assertEqual, torch.ones(2), torch.ones(3), msg=lambda _: "replaced")
    assert message == "replaced"


def test_str_msg_is_appended_to_the_generated_message(case: Any) -> None:
    message = failure(case.assertEqual, torch.ones(2), torch.zeros(2), "after the all_reduce")
    assert "Mismatched elements" in message
    assert message.endswith("\nafter the all_reduce")
    # unittest's switch: without longMessage the given message is the whole message.
    case.longMessage = False
    assert failure(case.assertEqual, torch.ones(2), torch.zeros(2), "only this") == "only this"


def test_lists_of_tensors_compare_item_by_item(case: Any) -> None:
    first = [torch.arange(3), torch.ones(2, 2), {"bias": torch.zeros(1)}]
    case.assertEqual(first, [t if isinstance(t, dict) else t.clone() for t in first])
    case.assertEqual(tuple(first), list(first))
    failure(case.assertEqual, first, [torch.arange(3), torch.ones(2, 2), {"bias": torch.ones(1)}])
    failure(case.assertEqual, first, first[:2])


def test_tensor_against_python_list_and_number(case: Any) -> None:
    case.assertEqual(torch.tensor([1, 2, 3]), [1, 2, 3])
    case.assertEqual([[1.0, 2.0]], torch.tensor([[1.0, 2.0]]))
    failure(case.assertEqual, torch.tensor([1, 2, 3]), [1, 2, 4])
    case.assertEqual(torch.tensor(2.0), 2.0)
    case.assertEqual(torch.tensor(3), 3)
    failure(case.assertEqual, torch.tensor(2.0), 2.5)


def test_assert_not_equal_with_torch_semantics(case: Any) -> None:
    case.assertNotEqual(torch.ones(2), torch.zeros(2))
    case.assertNotEqual(torch.ones(2), torch.ones(2, dtype=torch.float64))
    case.assertNotEqual(sparse([[0], [1]], [1.0], (2, 2)), sparse([[0], [1]], [2.0], (2, 2)))
    assert "not raised" in failure(case.assertNotEqual, torch.ones(2), torch.ones(2))
    failure(
        case.assertNotEqual, torch.ones(2), torch.ones(2, dtype=torch.float64), exact_dtype=False
    )
    case.assertNotEqual(torch.ones(2), torch.ones(2) + 0.5, atol=0.1, rtol=0)
    failure(case.assertNotEqual, torch.ones(2), torch.ones(2) + 0.5, atol=1, rtol=0)


def test_torch_only_methods_resolve(case: Any) -> None:
    case.assertEqualIgnoreType(torch.ones(2), torch.ones(2, dtype=torch.float64))
    failure(case.assertEqualIgnoreType, torch.ones(2), torch.zeros(2, dtype=torch.float64))
    case.assertEqualBroadcasting(torch.full((2, 3), 4.0), 4.0)
    assert callable(case.assertExpectedInline)
    assert callable(case.assertNotWarn)
    assert case.precision == 0 and case.rel_tol == 0
    with pytest.raises(AttributeError, match="no_such_assertion"):
        case.no_such_assertion  # noqa: B018 - the lookup is the test


def test_private_unittest_and_unknown_names_stay_missing(case: Any) -> None:
    # torch's TestCase has these, but private names are never handed over.
    assert not hasattr(case, "_precision")
    assert not hasattr(case, "_should_stop_test_suite")
    assert not hasattr(case, "__setstate__")
    assert not hasattr(case, "assertSomethingNobodyHas")
    # unittest's own methods stay unittest's (the mixin's for assertEqual).
    assert type(case).assertRaises is unittest.TestCase.assertRaises
    assert case.assertRaises.__self__ is case
    assert case.assertEqual.__func__ is type(case).assertEqual


def test_settings_on_the_test_reach_the_torch_comparison(case: Any) -> None:
    failure(case.assertEqual, torch.ones(2), torch.ones(2) + 0.4)
    case.precision = 0.5  # torch's minimum atol, as @precisionOverride sets it
    case.assertEqual(torch.ones(2), torch.ones(2) + 0.4)
    assert case.assertEqualIgnoreType.__self__.precision == 0.5


def test_copy_and_pickle_leave_the_torch_delegate_behind(case: Any) -> None:
    case.assertEqual(torch.ones(1), torch.ones(1))  # makes the delegate
    copied = copy.copy(case)
    assert "_mpdist_torch_delegate" not in vars(copied)
    copied.assertEqualIgnoreType(torch.ones(1), torch.ones(1, dtype=torch.float64))
    assert copied.assertEqualIgnoreType.__self__ is not case.assertEqualIgnoreType.__self__
    if isinstance(case, MultiProcessTestCase):  # the threaded case holds a threading.local
        restored = pickle.loads(pickle.dumps(case))
        assert "_mpdist_torch_delegate" not in vars(restored)
        restored.assertEqual(torch.zeros(1), torch.zeros(1))
    # A bare instance (as unpickling and copying make before they fill it in) resolves
    # nothing private and does not recurse.
    blank = type(case).__new__(type(case))
    assert not hasattr(blank, "_testMethodName")
    assert not hasattr(blank, "_mpdist_torch_delegate")
    assert callable(blank.assertEqualIgnoreType)


def test_numpy_arrays_keep_mpdist_semantics_where_torch_is_not_used(numpy_case: Any) -> None:
    # torch would refuse the dtype difference; mpdist compares values.
    numpy_case.assertEqual(np.ones(3, np.float32), np.ones(3, np.float64))
    numpy_case.assertEqual(np.arange(3, dtype=np.int32), np.arange(3, dtype=np.int64))
    assert "shapes differ" in failure(numpy_case.assertEqual, np.ones(2), np.ones(3))
    # Exact for Python numbers, as unittest.
    failure(numpy_case.assertEqual, 1.0, 1.0 + 1e-7)
    # A callable msg works in mpdist's comparison too.
    seen: list[str] = []

    def rewrite(generated: str) -> str:
        seen.append(generated)
        return "numpy view differs"

    assert failure(numpy_case.assertEqual, np.ones(2), np.zeros(2), rewrite) == (
        "numpy view differs"
    )
    assert "Mismatched elements" in seen[0]
    assert failure(numpy_case.assertEqual, [1, 2], [1, 2, 3], lambda m: f"<{m}>") == (
        "<lengths differ: 2 != 3>"
    )
    assert failure(numpy_case.assertNotEqual, np.ones(2), np.ones(2), lambda m: f"<{m}>") == (
        "<array([1., 1.]) == array([1., 1.])>"
    )


def test_a_torch_test_class_compares_everything_as_torch(torch_case: Any) -> None:
    assert "dtype" in failure(torch_case.assertEqual, np.ones(3, np.float32), np.ones(3))
    torch_case.assertEqual(np.ones(3, np.float32), np.ones(3), exact_dtype=False)
    # torch's number semantics: 1 == 1.0 and floats within tolerance.
    torch_case.assertEqual(1, 1.0)
    torch_case.assertEqual(1.0, 1.0 + 1e-7)
    failure(torch_case.assertEqual, 1.0, 1.1)
    torch_case.assertEqual({"step": 3, "lr": [0.1]}, {"step": 3, "lr": [0.1]})


def test_mpdist_tensors_keep_mpdist_semantics(torch_case: Any) -> None:
    # With an mpdist Tensor in the comparison the dtype is not checked, even next to torch.
    torch_case.assertEqual(Tensor(np.ones(2, np.float32)), np.ones(2))
    torch_case.assertEqual(Tensor(np.ones(2)), torch.ones(2))
    torch_case.assertEqual([Tensor(np.zeros(2)), torch.ones(1)], [np.zeros(2), np.ones(1)])
    assert "Not equal to tolerance" in failure(
        torch_case.assertEqual, Tensor(np.ones(2)), np.zeros(2)
    )


def compare_sparse_and_bfloat16(case: Any) -> None:
    """What each rank checks: its own sparse and bfloat16 tensors, torch's way."""
    assert case.rank in (0, 1) and case.world_size == 2
    value = float(case.rank + 1)
    dense = torch.tensor([[0.0, value], [3.0, 0.0]])
    case.assertEqual(dense.to_sparse(), sparse([[0, 1], [1, 0]], [value, 3.0], (2, 2)))
    case.assertNotEqual(dense.to_sparse(), (dense * 2).to_sparse())
    with case.assertRaises(AssertionError):
        case.assertEqual(dense.to_sparse(), sparse([[0, 1], [1, 0]], [value, 4.0], (2, 2)))
    half = torch.full((3,), value + 0.5, dtype=torch.bfloat16)
    case.assertEqual(half, torch.full((3,), value + 0.5, dtype=torch.bfloat16))
    case.assertEqual(half, [value + 0.5] * 3)
    with case.assertRaises(AssertionError):
        case.assertEqual(half, half.float())
    case.assertEqual(half, half.float(), exact_dtype=False)
    case.assertEqualIgnoreType(half, half.double())


class TestTorchAssertsInProcesses(MultiProcessTestCase):
    """The comparisons in real rank processes."""

    @property
    def world_size(self) -> int:
        """Two ranks, whatever the harness default."""
        return 2

    def test_sparse_and_bfloat16_in_each_rank(self) -> None:
        compare_sparse_and_bfloat16(self)


class TestTorchAssertsInThreads(MultiThreadedTestCase):
    """The comparisons in real rank threads, which share one test instance."""

    @property
    def world_size(self) -> int:
        """Two ranks, whatever the harness default."""
        return 2

    def test_sparse_and_bfloat16_in_each_rank(self) -> None:
        compare_sparse_and_bfloat16(self)
