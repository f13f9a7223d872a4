"""The torch idioms a ported test uses on parameters and gradients, each checked for what it
returns and whether it shares memory or joins the graph."""

from __future__ import annotations

import numpy as np
import pytest

from mpdist import nn
from mpdist.autograd import Tensor, is_grad_enabled, no_grad


def _param() -> nn.Parameter:
    p = nn.Parameter(np.arange(6, dtype=np.float32).reshape(2, 3))
    p.grad = Tensor(np.ones((2, 3), dtype=np.float32))
    return p


def test_queries() -> None:
    p = _param()
    assert p.numel() == 6 and p.ndim == 2 and p.dim() == 2
    assert p.size() == (2, 3) and p.size(1) == 3 and p.size(-1) == 3
    assert p[1, 2].item() == 5.0 and isinstance(p[1, 2].item(), float)
    assert p.tolist() == [[0.0, 1.0, 2.0], [3.0, 4.0, 5.0]]
    assert p.T.shape == (3, 2)
    np.testing.assert_array_equal(p.T.data, p.data.T)


def test_clone_and_detach() -> None:
    p = _param()
    snapshot = p.detach().clone()
    assert snapshot.is_leaf and not snapshot.requires_grad
    assert not np.shares_memory(snapshot.data, p.data)
    c = p.clone()
    assert c.grad_fn is not None and not np.shares_memory(c.data, p.data)
    (c * 2.0).sum().backward()
    np.testing.assert_array_equal(p.grad.data, 3.0)  # 1 from before + 2 through the clone
    d = p.detach()
    assert d.data is p.data and not d.requires_grad


def test_in_place_fills_and_the_grad_idioms() -> None:
    p = _param()
    g = p.grad
    assert p.grad.zero_() is g
    np.testing.assert_array_equal(g.data, 0.0)
    with pytest.raises(RuntimeError, match="leaf Variable"):
        p.zero_()
    with no_grad():
        assert p.zero_() is p
        np.testing.assert_array_equal(p.data, 0.0)
        assert p.fill_(2.5) is p
        p.copy_(np.array([1.0, 2.0, 3.0]))  # broadcast into (2, 3), cast to float32
    np.testing.assert_array_equal(p.data, [[1, 2, 3], [1, 2, 3]])
    assert p.dtype == np.float32
    # ``p.data`` is the ndarray itself (DESIGN), so torch's ``p.data.copy_(s)`` is written
    # ``p.data[...] = s``; it writes the parameter in place.
    p.data[...] = 7.0
    np.testing.assert_array_equal(p.data, 7.0)


def test_requires_grad_and_detach_in_place() -> None:
    t = Tensor(np.ones(2))
    assert t.requires_grad_() is t and t.requires_grad
    y = t * 2.0
    assert y.detach_() is y
    assert y.is_leaf and not y.requires_grad and y.grad_fn is None
    y += 1.0  # now allowed in grad mode: y is outside the graph
    np.testing.assert_array_equal(y.data, 3.0)
    np.testing.assert_array_equal(t.data, 1.0)


def test_no_grad_as_decorator_with_and_without_parentheses() -> None:
    w = Tensor(np.ones(2), requires_grad=True)

    @no_grad()
    def called(x: Tensor) -> Tensor:
        return x * 2.0

    @no_grad
    def bare(x: Tensor) -> Tensor:
        assert not is_grad_enabled()
        return x * 2.0

    assert not called(w).requires_grad
    assert not bare(w).requires_grad
    assert bare.__name__ == "bare"
    assert is_grad_enabled()


def test_dtype_and_layout_helpers() -> None:
    f32 = Tensor(np.ones(3, dtype=np.float32), requires_grad=True)
    assert f32.float() is f32
    d = f32.double()
    assert d.dtype == np.float64 and d.grad_fn is not None
    d.sum().backward()
    assert f32.grad.dtype == np.float32
    assert Tensor(np.ones(2)).float().dtype == np.float32
    assert f32.cpu() is f32
    t = Tensor(np.arange(6.0).reshape(2, 3), requires_grad=True)
    tt = t.T
    assert t.is_contiguous() and not tt.is_contiguous()
    assert t.contiguous() is t
    c = tt.contiguous()
    assert c.is_contiguous()
    np.testing.assert_array_equal(c.data, t.data.T)
    (c * np.arange(6.0).reshape(3, 2)).sum().backward()
    np.testing.assert_array_equal(t.grad.data, np.arange(6.0).reshape(3, 2).T)


def test_data_ptr_and_equal() -> None:
    buf = np.zeros(6)
    a, b = Tensor(buf[:3]), Tensor(buf[3:])
    assert a.data_ptr() == Tensor(buf).data_ptr()
    assert b.data_ptr() == a.data_ptr() + 3 * buf.itemsize
    assert a.equal(np.zeros(3)) and a.equal(b)
    assert not a.equal(np.zeros(4)) and not a.equal(Tensor(np.ones(3)))


def test_unsqueeze_and_squeeze() -> None:
    t = Tensor(np.arange(6.0).reshape(2, 3), requires_grad=True)
    assert t.unsqueeze(0).shape == (1, 2, 3)
    assert t.unsqueeze(-1).shape == (2, 3, 1)
    assert t.unsqueeze(1).shape == (2, 1, 3)
    with pytest.raises(IndexError, match="Dimension out of range"):
        t.unsqueeze(3)
    u = Tensor(np.ones((1, 2, 1)))
    assert u.squeeze().shape == (2,)
    assert u.squeeze(0).shape == (2, 1)
    assert u.squeeze(1).shape == (1, 2, 1)  # length 2: stays, as in torch
    assert u.squeeze((0, -1)).shape == (2,)
    with pytest.raises(IndexError, match="Dimension out of range"):
        u.squeeze(3)
    t.unsqueeze(0).squeeze(0).sum().backward()
    np.testing.assert_array_equal(t.grad.data, 1.0)
