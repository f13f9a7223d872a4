"""Differentiable collectives on 2 ranks (threads): forward values and gradients.

Each rank r computes L_r = sum(w_r * output_r) with its own weights and calls backward; the
gradients are checked against the adjoint of the collective, worked out by hand.
"""

from __future__ import annotations

import numpy as np
import pytest

from mpdist.autograd import Tensor
from mpdist.parallel import functional as fn
from mpdist.process_group import ReduceOp
from mpdist.testing import spawn_threads

WS = 2


def x_of(r: int, shape=(2, 3)) -> np.ndarray:
    return np.arange(np.prod(shape), dtype=np.float64).reshape(shape) + 10.0 * r


def w_of(r: int, i: int = 0, shape=(2, 3)) -> np.ndarray:
    return np.random.default_rng(7 + 10 * r + i).standard_normal(shape)


def leaf(a: np.ndarray) -> Tensor:
    return Tensor(a.copy(), requires_grad=True)


def test_broadcast() -> None:
    def body(r, ws):
        x = leaf(x_of(r))
        y = fn.broadcast(x, src=1)
        (y * w_of(r)).sum().backward()
        return y.data, x.grad.data

    out = spawn_threads(body, WS)
    for r, (y, g) in enumerate(out):
        np.testing.assert_array_equal(y, x_of(1))
        expected = w_of(0) + w_of(1) if r == 1 else np.zeros((2, 3))
        np.testing.assert_allclose(g, expected)


def test_reduce() -> None:
    def body(r, ws):
        x = leaf(x_of(r))
        y = fn.reduce(x, dst=0)
        (y * w_of(r)).sum().backward()
        return y.data, x.grad.data, x.data

    out = spawn_threads(body, WS)
    np.testing.assert_array_equal(out[0][0], x_of(0) + x_of(1))
    for r, (_, g, xd) in enumerate(out):
        np.testing.assert_allclose(g, w_of(0))
        np.testing.assert_array_equal(xd, x_of(r))  # the input is not modified


def test_all_reduce_sum_and_avg() -> None:
    def body(r, ws):
        res = []
        for op in (ReduceOp.SUM, ReduceOp.AVG):
            x = leaf(x_of(r))
            y = fn.all_reduce(x, op=op)
            (y * w_of(r)).sum().backward()
            res.append((y.data, x.grad.data))
        return res

    for (ys, gs), (ya, ga) in spawn_threads(body, WS):
        np.testing.assert_array_equal(ys, x_of(0) + x_of(1))
        np.testing.assert_allclose(gs, w_of(0) + w_of(1))
        np.testing.assert_allclose(ya, (x_of(0) + x_of(1)) / 2)
        np.testing.assert_allclose(ga, (w_of(0) + w_of(1)) / 2)


def test_all_gather() -> None:
    def body(r, ws):
        x = leaf(x_of(r))
        ys = fn.all_gather(x)
        sum((y * w_of(r, i)).sum() for i, y in enumerate(ys)).backward()
        return [y.data for y in ys], x.grad.data

    for r, (ys, g) in enumerate(spawn_threads(body, WS)):
        for i, y in enumerate(ys):
            np.testing.assert_array_equal(y, x_of(i))
        np.testing.assert_allclose(g, w_of(0, r) + w_of(1, r))


def test_gather() -> None:
    def body(r, ws):
        x = leaf(x_of(r))
        ys = fn.gather(x, dst=1)
        sum((y * w_of(r, i)).sum() for i, y in enumerate(ys)).backward()
        return [y.data for y in ys], x.grad.data

    out = spawn_threads(body, WS)
    for i, y in enumerate(out[1][0]):
        np.testing.assert_array_equal(y, x_of(i))
    assert all(not y.any() for y in out[0][0])  # zeros off dst
    for r, (_, g) in enumerate(out):
        np.testing.assert_allclose(g, w_of(1, r))


def test_scatter() -> None:
    def body(r, ws):
        xs = [leaf(x_of(r) + i) for i in range(ws)]
        y = fn.scatter(xs, src=0)
        (y * w_of(r)).sum().backward()
        return y.data, [x.grad.data for x in xs]

    out = spawn_threads(body, WS)
    for r, (y, gs) in enumerate(out):
        np.testing.assert_array_equal(y, x_of(0) + r)
        for i, g in enumerate(gs):
            np.testing.assert_allclose(g, w_of(i) if r == 0 else np.zeros((2, 3)))


def test_reduce_scatter() -> None:
    def body(r, ws):
        xs = [leaf(x_of(r) * (i + 1)) for i in range(ws)]
        out = np.zeros((2, 3))
        y = fn.reduce_scatter(out, xs)
        (y * w_of(r)).sum().backward()
        return y.data, out, [x.grad.data for x in xs]

    for r, (y, out, gs) in enumerate(spawn_threads(body, WS)):
        np.testing.assert_array_equal(y, (x_of(0) + x_of(1)) * (r + 1))
        np.testing.assert_array_equal(out, y)  # written into the caller's output
        for i, g in enumerate(gs):
            np.testing.assert_allclose(g, w_of(i))


def test_reduce_scatter_avg_and_non_linear_ops_have_no_backward() -> None:
    def body(r, ws):
        xs = [leaf(x_of(r) * (i + 1)) for i in range(ws)]
        y = fn.reduce_scatter(np.zeros((2, 3)), xs, op=ReduceOp.AVG)
        (y * w_of(r)).sum().backward()
        errors = []
        for name, call in (
            ("all_reduce", lambda t: fn.all_reduce(t, op=ReduceOp.MAX)),
            ("reduce_scatter", lambda t: fn.reduce_scatter(np.zeros(3), [t, t], op=ReduceOp.MAX)),
        ):
            out = call(leaf(np.full(3, r + 1.0)))
            with pytest.raises(RuntimeError, match=f"{name} backward is only defined") as info:
                out.sum().backward()
            errors.append(str(info.value))
        return y.data, [x.grad.data for x in xs], errors

    for r, (y, gs, errors) in enumerate(spawn_threads(body, WS)):
        np.testing.assert_allclose(y, (x_of(0) + x_of(1)) * (r + 1) / 2)
        for i, g in enumerate(gs):
            np.testing.assert_allclose(g, w_of(i) / 2)
        assert all("MAX" in e for e in errors)


def test_all_to_all() -> None:
    def body(r, ws):
        xs = [leaf(x_of(r) + 100 * j) for j in range(ws)]
        outs = [np.zeros((2, 3)) for _ in range(ws)]
        ys = fn.all_to_all(outs, xs)
        sum((y * w_of(r, i)).sum() for i, y in enumerate(ys)).backward()
        return [y.data for y in ys], [x.grad.data for x in xs]

    for r, (ys, gs) in enumerate(spawn_threads(body, WS)):
        for i, y in enumerate(ys):
            np.testing.assert_array_equal(y, x_of(i) + 100 * r)
        for j, g in enumerate(gs):
            np.testing.assert_allclose(g, w_of(j, r))


def test_all_to_all_single_uneven() -> None:
    in_splits = {0: [1, 2], 1: [2, 1]}
    out_splits = {0: [1, 2], 1: [2, 1]}

    def body(r, ws):
        x = leaf(x_of(r, (3, 2)))
        out = np.zeros((3, 2))
        y = fn.all_to_all_single(out, x, out_splits[r], in_splits[r])
        (y * w_of(r, 0, (3, 2))).sum().backward()
        return y.data, x.grad.data

    (y0, g0), (y1, g1) = spawn_threads(body, WS)
    x0, x1 = x_of(0, (3, 2)), x_of(1, (3, 2))
    np.testing.assert_array_equal(y0, np.concatenate([x0[:1], x1[:2]]))
    np.testing.assert_array_equal(y1, np.concatenate([x0[1:], x1[2:]]))
    w0, w1 = w_of(0, 0, (3, 2)), w_of(1, 0, (3, 2))
    # rank 0's rows went: row 0 -> rank 0 row 0, rows 1-2 -> rank 1 rows 0-1
    np.testing.assert_allclose(g0, np.concatenate([w0[:1], w1[:2]]))
    np.testing.assert_allclose(g1, np.concatenate([w0[1:], w1[2:]]))
