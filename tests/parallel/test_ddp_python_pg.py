"""A Python ProcessGroup subclass drives DDP at world size 1: DDP must call broadcast /
allreduce on it with option objects and use the returned Work's wait / get_future."""

from __future__ import annotations

from datetime import timedelta

import numpy as np

import mpdist
from mpdist import nn
from mpdist.nn import functional as F
from mpdist.parallel import DistributedDataParallel as DDP
from mpdist.parallel import reducer
from mpdist.process_group import (
    AllreduceOptions,
    BroadcastOptions,
    Future,
    ProcessGroup,
    ReduceOp,
    Work,
)


class CountingWork(Work):
    def __init__(self, pg: CountingPG, result: list) -> None:
        super().__init__()
        self.pg = pg
        self.result_ = result

    def wait(self, timeout=None) -> bool:
        self.pg.waits.append(timeout)
        return True

    def get_future(self) -> Future:
        self.pg.futures += 1
        fut = Future()
        fut.set_result(self.result_)
        return fut


class CountingPG(ProcessGroup):
    def __init__(self) -> None:
        super().__init__(0, 1)
        self.waits: list = []
        self.futures = 0
        self.allreduces: list[tuple[int, ReduceOp]] = []
        self.broadcasts: list[int] = []

    def getBackendName(self) -> str:
        return "counting"

    def allreduce(self, tensors, opts=None):
        assert isinstance(opts, AllreduceOptions) and len(tensors) == 1
        self.allreduces.append((np.asarray(tensors[0]).size, opts.reduceOp))
        return CountingWork(self, list(tensors))

    def broadcast(self, tensors, opts=None):
        assert isinstance(opts, BroadcastOptions) and opts.rootRank == 0
        self.broadcasts.append(np.asarray(tensors[0]).size)
        return CountingWork(self, list(tensors))


def model() -> nn.Module:
    mpdist.manual_seed(0)
    return nn.Sequential(nn.Linear(6, 32), nn.ReLU(), nn.Linear(32, 3))


def test_python_process_group_drives_ddp(monkeypatch) -> None:
    monkeypatch.setattr(reducer, "DEFAULT_FIRST_BUCKET_BYTES", 400)
    pg = CountingPG()
    ddp = DDP(model(), process_group=pg, bucket_cap_mb=0.0004)
    nparams = sum(p.numel() for p in ddp.parameters())
    # one coalesced broadcast (one dtype), waited with a timeout passed positionally
    assert pg.broadcasts == [nparams]
    assert len(pg.waits) == 1 and isinstance(pg.waits[0], timedelta)
    nb = len(ddp.reducer.buckets)
    assert nb >= 2

    ref = model()
    x, y = np.random.default_rng(0).standard_normal((5, 6)), np.zeros((5, 3))
    for step in range(2):
        ddp.zero_grad()
        ref.zero_grad()
        F.mse_loss(ddp(x), y).backward()
        F.mse_loss(ref(x), y).backward()
        assert pg.futures == nb * (step + 1)
        assert [op for _, op in pg.allreduces] == [ReduceOp.SUM] * nb * (step + 1)
        for p, q in zip(ddp.parameters(), ref.parameters(), strict=True):
            np.testing.assert_allclose(p.grad.data, q.grad.data, rtol=1e-6)
    sizes = [n for n, _ in pg.allreduces[:nb]]
    assert sum(sizes) == nparams
    assert len(pg.waits) == 1  # the reduction waits on futures, not on Work.wait


def test_init_sync_false_issues_no_collective() -> None:
    pg = CountingPG()
    DDP(model(), process_group=pg, init_sync=False)
    assert pg.broadcasts == [] and pg.allreduces == [] and pg.waits == []


def test_logging_data_names_the_python_backend() -> None:
    data = DDP(model(), process_group=CountingPG())._get_ddp_logging_data()
    assert data["backend_name"] == "counting"
    assert (data["world_size"], data["rank"], data["is_multi_device_module"]) == (1, 0, 0)
