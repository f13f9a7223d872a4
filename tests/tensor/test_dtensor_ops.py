"""DTensor's sharding rules on rank threads: each op on DTensors equals the op on whole
tensors in one process (values and gradients), placements come out as the rules say, and
anything without a rule is a NotImplementedError naming the op and the placements."""

from __future__ import annotations

import itertools

import numpy as np
import pytest
from dtensor_helpers import arr, check_sharded, leaf, mesh

from mpdist import autograd, nn
from mpdist.autograd import Tensor
from mpdist.nn import functional as F
from mpdist.optim import SGD
from mpdist.tensor import (
    DTensor,
    Partial,
    Replicate,
    Shard,
    distribute_module,
    distribute_tensor,
)
from mpdist.tensor.debug import CommDebugMode
from mpdist.testing import spawn_threads

R, S0, S1, P = Replicate(), Shard(0), Shard(1), Partial()
ONE_D = [R, S0, S1]


def _run(body, world_size: int) -> None:
    assert all(spawn_threads(body, world_size))


@pytest.mark.parametrize("world_size", [2, 3, 4])
def test_elementwise(world_size) -> None:
    a, b, v = arr(0, 5, 6), arr(1, 5, 6), arr(2, 6)
    pairs = list(itertools.product(ONE_D, ONE_D))

    def body(rank, ws):
        m = mesh(ws)
        for pa, pb in pairs:
            check_sharded(lambda x, y: x + y * 2 - x * y, [a, b], m, [[pa], [pb]])
            check_sharded(lambda x, y: x / (y * y + 1) - 1 / (x * x + 2), [a, b], m, [[pa], [pb]])
        for pa, pb in itertools.product(ONE_D, [R, S0]):  # a row broadcast against a matrix
            out = check_sharded(lambda x, y: x - y, [a, v], m, [[pa], [pb]])
            assert out.placements == ((pa,) if pa != R else (Shard(1),) if pb == S0 else (R,))
        for p in ONE_D:
            check_sharded(lambda x: (2 * x - 1) / 3 + x**2 - 2**x, [a], m, [[p]])
            check_sharded(
                lambda x: x.exp().tanh() + x.relu().sigmoid() + x.sin() * x.cos() + x.abs().sqrt(),
                [a],
                m,
                [[p]],
            )
            check_sharded(lambda x: F.gelu(x) + F.gelu(x, approximate="tanh"), [a], m, [[p]])
            assert check_sharded(lambda x: -x.clone(), [a], m, [[p]]).placements == (p,)
        return True

    _run(body, world_size)


@pytest.mark.parametrize("world_size", [2, 4])
def test_partial_values_in_elementwise_ops(world_size) -> None:
    """Partials (a contraction's output) stay Partial through linear ops and are reduced
    (once) before anything non-linear."""
    a, w, r = arr(3, 5, 6), arr(4, 6, 7), arr(5, 5, 7)

    def body(rank, ws):
        m = mesh(ws)
        out = check_sharded(lambda x, y: (x @ y) * 3 - (x @ y) / 2, [a, w], m, [[S1], [S0]])
        assert out.placements == (P,)
        for pr in ONE_D:
            check_sharded(lambda x, y, z: (x @ y) * z, [a, w, r], m, [[S1], [S0], [pr]])
            check_sharded(lambda x, y, z: z / ((x @ y) ** 2 + 1), [a, w, r], m, [[S1], [S0], [pr]])
        check_sharded(lambda x, y: (x @ y).relu() + (x @ y).exp(), [a, w], m, [[S1], [S0]])
        x = distribute_tensor(a, m, [S1]) @ distribute_tensor(w, m, [S0])
        assert (x * 2).placements == (P,) and (x + 1).placements == (R,)
        assert (x.relu()).placements == (R,) and (x + x).placements == (P,)
        assert (x + distribute_tensor(r, m, [R])).placements == (P,)
        check_sharded(lambda x: x + 1, [a], m, [[P]])
        return True

    _run(body, world_size)


@pytest.mark.parametrize("world_size", [2, 3])
def test_matmul_and_linear_rules(world_size) -> None:
    x, w, b = arr(6, 5, 6), arr(7, 7, 6), arr(8, 7)

    def body(rank, ws):
        m = mesh(ws)
        expect = {  # (x, w^T) -> output
            (S0, R): S0,
            (R, S1): S1,
            (S1, S0): P,
            (R, R): R,
            (S1, R): P,
            (R, S0): P,
        }
        for (px, pw), po in expect.items():
            out = check_sharded(lambda u, v: u @ v, [x, w.T.copy()], m, [[px], [pw]])
            assert out.placements == (po,)
            # torch-level autograd.matmul takes the same rule (not the pieces' product)
            out = check_sharded(autograd.matmul, [x, w.T.copy()], m, [[px], [pw]])
            assert out.placements == (po,)
        linear = {  # (x, weight, bias) -> output: column-wise, row-wise, data parallel
            (R, S0, S0): S1,
            (R, S0, R): S1,
            (S1, S1, R): P,
            (S0, R, R): S0,
            (R, R, R): R,
        }
        for (px, pw, pb), po in linear.items():
            out = check_sharded(F.linear, [x, w, b], m, [[px], [pw], [pb]])
            assert out.placements == (po,)
            check_sharded(F.linear, [x, w], m, [[px], [pw]])
        return True

    _run(body, world_size)


@pytest.mark.parametrize("world_size", [2, 3, 4])
def test_reductions_views_and_softmax(world_size) -> None:
    a = arr(9, 5, 6)
    t = arr(10, 7, 3, 4)

    def body(rank, ws):
        m = mesh(ws)
        for p in ONE_D:
            assert check_sharded(lambda x: x.sum(), [a], m, [[p]]).placements == (
                (P,) if p != R else (R,)
            )
            check_sharded(lambda x: x.sum(0) + x.mean(dim=0), [a], m, [[p]])
            check_sharded(lambda x: x.sum(dim=1, keepdim=True) * x.mean(1, True), [a], m, [[p]])
            check_sharded(lambda x: x.mean(), [a], m, [[p]])
            for dim in (0, 1, -1):
                check_sharded(lambda x, d=dim: F.softmax(x, d), [a], m, [[p]])
                check_sharded(lambda x, d=dim: F.log_softmax(x, d), [a], m, [[p]])
            check_sharded(lambda x: x.T * 2 + x.transpose(1, 0), [a], m, [[p]])
            check_sharded(lambda x: x.unsqueeze(0).squeeze(0).unsqueeze(-1), [a], m, [[p]])
            check_sharded(lambda x: F.mse_loss(x, x * x), [a], m, [[p]])
        with pytest.raises(NotImplementedError, match="dim 2 would be split"):
            distribute_tensor(t, m, [Shard(2)]).reshape(7, 3, 2, 2)
        for p in [R, S0, Shard(1)]:
            # Unsharded dims reshape freely: (7, 3, 4) -> (7, 12) keeps Shard(0) only.
            if p in (R, S0):
                out = check_sharded(lambda x: x.reshape(7, 12).view(7, 2, 6), [t], m, [[p]])
                assert out.placements == (p,)
            out = check_sharded(lambda x: x.reshape(7, 3, 2, 2).flatten(2), [t], m, [[p]])
            assert out.placements == (p,)
        return True

    _run(body, world_size)


def test_even_shards_merge_into_a_flattened_dim() -> None:
    def body(rank, ws):
        m = mesh(ws)
        out = check_sharded(lambda x: x.flatten(), [arr(11, 4, 3)], m, [[S0]])
        assert out.placements == (S0,)
        with pytest.raises(NotImplementedError, match="split or merged unevenly"):
            distribute_tensor(arr(11, 5, 3), m, [S0]).flatten()
        with pytest.raises(NotImplementedError, match="split or merged unevenly"):
            distribute_tensor(arr(11, 4, 6), m, [S1]).reshape(4, 2, 3)
        return True

    _run(body, 2)


def test_ops_without_a_rule_name_the_op_and_placements() -> None:
    def body(rank, ws):
        m = mesh(ws)
        x = distribute_tensor(arr(12, 4, 6), m, [S0])
        y = distribute_tensor(arr(13, 6, 4), m, [S1])
        with pytest.raises(NotImplementedError, match=r"matmul with placements S\(0\) and S\(1\)"):
            x @ y
        with pytest.raises(
            NotImplementedError, match=r"_NLLLoss \(placements: \(Shard\(dim=0\),\)"
        ):
            F.nll_loss(x, Tensor(np.zeros(4, dtype=np.int64)))
        with pytest.raises(NotImplementedError, match="__lt__"):
            x < 0  # noqa: B015
        with pytest.raises(RuntimeError, match="got mixed Tensor and DTensor"):
            F.linear(Tensor(arr(1, 2, 6)), distribute_tensor(arr(2, 3, 6), m, [S0]))
        with pytest.raises(TypeError, match="numpy.add on a DTensor"):
            np.add(np.ones((4, 6)), x)
        with pytest.raises(RuntimeError, match="in-place operands must be placed alike"):
            x.add_(distribute_tensor(arr(12, 4, 6), m, [R]))
        # torch-level functions that would compute on this rank's piece as if it were whole
        with pytest.raises(NotImplementedError, match=r"cat \(placements: \(Shard\(dim=0\),\)"):
            autograd.cat([x, x])
        with pytest.raises(NotImplementedError, match="no sharding rule for stack"):
            autograd.stack([x, Tensor(arr(1, 4, 6))], dim=1)
        with pytest.raises(NotImplementedError, match="no sharding rule for where"):
            autograd.where(Tensor(np.ones((4, 6), bool)), x, 0.0)
        return True

    _run(body, 2)


def _mlp(dtype=np.float64) -> nn.Module:
    from mpdist.autograd import manual_seed

    manual_seed(0)
    return nn.Sequential(nn.Linear(6, 8, dtype=dtype), nn.ReLU(), nn.Linear(8, 5, dtype=dtype))


def _tp_partition(name, module, m) -> None:
    """Column-wise first layer, row-wise second (Megatron's pair)."""
    if name == "0":
        module.weight = nn.Parameter(distribute_tensor(module.weight.detach(), m, [S0]))
        module.bias = nn.Parameter(distribute_tensor(module.bias.detach(), m, [S0]))
    if name == "2":
        module.weight = nn.Parameter(distribute_tensor(module.weight.detach(), m, [S1]))
        module.bias = nn.Parameter(distribute_tensor(module.bias.detach(), m, [R]))


@pytest.mark.parametrize("world_size", [2, 3])
def test_column_then_row_sharded_mlp_trains_as_the_unsharded_one(world_size) -> None:
    """Outputs, losses, gradients and parameters after SGD steps equal the unsharded MLP;
    one all-reduce forward (the row-wise output) and one backward (the input's gradient)."""
    data = [arr(20 + i, 4, 6) for i in range(3)]
    ref = _mlp()
    opt = SGD(ref.parameters(), lr=0.1)
    ref_steps = []
    for xa in data:
        x = leaf(xa)
        out = ref(x)
        loss = (out * out).mean()
        opt.zero_grad()
        loss.backward()
        ref_steps.append((out.data.copy(), loss.item(), x.grad.data.copy()))
        opt.step()

    def body(rank, ws):
        m = mesh(ws)
        model = distribute_module(
            _mlp(),
            m,
            _tp_partition,
            input_fn=lambda mod, inputs, dm: tuple(DTensor.from_local(t, dm, [R]) for t in inputs),
            output_fn=lambda mod, out, dm: out.redistribute(dm, [R]).to_local(),
        )
        assert isinstance(model[0].weight, DTensor) and isinstance(model[0].weight, nn.Parameter)
        assert model[0].weight.placements == (S0,) and model[2].weight.placements == (S1,)
        opt = SGD(model.parameters(), lr=0.1)
        for xa, (out_ref, loss_ref, gx_ref) in zip(data, ref_steps, strict=True):
            x = leaf(xa)
            with CommDebugMode() as fwd:
                out = model(x)
            np.testing.assert_allclose(out.data, out_ref, rtol=1e-10)
            loss = (out * out).mean()
            assert abs(loss.item() - loss_ref) < 1e-12
            opt.zero_grad()
            with CommDebugMode() as bwd:
                loss.backward()
            np.testing.assert_allclose(x.grad.data, gx_ref, rtol=1e-10)
            assert fwd.get_total_counts() == 1 and bwd.get_total_counts() == 1
            opt.step()
        return [
            p.full_tensor().data if isinstance(p, DTensor) else p.data for p in model.parameters()
        ]

    for params in spawn_threads(body, world_size):
        for p, q in zip(params, ref.parameters(), strict=True):
            np.testing.assert_allclose(p, q.data, rtol=1e-10)


def test_sharded_mlp_matches_torch_and_finite_differences() -> None:
    torch = pytest.importorskip("torch")
    xa = arr(30, 3, 6)
    ref = _mlp()
    tm = torch.nn.Sequential(torch.nn.Linear(6, 8), torch.nn.ReLU(), torch.nn.Linear(8, 5)).double()
    with torch.no_grad():
        for tp, p in zip(tm.parameters(), ref.parameters(), strict=True):
            tp.copy_(torch.from_numpy(p.data))
    tx = torch.tensor(xa, requires_grad=True)
    tm(tx).pow(2).sum().backward()

    def body(rank, ws):
        m = mesh(ws)
        model = distribute_module(_mlp(), m, _tp_partition)
        x = DTensor.from_local(leaf(xa), m, [R])

        def loss_of() -> float:
            out = model(x).redistribute(m, [R]).to_local()
            return (out * out).sum()

        loss_of().backward()
        grads = [p.grad.full_tensor().data for p in model.parameters()]
        # Finite differences on the first element of each parameter: a shard's is on rank 0
        # alone (the others must not move theirs), a replicated one is moved on every rank.
        fd = []
        for p, g in zip(model.parameters(), grads, strict=True):
            moves = rank == 0 or p.placements == (R,)
            old = p.data.flat[0]
            losses = []
            for step in (1e-6, -1e-6):
                if moves:
                    p.data.flat[0] = old + step
                losses.append(loss_of().item())
            p.data.flat[0] = old
            fd.append(((losses[0] - losses[1]) / 2e-6, g.flat[0]))
        return grads, fd

    for grads, fd in spawn_threads(body, 2):
        for g, tp in zip(grads, tm.parameters(), strict=True):
            np.testing.assert_allclose(g, tp.grad.numpy(), rtol=1e-6, atol=1e-9)
        for numeric, analytic in fd:
            assert numeric == pytest.approx(analytic, rel=1e-5, abs=1e-7)


def test_a_2d_mesh_data_parallel_by_tensor_parallel() -> None:
    """Batch sharded on mesh dim 0, weights column- then row-sharded on mesh dim 1."""
    x, w1, w2 = arr(40, 6, 5), arr(41, 8, 5), arr(42, 3, 8)

    def f(x, a, b):
        return F.linear(F.relu(F.linear(x, a)), b)

    def body(rank, ws):
        m = mesh(2, 2)
        out = check_sharded(f, [x, w1, w2], m, [[S0, R], [R, S0], [R, S1]])
        assert out.placements == (S0, P)
        check_sharded(lambda u, v: (u @ v).sum(), [x, w1.T.copy()], m, [[S0, S1], [R, S0]])
        return True

    _run(body, 4)


def test_distribute_module_defaults_and_hooks() -> None:
    def body(rank, ws):
        m = mesh(ws)
        model = distribute_module(_mlp(), m)  # everything replicated
        assert all(isinstance(p, DTensor) and p.placements == (R,) for p in model.parameters())
        with pytest.raises(RuntimeError, match="should only be called once"):
            distribute_module(model, m)
        with pytest.raises(ValueError, match="input_fn should take in 3 arguments"):
            distribute_module(_mlp(), m, input_fn=lambda a: a)
        out = model(DTensor.from_local(Tensor(arr(1, 2, 6)), m, [R]))
        np.testing.assert_allclose(out.to_local().data, _mlp()(Tensor(arr(1, 2, 6))).data)
        return True

    _run(body, 2)
