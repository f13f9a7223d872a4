"""LSTM and LSTMCell: values and every gradient against torch (float64, same weights) and
against finite differences; layers, directions, batch_first, given or zero initial state,
unbatched input; dropout between layers from mpdist's generator; parameter names and
initialisation as torch's; torch's error texts; and torch's ``test_rnn`` scenario (DDP over
an LSTM model) on two real ranks."""

from __future__ import annotations

import math
import warnings

import numpy as np
import pytest
from _gradcheck import check_gradients

import mpdist
import mpdist.distributed as dist
from mpdist import nn
from mpdist.autograd import Tensor, cat
from mpdist.nn import functional as F
from mpdist.optim import SGD
from mpdist.parallel import DistributedDataParallel as DDP

TOL = dict(rtol=1e-6, atol=1e-6)


def _torch_copy(m: nn.Module, cls: str, *args, **kwargs):
    """The torch module of class ``cls`` with ``m``'s configuration and weights (float64)."""
    torch = pytest.importorskip("torch")
    t = getattr(torch.nn, cls)(*args, dtype=torch.float64, **kwargs)
    t.load_state_dict({k: torch.tensor(np.asarray(v)) for k, v in m.state_dict().items()})
    return t


def _graph_nodes(root: Tensor) -> list:
    seen, stack = [], [root.grad_fn]
    while stack:
        node = stack.pop()
        if node is None or any(node is s for s in seen):
            continue
        seen.append(node)
        stack.extend(t.grad_fn for t in node.inputs)
    return seen


@pytest.mark.parametrize("num_layers", [1, 3])
@pytest.mark.parametrize("bidirectional", [False, True])
@pytest.mark.parametrize("batch_first", [False, True])
@pytest.mark.parametrize("bias", [True, False])
@pytest.mark.parametrize("state", ["given", "zeros"])
def test_lstm_matches_torch(num_layers, bidirectional, batch_first, bias, state) -> None:
    torch = pytest.importorskip("torch")
    kwargs = dict(
        num_layers=num_layers, bias=bias, batch_first=batch_first, bidirectional=bidirectional
    )
    m = nn.LSTM(3, 4, dtype=np.float64, **kwargs)
    t = _torch_copy(m, "LSTM", 3, 4, **kwargs)
    rng = np.random.default_rng(0)
    x = rng.standard_normal((2, 5, 3) if batch_first else (5, 2, 3))
    hc = [rng.standard_normal((num_layers * (1 + bidirectional), 2, 4)) for _ in range(2)]
    xm, xt = Tensor(x.copy(), requires_grad=True), torch.tensor(x, requires_grad=True)
    hm = [Tensor(a.copy(), requires_grad=True) for a in hc]
    ht = [torch.tensor(a, requires_grad=True) for a in hc]
    out, (hn, cn) = m(xm, tuple(hm) if state == "given" else None)
    ref, (thn, tcn) = t(xt, tuple(ht) if state == "given" else None)
    weights = [rng.standard_normal(a.shape) for a in (out, hn, cn)]
    for ours, theirs in zip((out, hn, cn), (ref, thn, tcn), strict=True):
        assert ours.shape == tuple(theirs.shape)
        np.testing.assert_allclose(ours.data, theirs.detach().numpy(), **TOL)
    sum((o * w).sum() for o, w in zip((out, hn, cn), weights, strict=True)).backward()
    sum(
        (o * torch.tensor(w)).sum() for o, w in zip((ref, thn, tcn), weights, strict=True)
    ).backward()
    np.testing.assert_allclose(xm.grad.data, xt.grad.numpy(), **TOL)
    if state == "given":
        for a, b in zip(hm, ht, strict=True):
            np.testing.assert_allclose(a.grad.data, b.grad.numpy(), **TOL)
    grads = dict(t.named_parameters())
    for name, p in m.named_parameters():
        np.testing.assert_allclose(p.grad.data, grads[name].grad.numpy(), **TOL, err_msg=name)


@pytest.mark.parametrize("state", ["given", "zeros"])
def test_lstm_unbatched_matches_torch(state) -> None:
    torch = pytest.importorskip("torch")
    m = nn.LSTM(3, 4, num_layers=2, bidirectional=True, dtype=np.float64)
    t = _torch_copy(m, "LSTM", 3, 4, num_layers=2, bidirectional=True)
    rng = np.random.default_rng(1)
    x, h, c = rng.standard_normal((6, 3)), rng.standard_normal((4, 4)), rng.standard_normal((4, 4))
    hx = (h, c) if state == "given" else None
    out, (hn, cn) = m(x, hx)
    ref, (thn, tcn) = t(torch.tensor(x), None if hx is None else tuple(map(torch.tensor, hx)))
    assert out.shape == (6, 8) and hn.shape == cn.shape == (4, 4)
    for ours, theirs in zip((out, hn, cn), (ref, thn, tcn), strict=True):
        np.testing.assert_allclose(ours.data, theirs.detach().numpy(), **TOL)
    # the same as a batch of one
    batched, _ = m(x[:, None], None if hx is None else (h[:, None], c[:, None]))
    np.testing.assert_allclose(out.data, batched.data[:, 0], rtol=1e-12)


@pytest.mark.parametrize("batched", [True, False])
@pytest.mark.parametrize("bias", [True, False])
@pytest.mark.parametrize("state", ["given", "zeros"])
def test_lstm_cell_matches_torch(batched, bias, state) -> None:
    torch = pytest.importorskip("torch")
    m = nn.LSTMCell(3, 4, bias=bias, dtype=np.float64)
    t = _torch_copy(m, "LSTMCell", 3, 4, bias=bias)
    rng = np.random.default_rng(2)
    lead = (2,) if batched else ()
    x, h, c = (rng.standard_normal(lead + (n,)) for n in (3, 4, 4))
    xm, xt = Tensor(x.copy(), requires_grad=True), torch.tensor(x, requires_grad=True)
    hm = [Tensor(a.copy(), requires_grad=True) for a in (h, c)]
    ht = [torch.tensor(a, requires_grad=True) for a in (h, c)]
    h1, c1 = m(xm, tuple(hm) if state == "given" else None)
    th1, tc1 = t(xt, tuple(ht) if state == "given" else None)
    np.testing.assert_allclose(h1.data, th1.detach().numpy(), **TOL)
    np.testing.assert_allclose(c1.data, tc1.detach().numpy(), **TOL)
    (h1.sum() + 2 * c1.sum()).backward()
    (th1.sum() + 2 * tc1.sum()).backward()
    np.testing.assert_allclose(xm.grad.data, xt.grad.numpy(), **TOL)
    if state == "given":
        for a, b in zip(hm, ht, strict=True):
            np.testing.assert_allclose(a.grad.data, b.grad.numpy(), **TOL)
    grads = dict(t.named_parameters())
    for name, p in m.named_parameters():
        np.testing.assert_allclose(p.grad.data, grads[name].grad.numpy(), **TOL, err_msg=name)


def _flat_outputs(m: nn.LSTM):
    def run(x: Tensor, h: Tensor, c: Tensor) -> Tensor:
        out, (hn, cn) = m(x, (h, c))
        return cat([out.reshape(-1), hn.reshape(-1), cn.reshape(-1)])

    return run


@pytest.mark.parametrize(
    "kwargs",
    [
        dict(num_layers=2, bidirectional=True, batch_first=True),
        dict(num_layers=1, bias=False),
    ],
)
def test_lstm_gradients_against_finite_differences(kwargs) -> None:
    m = nn.LSTM(2, 3, dtype=np.float64, **kwargs)
    rng = np.random.default_rng(3)
    states = m.num_layers * (1 + m.bidirectional)
    x = rng.standard_normal((2, 3, 2) if m.batch_first else (3, 2, 2))  # batch 2, 3 steps
    h, c = rng.standard_normal((states, 2, 3)), rng.standard_normal((states, 2, 3))
    check_gradients(_flat_outputs(m), [x, h, c], list(m.parameters()))


def test_lstm_cell_gradients_against_finite_differences() -> None:
    m = nn.LSTMCell(2, 3, dtype=np.float64)
    rng = np.random.default_rng(4)
    arrays = [rng.standard_normal((2, n)) for n in (2, 3, 3)]

    def run(x: Tensor, h: Tensor, c: Tensor) -> Tensor:
        h1, c1 = m(x, (h, c))
        return cat([h1, 3 * c1], axis=1)

    check_gradients(run, arrays, list(m.parameters()))


def test_one_graph_node_per_layer_and_direction() -> None:
    m = nn.LSTM(3, 4, num_layers=3, bidirectional=True)
    out, _ = m(Tensor(np.ones((50, 2, 3), np.float32), requires_grad=True))
    names = [n.name for n in _graph_nodes(out)]
    assert names.count("_LSTMLayer") == 6  # not one per step, nor per gate
    assert len(names) < 12


def test_dropout_between_layers_uses_mpdist_generator() -> None:
    p = 0.4
    m = nn.LSTM(3, 4, num_layers=2, dropout=p, dtype=np.float64)
    x = np.random.default_rng(5).standard_normal((6, 2, 3))
    # the same computation by hand: layer 0, the mask drawn from the seeded generator, layer 1
    first = nn.LSTM(3, 4, dtype=np.float64)
    second = nn.LSTM(4, 4, dtype=np.float64)
    for k, layer in ((0, first), (1, second)):
        for name in ("weight_ih", "weight_hh", "bias_ih", "bias_hh"):
            getattr(layer, f"{name}_l0").data[...] = getattr(m, f"{name}_l{k}").data
    mpdist.manual_seed(7)
    out, _ = m(x)
    mpdist.manual_seed(7)
    mid, _ = first(x)
    keep = mpdist.random.default_generator().random(mid.shape) >= p
    ref, _ = second(mid.data * keep / (1 - p))
    np.testing.assert_allclose(out.data, ref.data, rtol=1e-12)
    assert not np.allclose(out.data, m.eval()(x)[0].data)  # eval: no dropout
    np.testing.assert_array_equal(m(x)[0].data, m(x)[0].data)  # eval is deterministic
    # p = 1 drops everything: the last layer sees zeros whatever the input (and no NaN)
    everything = nn.LSTM(3, 4, num_layers=2, dropout=1.0)
    a, b = everything(x)[0].data, everything(2 * x + 1)[0].data
    assert np.isfinite(a).all()
    np.testing.assert_array_equal(a, b)


def test_parameters_init_and_repr_as_torch() -> None:
    torch = pytest.importorskip("torch")
    for kwargs in (
        dict(num_layers=2, bidirectional=True),
        dict(num_layers=3, bias=False, batch_first=True, dropout=0.1, bidirectional=True),
        dict(),
    ):
        m, t = nn.LSTM(3, 5, **kwargs), torch.nn.LSTM(3, 5, **kwargs)
        assert [(k, v.shape) for k, v in m.state_dict().items()] == [
            (k, tuple(v.shape)) for k, v in t.state_dict().items()
        ]
        assert repr(m) == repr(t)
        assert [[p.shape for p in ps] for ps in m.all_weights] == [
            [tuple(p.shape) for p in ps] for ps in t.all_weights
        ]
    cell, tcell = nn.LSTMCell(3, 5), torch.nn.LSTMCell(3, 5)
    assert list(cell.state_dict()) == list(tcell.state_dict())
    assert repr(cell) == repr(tcell)


def test_initialisation_draws_from_mpdist_generator() -> None:
    mpdist.manual_seed(11)
    m = nn.LSTM(3, 4, num_layers=2)
    assert m.weight_ih_l0.dtype == np.float32
    rng = np.random.default_rng(11)
    bound = 1 / math.sqrt(4)
    for name, p in m.named_parameters():  # torch's order: ih, hh, bias ih, bias hh per layer
        np.testing.assert_allclose(
            p.data, rng.uniform(-bound, bound, p.shape), rtol=1e-6, err_msg=name
        )
    m.flatten_parameters()  # accepted, changes nothing


@pytest.mark.parametrize(
    "make, match",
    [
        (lambda: nn.LSTM(3, 0), "hidden_size must be greater than zero"),
        (lambda: nn.LSTM(3, 4, 0), "num_layers must be greater than zero"),
        (lambda: nn.LSTM(3, 4, 2, dropout=1.5), "dropout should be a number in range"),
        (lambda: nn.LSTM(3, 4, proj_size=-1), "proj_size should be a positive integer or zero"),
        (lambda: nn.LSTM(3, 4, proj_size=4), "proj_size has to be smaller than hidden_size"),
        (lambda: nn.LSTM(3, 4, device="cuda"), "CPU"),
        (lambda: nn.LSTMCell(3, 4, device="cuda:1"), "CPU"),
    ],
)
def test_constructor_errors(make, match) -> None:
    with pytest.raises(ValueError, match=match):
        make()


def test_projections_are_refused_and_lone_dropout_warns() -> None:
    with pytest.raises(NotImplementedError, match="proj_size"):
        nn.LSTM(3, 4, proj_size=2)
    with pytest.warns(UserWarning, match="non-zero dropout expects num_layers greater than 1"):
        nn.LSTM(3, 4, 1, dropout=0.5)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        nn.LSTM(3, 4, 2, dropout=0.5)


LSTM_2x2 = nn.LSTM(3, 4, 2, bidirectional=True)
CELL = nn.LSTMCell(3, 4)


@pytest.mark.parametrize(
    "call, exc, match",
    [
        (
            lambda: LSTM_2x2(np.ones((5, 2, 2))),
            RuntimeError,
            "input.size\\(-1\\) must be equal to input_size. Expected 3, got 2",
        ),
        (
            lambda: LSTM_2x2(np.ones((5, 2, 3, 1))),
            ValueError,
            "LSTM: Expected input to be 2D or 3D, got 4D instead",
        ),
        (
            lambda: LSTM_2x2(np.ones((5, 2, 3)), (np.zeros((4, 2, 4)), np.zeros((4, 2, 5)))),
            RuntimeError,
            "Expected hidden\\[1\\] size \\(4, 2, 4\\), got \\[4, 2, 5\\]",
        ),
        (
            lambda: LSTM_2x2(np.ones((5, 2, 3)), (np.zeros((3, 2, 4)), np.zeros((4, 2, 4)))),
            RuntimeError,
            "Expected hidden\\[0\\] size \\(4, 2, 4\\), got \\[3, 2, 4\\]",
        ),
        (
            lambda: LSTM_2x2(np.ones((5, 3)), (np.zeros((4, 2, 4)), np.zeros((4, 2, 4)))),
            RuntimeError,
            "For unbatched 2-D input, hx and cx should also be 2-D but got \\(3-D, 3-D\\) tensors",
        ),
        (
            lambda: LSTM_2x2(np.ones((5, 2, 3)), (np.zeros((4, 4)), np.zeros((4, 4)))),
            RuntimeError,
            "For batched 3-D input, hx and cx should also be 3-D but got \\(2-D, 2-D\\) tensors",
        ),
        (
            lambda: LSTM_2x2(np.ones((0, 2, 3))),
            RuntimeError,
            "Expected sequence length to be larger than 0",
        ),
        (
            lambda: CELL(np.ones((2, 5))),
            RuntimeError,
            "input has inconsistent input_size: got 5 expected 3",
        ),
        (
            lambda: CELL(np.ones((2, 3)), (np.zeros((3, 4)), np.zeros((2, 4)))),
            RuntimeError,
            "Input batch size 2 doesn't match hidden0 batch size 3",
        ),
        (
            lambda: CELL(np.ones((2, 3, 1))),
            ValueError,
            "LSTMCell: Expected input to be 1D or 2D, got 3D instead",
        ),
        (
            lambda: CELL(np.ones(3), (np.zeros((1, 4)), np.zeros((1, 4)))),
            RuntimeError,
            r"LSTMCell: Expected hx\[0\] to be 1D like the input, got 2D instead",
        ),
        (
            lambda: CELL(np.ones((2, 3)), (np.zeros((2, 5)), np.zeros((2, 4)))),
            RuntimeError,
            "hidden0 has inconsistent hidden_size: got 5, expected 4",
        ),
    ],
)
def test_call_errors_as_torch(call, exc, match) -> None:
    with pytest.raises(exc, match=match):
        call()


# ---------------------------------------------------------------- torch's test_rnn scenario
# An LSTM (several layers, batch_first) followed by a Linear head and an MSE loss, wrapped in
# DDP; each rank trains on its share of a batch. DDP's averaged gradients must equal the
# gradients of one process on the whole batch, and the replicas stay identical after a step.
BATCH, SEQ, N_IN, HIDDEN, N_OUT, LAYERS = 4, 6, 5, 7, 3, 3


class _SequenceRegressor(nn.Module):
    def __init__(self, seed: int) -> None:
        super().__init__()
        mpdist.manual_seed(seed)
        self.lstm = nn.LSTM(N_IN, HIDDEN, LAYERS, batch_first=True, dtype=np.float64)
        self.h2o = nn.Linear(HIDDEN, N_OUT, dtype=np.float64)

    def forward(self, x, y):
        self.lstm.flatten_parameters()
        h, _ = self.lstm(x)
        return F.mse_loss(self.h2o(h), y)


def _sequences() -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(21)
    return rng.standard_normal((BATCH, SEQ, N_IN)), rng.random((BATCH, SEQ, N_OUT))


@pytest.mark.mpdist(world_size=2)
def test_ddp_over_lstm_equals_one_process_on_the_whole_batch(rank, world_size) -> None:
    x, y = _sequences()
    share = slice(rank * BATCH // world_size, (rank + 1) * BATCH // world_size)
    ddp = DDP(_SequenceRegressor(seed=rank))  # rank 0's weights are broadcast
    ddp(x[share], y[share]).backward()
    ref = _SequenceRegressor(seed=0)
    ref(x, y).backward()
    for (name, p), q in zip(ddp.module.named_parameters(), ref.parameters(), strict=True):
        np.testing.assert_allclose(p.grad.data, q.grad.data, rtol=1e-9, atol=1e-12, err_msg=name)
    SGD(ddp.parameters(), lr=0.1).step()
    flat = np.concatenate([p.data.ravel() for p in ddp.parameters()])
    copies = [np.empty_like(flat) for _ in range(world_size)]
    dist.all_gather(copies, flat)
    np.testing.assert_array_equal(copies[0], copies[1])
