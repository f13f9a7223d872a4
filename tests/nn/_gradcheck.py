"""Gradients against central finite differences, for the nn layer tests (float64)."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import numpy as np

from mpdist.autograd import Tensor


def check_gradients(
    fn: Callable[..., Any],
    arrays: Sequence[np.ndarray],
    params: Sequence[Tensor] = (),
    eps: float = 1e-6,
    rtol: float = 1e-5,
    atol: float = 1e-7,
    seed: int = 0,
) -> None:
    """``fn(*tensors)``'s gradient, for the inputs ``arrays`` and the Tensors ``params``
    (used inside ``fn``), equals the finite-difference gradient of ``sum(out * r)`` for a
    fixed random ``r``."""
    leaves = [Tensor(a.copy(), requires_grad=True) for a in arrays]
    for p in params:
        p.grad = None
    out = fn(*leaves)
    r = np.random.default_rng(seed).standard_normal(out.shape)
    (out * r).sum().backward()

    def value() -> float:
        return float((np.asarray(fn(*[Tensor(t.data) for t in leaves]).data) * r).sum())

    for t in [*leaves, *params]:
        assert t.grad is not None, "no gradient reached an input"
        numeric = np.zeros_like(t.data)
        for i in np.ndindex(t.data.shape):
            old = t.data[i]
            t.data[i] = old + eps
            hi = value()
            t.data[i] = old - eps
            lo = value()
            t.data[i] = old
            numeric[i] = (hi - lo) / (2 * eps)
        np.testing.assert_allclose(t.grad.data, numeric, rtol=rtol, atol=atol)
