"""assertEqual of the test cases compares arrays and tensors by value, like torch's."""

from __future__ import annotations

import numpy as np
import pytest

from mpdist.autograd import Tensor
from mpdist.testing import MultiProcessTestCase, MultiThreadedTestCase


@pytest.fixture(params=[MultiProcessTestCase, MultiThreadedTestCase])
def case(request):
    return request.param("runTest")


def test_arrays_compare_by_value_with_float_tolerance(case) -> None:
    case.assertEqual(np.arange(4), np.arange(4))
    case.assertEqual(np.ones(3, np.float32), np.ones(3, np.float32) + 1e-7)
    case.assertEqual(Tensor(np.ones(2)), np.ones(2))
    case.assertEqual([np.zeros(2), 3], [np.zeros(2), 3])
    case.assertEqual({"w": np.ones(2)}, {"w": np.ones(2)})
    case.assertEqual(np.array([True, False]), np.array([True, False]))
    case.assertEqual(np.full(3, 2.0), 2.0)
    case.assertEqual("plain", "plain")
    with pytest.raises(AssertionError):
        case.assertEqual(np.ones(3), np.ones(3) + 1e-3)
    with pytest.raises(AssertionError, match="shapes differ"):
        case.assertEqual(np.ones(3), np.ones(4))
    with pytest.raises(AssertionError):
        case.assertEqual(np.arange(3), np.array([0, 1, 3]))
    with pytest.raises(AssertionError, match="lengths differ"):
        case.assertEqual([np.ones(1)], [np.ones(1), np.ones(1)])
    with pytest.raises(AssertionError):
        case.assertEqual(1, 2)
    case.assertEqual(np.ones(2), np.ones(2) * 1.5, rtol=0.5, atol=0)
    case.assertNotEqual(np.ones(2), np.zeros(2))
    with pytest.raises(AssertionError):
        case.assertNotEqual(np.ones(2), np.ones(2))


def test_torch_tensors_compare_by_value(case) -> None:
    torch = pytest.importorskip("torch")
    case.assertEqual(torch.ones(3), torch.ones(3))
    case.assertEqual(torch.arange(3), np.arange(3))
    with pytest.raises(AssertionError):
        case.assertEqual(torch.ones(3), torch.zeros(3))
