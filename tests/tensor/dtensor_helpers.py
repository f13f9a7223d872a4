"""Shared by the DTensor tests: meshes, seeded arrays, and the check that a DTensor computation
gives the values and gradients of the same computation on whole tensors in one process."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import numpy as np

from mpdist.autograd import Tensor
from mpdist.device_mesh import DeviceMesh, init_device_mesh
from mpdist.tensor import DTensor, Replicate, distribute_tensor


def mesh(*shape: int) -> DeviceMesh:
    """A CPU DeviceMesh of ``shape`` over the default group's ranks, in row-major order."""
    return init_device_mesh("cpu", tuple(shape))


def arr(seed: int, *shape: int) -> np.ndarray:
    """A float64 array drawn from ``seed`` (the same on every rank)."""
    return np.random.default_rng(seed).standard_normal(shape)


def leaf(a: np.ndarray) -> Tensor:
    return Tensor(a.copy(), requires_grad=True)


def reference(
    f: Callable[..., Tensor], arrays: Sequence[np.ndarray], seed: int = 99
) -> tuple[np.ndarray, list[np.ndarray], np.ndarray]:
    """``f`` on whole tensors in this process: its value, the gradients of
    ``sum(f(...) * weights)`` and the weights (seeded)."""
    leaves = [leaf(a) for a in arrays]
    out = f(*leaves)
    weights = arr(seed, *out.shape)
    (out * Tensor(weights)).sum().backward()
    return out.data, [t.grad.data for t in leaves], weights


def check_sharded(
    f: Callable[..., Any],
    arrays: Sequence[np.ndarray],
    device_mesh: Any,
    placements: Sequence[Sequence[Any]],
    *,
    rtol: float = 1e-9,
) -> DTensor:
    """``f`` on DTensors of ``arrays`` placed by ``placements`` equals ``f`` on whole tensors:
    the value (gathered) and each input's gradient (gathered). Returns the output DTensor."""
    value, grads, weights = reference(f, arrays)
    inputs = [
        distribute_tensor(leaf(a), device_mesh, list(p))
        for a, p in zip(arrays, placements, strict=True)
    ]
    out = f(*inputs)
    assert isinstance(out, DTensor), type(out)
    assert out.shape == value.shape
    full = out.full_tensor()
    np.testing.assert_allclose(full.data, value, rtol=rtol, atol=1e-12)
    (full * Tensor(weights)).sum().backward()
    for i, (x, g) in enumerate(zip(inputs, grads, strict=True)):
        assert isinstance(x.grad, DTensor), f"input {i}"
        # A leaf's gradient is placed like it, but a Partial's is whole (Replicate).
        like = tuple(Replicate() if q.is_partial() else q for q in x.placements)
        assert x.grad.placements == like, f"input {i}: {x.grad.placements}"
        np.testing.assert_allclose(
            x.grad.full_tensor().data, g, rtol=rtol, atol=1e-12, err_msg=f"input {i}"
        )
    return out
