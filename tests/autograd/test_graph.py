"""Graph behaviour: accumulation, hooks, no_grad, Function, queue_callback, errors."""

from __future__ import annotations

import threading

import numpy as np
import pytest

from mpdist.autograd import (
    Function,
    Tensor,
    backward,
    enable_grad,
    is_grad_enabled,
    no_grad,
    queue_callback,
    set_grad_enabled,
    tensor,
)


def test_gradients_accumulate_across_backward_calls() -> None:
    w = Tensor([1.0, 2.0], requires_grad=True)
    (w * 3.0).sum().backward()
    (w * 3.0).sum().backward()
    np.testing.assert_array_equal(w.grad.data, [6.0, 6.0])


def test_leaf_used_twice_fires_hooks_once_with_the_total() -> None:
    w = Tensor([1.0, 2.0], requires_grad=True)
    seen, post = [], []
    w.register_hook(lambda g: seen.append(g.data.copy()))
    w.register_post_accumulate_grad_hook(lambda t: post.append(t.grad.data.copy()))
    (w * w + w * 2.0).sum().backward()
    assert len(seen) == 1 and len(post) == 1
    np.testing.assert_array_equal(seen[0], [4.0, 6.0])
    np.testing.assert_array_equal(post[0], [4.0, 6.0])
    (w * 1.0).sum().backward()
    assert len(post) == 2
    np.testing.assert_array_equal(post[1], [5.0, 7.0])  # after accumulation


def test_hook_can_replace_the_gradient_and_be_removed() -> None:
    w = Tensor([1.0, 1.0], requires_grad=True)
    h = w.register_hook(lambda g: g * 10.0)
    w.sum().backward()
    np.testing.assert_array_equal(w.grad.data, [10.0, 10.0])
    h.remove()
    w.grad = None
    w.sum().backward()
    np.testing.assert_array_equal(w.grad.data, [1.0, 1.0])


def test_hook_on_intermediate_changes_what_flows_upstream() -> None:
    x = Tensor([1.0, 2.0], requires_grad=True)
    y = x * 2.0
    y.register_hook(lambda g: g * 0.5)
    y.retain_grad()
    y.sum().backward()
    np.testing.assert_array_equal(x.grad.data, [1.0, 1.0])
    assert x.is_leaf and not y.is_leaf and y.grad_fn is not None


def test_leaves_fire_last_layer_first() -> None:
    # The engine runs the newest ready node first and leaves as soon as they are ready,
    # so parameters used late in forward get their gradient first (what DDP overlap needs).
    order = []
    w1 = Tensor(np.ones((3, 3)), requires_grad=True)
    w2 = Tensor(np.ones((3, 3)), requires_grad=True)
    w1.register_post_accumulate_grad_hook(lambda t: order.append("w1"))
    w2.register_post_accumulate_grad_hook(lambda t: order.append("w2"))
    x = np.ones((2, 3))
    ((x @ w1).relu() @ w2).sum().backward()
    assert order == ["w2", "w1"]


def test_no_grad_and_enable_grad() -> None:
    w = Tensor([1.0], requires_grad=True)
    with no_grad():
        assert not is_grad_enabled()
        y = w * 2.0
        with enable_grad():
            z = w * 2.0
    assert not y.requires_grad and y.is_leaf
    assert z.requires_grad
    assert is_grad_enabled()

    @no_grad()
    def f(t: Tensor) -> Tensor:
        return t * 3.0

    assert not f(w).requires_grad
    with set_grad_enabled(False):
        assert not (w + 1.0).requires_grad
    assert is_grad_enabled()


def test_no_grad_is_per_thread() -> None:
    w = Tensor([1.0], requires_grad=True)
    inside, other = threading.Event(), []

    def worker() -> None:
        inside.wait()
        other.append((w * 2.0).requires_grad)

    t = threading.Thread(target=worker)
    t.start()
    with no_grad():
        inside.set()
        t.join()
    assert other == [True]


def test_function_with_two_outputs() -> None:
    class SplitScale(Function):
        @staticmethod
        def forward(ctx, x: Tensor, k: float):
            ctx.k = k
            return x.data[:2] * k, x.data[2:] * 2 * k

        @staticmethod
        def backward(ctx, ga: Tensor, gb: Tensor):
            return np.concatenate([ga.data * ctx.k, gb.data * 2 * ctx.k]), None

    x = Tensor([1.0, 2.0, 3.0], requires_grad=True)
    a, b = SplitScale.apply(x, 3.0)
    np.testing.assert_array_equal(a.data, [3.0, 6.0])
    (a.sum() + b.sum() * 10.0).backward()
    np.testing.assert_array_equal(x.grad.data, [3.0, 3.0, 60.0])
    x.grad = None
    a, _unused = SplitScale.apply(x, 1.0)  # missing output grads are zeros
    a.sum().backward()
    np.testing.assert_array_equal(x.grad.data, [1.0, 1.0, 0.0])


def test_queue_callback_runs_after_all_leaves() -> None:
    events = []
    w = Tensor([1.0], requires_grad=True)
    v = Tensor([1.0], requires_grad=True)

    def hook(t: Tensor) -> None:
        events.append("hook")
        if len(events) == 1:
            queue_callback(lambda: events.append("done"))

    w.register_post_accumulate_grad_hook(hook)
    v.register_post_accumulate_grad_hook(hook)
    (w * v).sum().backward()
    assert events == ["hook", "hook", "done"]
    with pytest.raises(RuntimeError, match="during a backward pass"):
        queue_callback(lambda: None)


def test_backward_of_several_roots() -> None:
    w = Tensor([1.0, 2.0], requires_grad=True)
    backward([w * 2.0, w * 3.0], [np.ones(2), np.array([1.0, 2.0])])
    np.testing.assert_array_equal(w.grad.data, [5.0, 8.0])


def test_errors() -> None:
    w = Tensor([1.0, 2.0], requires_grad=True)
    with pytest.raises(RuntimeError, match="scalar outputs"):
        (w * 2.0).backward()
    with pytest.raises(RuntimeError, match="does not require grad"):
        Tensor([1.0]).backward()
    with pytest.raises(RuntimeError, match="shape"):
        w.grad = np.zeros(3)
    with pytest.raises(RuntimeError, match="in-place"):
        w.add_(1.0)
    with pytest.raises(RuntimeError, match="floating point"):
        Tensor([1, 2], requires_grad=True)
    with no_grad():
        w.add_(1.0)
        w[0] = 7.0
    np.testing.assert_array_equal(w.data, [7.0, 3.0])


def test_data_is_live_and_array_protocol() -> None:
    a = np.zeros(3)
    t = Tensor(a)
    a[0] = 5.0
    assert t.data is a and np.asarray(t)[0] == 5.0
    c = tensor(a)
    a[1] = 1.0
    assert c.data[1] == 0.0  # tensor() copies
    assert np.asarray(t, dtype=np.float32).dtype == np.float32
    assert t.detach().data is a and not t.detach().requires_grad


def test_float32_stays_float32() -> None:
    w = Tensor(np.ones(3, dtype=np.float32), requires_grad=True)
    y = (w * 2.5 + 1.0) / 3.0
    assert y.dtype == np.float32
    y.sum().backward()
    assert w.grad.dtype == np.float32


def test_grad_as_view_is_accumulated_in_place() -> None:
    buf = np.zeros(4)
    w = Tensor([1.0, 2.0], requires_grad=True)
    w.grad = Tensor(buf[1:3])
    (w * 2.0).sum().backward()
    np.testing.assert_array_equal(buf, [0.0, 2.0, 2.0, 0.0])


def test_numpy_reductions_dispatch_to_tensor_methods() -> None:
    w = Tensor(np.arange(6.0).reshape(2, 3), requires_grad=True)
    total = np.sum(w, axis=0)
    assert isinstance(total, Tensor) and total.requires_grad
    np.mean(w).backward()
    np.testing.assert_allclose(w.grad.data, np.full((2, 3), 1 / 6))
    assert np.sum(w, dtype=np.float32).dtype == np.float32


def test_function_returning_its_input_does_not_make_a_cycle() -> None:
    class Identity(Function):
        @staticmethod
        def forward(ctx, x):
            return x

        @staticmethod
        def backward(ctx, g):
            return g * 2.0

    x = Tensor([1.0, 2.0], requires_grad=True)
    y = Identity.apply(x)
    assert y is not x and x.is_leaf and y.data is x.data
    y.sum().backward()
    np.testing.assert_array_equal(x.grad.data, [2.0, 2.0])
