"""The fake backend as torch's test_fake_pg.py uses it: every collective gives what torch's
FakeProcessGroup gives on the same inputs (checked against torch where installed), and data
parallelism runs over a fake group in one process: DDP, replicate and SyncBatchNorm train
(torch's own DDP fails in backward over its fake group), error_on_collective stops them with
torch's text."""

from __future__ import annotations

import warnings
from collections.abc import Callable, Iterator
from types import SimpleNamespace
from typing import Any

import numpy as np
import pytest

import mpdist as dist
from mpdist import nn
from mpdist.autograd import Tensor
from mpdist.nn import functional as F
from mpdist.parallel import DistributedDataParallel as DDP
from mpdist.parallel import replicate
from mpdist.testing import FakeProcessGroup, FakeStore

ERROR_TEXT = "FakeProcessGroup collective operation error (error_on_collective=true)"
RANK, WORLD = 1, 3


@pytest.fixture
def fake() -> Iterator[None]:
    """mpdist's default group: rank 1 of a fake world of 3."""
    dist.init_process_group("fake", rank=RANK, world_size=WORLD, store=FakeStore())
    yield
    dist.destroy_process_group()


def _collectives(d: Any, arr: Callable[..., Any], full: Callable[..., Any]) -> dict[str, Any]:
    """Run each collective once through the module API ``d`` (mpdist or torch.distributed) on
    arrays made by ``arr(rows, cols)`` (values 1, 2, ...) and ``full(shape, v)``; return every
    output as nested lists."""

    def lists(x: Any) -> Any:
        return [lists(t) for t in x] if isinstance(x, list) else np.asarray(x).tolist()

    out: dict[str, Any] = {}
    t = arr(2, 2)
    d.all_reduce(t)
    out["all_reduce"] = t
    t = arr(2, 2)
    d.broadcast(t, src=0)
    out["broadcast"] = t
    t = arr(2, 2)
    d.reduce(t, dst=0)
    out["reduce"] = t
    outs = [full((2, 2), -1.0) for _ in range(WORLD)]
    d.all_gather(outs, arr(2, 2))
    out["all_gather"] = outs
    o = full((2 * WORLD, 2), -1.0)
    d.all_gather_into_tensor(o, arr(2, 2))
    out["all_gather_into_tensor"] = o
    o = full((2, 2), -1.0)
    d.reduce_scatter(o, [arr(2, 2) * 10**k for k in range(WORLD)])
    out["reduce_scatter"] = o
    o = full((2, 2), -1.0)
    d.reduce_scatter_tensor(o, arr(2 * WORLD, 2))
    out["reduce_scatter_tensor"] = o
    outs = [full((2, 2), -1.0) for _ in range(WORLD)]
    d.all_to_all(outs, [arr(2, 2) * 10**k for k in range(WORLD)])
    out["all_to_all"] = outs
    o = full((WORLD, 2), -1.0)
    d.all_to_all_single(o, arr(WORLD, 2))
    out["all_to_all_single"] = o
    o = full((2, 2), -1.0)
    d.scatter(o, None, src=0)
    out["scatter_not_root"] = o
    o = full((2, 2), -1.0)
    d.scatter(o, [arr(2, 2) * 10**k for k in range(WORLD)], src=RANK)
    out["scatter_root"] = o
    outs = [full((2, 2), -1.0) for _ in range(WORLD)]
    d.gather(arr(2, 2), outs, dst=RANK)
    out["gather_root"] = outs
    t = arr(2, 2)
    out["recv_source"] = d.recv(t, src=0)
    out["recv"] = t
    objs: list[Any] = [None] * WORLD
    d.all_gather_object(objs, {"rank": d.get_rank()})
    out["all_gather_object"] = objs
    sub = d.new_group([0, 1])
    out["subgroup"] = (d.get_rank(sub), d.get_world_size(sub))
    out["not_a_member"] = d.new_group([0, 2])
    return {
        k: v if k in ("all_gather_object", "subgroup", "not_a_member", "recv_source") else lists(v)
        for k, v in out.items()
    }


def _mpdist_results() -> dict[str, Any]:
    def arr(rows: int, cols: int) -> np.ndarray:
        return np.arange(1.0, 1 + rows * cols).reshape(rows, cols)

    dist.init_process_group("fake", rank=RANK, world_size=WORLD, store=FakeStore())
    try:
        return _collectives(dist, arr, lambda shape, v: np.full(shape, v))
    finally:
        dist.destroy_process_group()


def test_collectives_give_the_fake_values() -> None:
    """Reductions and broadcasts leave the data alone; the gathering collectives copy the local
    input where other ranks' data would go; scatter and reduce_scatter take this rank's part."""
    got = _mpdist_results()
    a = [[1.0, 2.0], [3.0, 4.0]]
    for key in ("all_reduce", "broadcast", "reduce", "recv"):
        assert got[key] == a, key
    assert got["all_gather"] == [a] * WORLD == got["gather_root"]
    assert got["all_gather_into_tensor"] == a * WORLD
    assert got["reduce_scatter"] == [[10.0, 20.0], [30.0, 40.0]]
    assert got["reduce_scatter_tensor"] == [[5.0, 6.0], [7.0, 8.0]]  # rows of rank 1
    assert got["all_to_all"] == [[[v * 10**k for v in row] for row in a] for k in range(WORLD)]
    assert got["all_to_all_single"] == [[1.0, 2.0], [3.0, 4.0], [5.0, 6.0]]
    assert got["scatter_not_root"] == [[-1.0, -1.0]] * 2
    assert got["scatter_root"] == [[10.0, 20.0], [30.0, 40.0]]
    assert got["all_gather_object"] == [{"rank": RANK}] * WORLD
    assert got["recv_source"] == 0
    assert got["subgroup"] == (1, 2) and got["not_a_member"] == dist.GroupMember.NON_GROUP_MEMBER


def test_collectives_give_what_torchs_fake_group_gives() -> None:
    torch = pytest.importorskip("torch")
    import torch.distributed as tdist
    from torch.testing._internal.distributed.fake_pg import FakeStore as TorchFakeStore

    def arr(rows: int, cols: int) -> Any:
        return torch.arange(1.0, 1 + rows * cols, dtype=torch.float64).reshape(rows, cols)

    tdist.init_process_group("fake", rank=RANK, world_size=WORLD, store=TorchFakeStore())
    try:
        with warnings.catch_warnings():  # torch 2.13 deprecates the *_into_tensor names
            warnings.simplefilter("ignore", FutureWarning)
            theirs = _collectives(
                tdist, arr, lambda shape, v: torch.full(shape, v, dtype=torch.float64)
            )
    finally:
        tdist.destroy_process_group()
    theirs["not_a_member"] = dist.GroupMember.NON_GROUP_MEMBER  # torch's own sentinel object
    assert _mpdist_results() == theirs


# ------------------------------------------------------------------ data parallelism


def _linear(seed: int, *sizes: int) -> nn.Module:
    dist.manual_seed(seed)
    layers = [nn.Linear(a, b, dtype=np.float64) for a, b in zip(sizes[:-1], sizes[1:], strict=True)]
    return nn.Sequential(*layers)


def _grads(m: nn.Module) -> list[np.ndarray]:
    return [p.grad.data.copy() for p in m.parameters()]


@pytest.mark.parametrize(
    "wrap",
    [
        lambda m: DDP(m),
        lambda m: DDP(m, static_graph=True),
        lambda m: DDP(m, find_unused_parameters=True),
        lambda m: DDP(m, gradient_as_bucket_view=True, bucket_cap_mb=1e-4),
        lambda m: replicate(m),
    ],
    ids=["ddp", "static_graph", "find_unused", "bucket_views", "replicate"],
)
def test_data_parallel_trains_over_a_fake_group(fake: None, wrap: Callable) -> None:
    """The all-reduce leaves each bucket as it is, so every gradient is the local one divided
    by the world size (DDP's averaging over a group that adds nothing), at every iteration."""
    rng = np.random.default_rng(0)
    model, plain = _linear(1, 3, 5, 2), _linear(1, 3, 5, 2)
    wrapped = wrap(model)
    for _ in range(3):
        x = rng.standard_normal((4, 3))
        F.mse_loss(wrapped(x), np.zeros((4, 2))).backward()
        F.mse_loss(plain(x), np.zeros((4, 2))).backward()
        for got, want in zip(_grads(model), _grads(plain), strict=True):
            np.testing.assert_allclose(got, want / WORLD, rtol=1e-12)
        for p in (*model.parameters(), *plain.parameters()):
            p.grad = None


def test_no_sync_keeps_local_gradients_over_a_fake_group(fake: None) -> None:
    model, plain = _linear(2, 3, 2), _linear(2, 3, 2)
    ddp = DDP(model)
    x = np.ones((2, 3))
    with ddp.no_sync():
        ddp(x).sum().backward()
    plain(x).sum().backward()
    for got, want in zip(_grads(model), _grads(plain), strict=True):
        np.testing.assert_array_equal(got, want)


def test_sync_batch_norm_over_a_fake_group_is_local_batch_norm(fake: None) -> None:
    """The summed statistics come back unchanged, so SyncBatchNorm normalises with this
    rank's own batch, as BatchNorm does (output, input gradient, running statistics)."""
    x = np.random.default_rng(1).standard_normal((6, 4))
    sync = DDP(nn.SyncBatchNorm.convert_sync_batchnorm(nn.BatchNorm1d(4, dtype=np.float64)))
    local = nn.BatchNorm1d(4, dtype=np.float64)
    xs, xl = Tensor(x, requires_grad=True), Tensor(x, requires_grad=True)
    ys, yl = sync(xs), local(xl)
    np.testing.assert_allclose(ys.data, yl.data, rtol=1e-12, atol=1e-15)
    (ys * ys).sum().backward()
    (yl * yl).sum().backward()
    np.testing.assert_allclose(xs.grad.data, xl.grad.data, rtol=1e-9, atol=1e-12)
    bn = sync.module
    for name in ("running_mean", "running_var"):
        np.testing.assert_allclose(getattr(bn, name).data, getattr(local, name).data, rtol=1e-12)


def _raising_group(d: Any, store: Any, options: Any) -> None:
    options.error_on_collective = True
    d.init_process_group("fake", rank=0, world_size=2, store=store, pg_options=options)


def _what_raises(ns: SimpleNamespace) -> list[str]:
    """For each data-parallel entry point, the error text (or "ok")."""
    said = []
    for call in (
        lambda: ns.DDP(ns.Linear(2, 2)),
        lambda: ns.replicate(ns.Linear(2, 2))(ns.ones(1, 2)),
        lambda: ns.dist.send(ns.ones(2), 1),  # point-to-point is not a collective
    ):
        try:
            call()
            said.append("ok")
        except RuntimeError as e:
            said.append(str(e))
    return said


def test_error_on_collective_stops_data_parallelism_with_torchs_text() -> None:
    _raising_group(dist, FakeStore(), FakeProcessGroup.Options())
    try:
        ours = _what_raises(
            SimpleNamespace(
                DDP=DDP,
                replicate=replicate,
                Linear=nn.Linear,
                ones=lambda *s: np.ones(s),
                dist=dist,
            )
        )
    finally:
        dist.destroy_process_group()
    assert ours == [ERROR_TEXT, ERROR_TEXT, "ok"]

    torch = pytest.importorskip("torch")
    import torch.distributed as tdist
    from torch._C._distributed_c10d import FakeProcessGroup as TorchFake
    from torch.distributed._composable.replicate import replicate as torch_replicate
    from torch.testing._internal.distributed.fake_pg import FakeStore as TorchFakeStore

    _raising_group(tdist, TorchFakeStore(), TorchFake.Options())
    try:
        theirs = _what_raises(
            SimpleNamespace(
                DDP=torch.nn.parallel.DistributedDataParallel,
                replicate=torch_replicate,
                Linear=torch.nn.Linear,
                ones=torch.ones,
                dist=tdist,
            )
        )
    finally:
        tdist.destroy_process_group()
    assert theirs == ours
