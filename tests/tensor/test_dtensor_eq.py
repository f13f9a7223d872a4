"""DTensor ``==`` / ``!=`` on rank threads: an elementwise boolean DTensor whose whole value is
the comparison of the whole tensors (any placement, a Partial reduced first), never the pieces
compared as if each were the whole; hashing stays identity (DTensor parameters as dict keys),
and what has no meaning across ranks is a clear error."""

from __future__ import annotations

import itertools

import numpy as np
import pytest
from dtensor_helpers import mesh

from mpdist import nn
from mpdist.autograd import Tensor
from mpdist.tensor import DTensor, Partial, Replicate, Shard, distribute_tensor
from mpdist.testing import spawn_threads

R, S0, S1 = Replicate(), Shard(0), Shard(1)
ONE_D = [R, S0, S1]
# Small integers as floats: sums of products are exact, so == on a reduced Partial is exact.
_RNG = np.random.default_rng(3)
A = _RNG.integers(0, 3, (4, 6)).astype(np.float64)
B = _RNG.integers(0, 3, (4, 6)).astype(np.float64)
ROW = _RNG.integers(0, 3, (6,)).astype(np.float64)
W = _RNG.integers(-1, 2, (6, 5)).astype(np.float64)


def _whole(t: DTensor) -> np.ndarray:
    assert isinstance(t, DTensor) and t.dtype == np.bool_
    assert t.grad_fn is None and not t.requires_grad
    return t.full_tensor().data


@pytest.mark.parametrize("world_size", [2, 3])
def test_elementwise_against_the_whole_tensors(world_size: int) -> None:
    def body(rank: int, ws: int) -> bool:
        m = mesh(ws)
        for pa, pb in itertools.product(ONE_D, ONE_D):
            a = distribute_tensor(Tensor(A, requires_grad=True), m, [pa])
            b = distribute_tensor(Tensor(B), m, [pb])
            np.testing.assert_array_equal(_whole(a == b), A == B)
            np.testing.assert_array_equal(_whole(a != b), A != B)
            out = a == b
            if pa == pb:
                assert out.placements == (pa,)
        for p in ONE_D:
            a = distribute_tensor(Tensor(A), m, [p])
            for scalar in (1, 1.0, np.float64(2.0)):
                eq, ne = a == scalar, a != scalar
                assert eq.placements == ne.placements == (p,)  # a scalar keeps the placement
                np.testing.assert_array_equal(_whole(eq), A == scalar)  # noqa: SIM300
                np.testing.assert_array_equal(_whole(ne), A != scalar)  # noqa: SIM300
            # A Python number on the left (a numpy scalar there is a ufunc call: TypeError)
            np.testing.assert_array_equal(_whole(2 == a), A == 2)  # noqa: SIM300
            row = distribute_tensor(Tensor(ROW), m, [R])
            np.testing.assert_array_equal(_whole(a == row), A == ROW)  # broadcast
        return True

    assert all(spawn_threads(body, world_size))


def test_a_partial_is_reduced_before_comparing() -> None:
    def body(rank: int, ws: int) -> bool:
        m = mesh(ws)
        x = distribute_tensor(Tensor(A), m, [S1]) @ distribute_tensor(Tensor(W), m, [S0])
        assert x.placements == (Partial(),)
        want = A @ W
        for value in (0.0, 1.0, -1.0):
            eq = x == value
            assert eq.placements == (R,)
            np.testing.assert_array_equal(_whole(eq), want == value)
            np.testing.assert_array_equal(_whole(x != value), want != value)
        assert (x == value).to_local().data.tolist() == (want == value).tolist()
        return True

    assert all(spawn_threads(body, 2))


def test_hash_is_identity_and_errors_are_clear() -> None:
    def body(rank: int, ws: int) -> bool:
        m = mesh(ws)
        a = distribute_tensor(Tensor(A), m, [S0])
        b = distribute_tensor(Tensor(A.copy()), m, [S0])
        p = nn.Parameter(distribute_tensor(Tensor(A), m, [S1]))
        assert isinstance(p, DTensor) and isinstance(p, nn.Parameter)
        d = {a: 1, b: 2, p: 3}
        assert (d[a], d[b], d[p], len({a, b, p})) == (1, 2, 3, 3)
        assert a in [a, b] and p in {p}
        assert (a == None) is False and (a != None) is True  # noqa: E711
        with pytest.raises(NotImplementedError, match="__bool__"):
            bool(a == b)
        with pytest.raises(RuntimeError, match="mixed Tensor and DTensor"):
            a == Tensor(A)  # noqa: B015
        with pytest.raises(RuntimeError, match="mixed Tensor and DTensor"):
            Tensor(A) == a  # noqa: B015
        with pytest.raises(TypeError, match="numpy.equal on a DTensor"):
            np.float64(2.0) == a  # noqa: B015, SIM300
        with pytest.raises(TypeError, match="numpy.equal on a DTensor"):
            A == a  # noqa: B015, SIM300
        return True

    assert all(spawn_threads(body, 2))
