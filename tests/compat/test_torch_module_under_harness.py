"""A test module written against torch alone runs under mpdist's MultiProcessTestCase.

The module below uses only torch (gloo groups on a FileStore, torch tensors, composable
``replicate`` and ``DistributedDataParallel`` checked against training in one process,
torch's ``skip_if_lt_x_gpu``); its one mpdist line is the import of
``MultiProcessTestCase``. Run by pytester in a subprocess, its tests must pass, and the
GPU-gated ones, whose ranks exit with torch's skip codes, must be reported as skips
carrying torch's message.
"""

from __future__ import annotations

import pytest

TORCH_MODULE = """
import os
from copy import deepcopy

import torch
import torch.distributed as dist
from torch import nn
from torch.distributed._composable.replicate import replicate
from torch.nn.parallel import DistributedDataParallel
from torch.testing import assert_close
from torch.testing._internal.common_distributed import skip_if_lt_x_gpu

ROWS_PER_RANK = 4


def regressor():
    torch.manual_seed(3)
    return nn.Sequential(nn.Linear(5, 7), nn.Tanh(), nn.Linear(7, 2))


def batches(world_size, steps=3):
    gen = torch.Generator().manual_seed(9)
    rows = ROWS_PER_RANK * world_size
    return [
        (torch.randn(rows, 5, generator=gen), torch.randn(rows, 2, generator=gen))
        for _ in range(steps)
    ]


def fit(model, data, rank=0, world_size=1):
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    for x, y in data:
        mine = slice(rank * len(x) // world_size, (rank + 1) * len(x) // world_size)
        opt.zero_grad()
        nn.functional.mse_loss(model(x[mine]), y[mine]).backward()
        opt.step()
    return model


class TwoRanksOnGloo(MultiProcessTestCase):
    @property
    def world_size(self):
        return 2

    def setUp(self):
        super().setUp()
        self._spawn_processes()

    def tearDown(self):
        super().tearDown()
        if os.path.exists(self.file_name):
            os.remove(self.file_name)

    def join_group(self):
        dist.init_process_group(
            "gloo",
            store=dist.FileStore(self.file_name, self.world_size),
            rank=self.rank,
            world_size=self.world_size,
        )


class CollectiveTests(TwoRanksOnGloo):
    def test_all_reduce_adds_every_ranks_tensor(self):
        self.join_group()
        t = torch.arange(4.0) * (self.rank + 1)
        dist.all_reduce(t)
        assert_close(t, torch.arange(4.0) * sum(r + 1 for r in range(self.world_size)))

    def test_all_gather_lists_ranks_in_order(self):
        self.join_group()
        mine = torch.full((2,), float(10 + self.rank))
        got = [torch.empty(2) for _ in range(self.world_size)]
        dist.all_gather(got, mine)
        expected = [torch.full((2,), float(10 + r)) for r in range(self.world_size)]
        assert_close(torch.stack(got), torch.stack(expected))

    @skip_if_lt_x_gpu(2)
    def test_needs_two_gpus(self):
        self.join_group()


class DataParallelTests(TwoRanksOnGloo):
    def test_replicate_trains_like_one_process(self):
        self.join_group()
        data = batches(self.world_size)
        alone = fit(regressor(), data)
        ours = fit(replicate(regressor()), data, self.rank, self.world_size)
        for p, q in zip(ours.parameters(), alone.parameters()):
            assert_close(p, q, rtol=1e-5, atol=1e-6)
        assert not torch.equal(alone[0].weight, regressor()[0].weight)

    def test_ddp_trains_like_one_process(self):
        self.join_group()
        data = batches(self.world_size)
        alone = fit(regressor(), data)
        ours = fit(DistributedDataParallel(regressor()), data, self.rank, self.world_size)
        for p, q in zip(ours.module.parameters(), alone.parameters()):
            assert_close(p, q, rtol=1e-5, atol=1e-6)

    def test_replicating_children_keeps_state_dict_keys(self):
        self.join_group()
        model = regressor()
        plain = deepcopy(model)
        replicate(model[0])
        replicate(model[2])
        self.assertEqual(list(model.state_dict()), list(plain.state_dict()))

    @skip_if_lt_x_gpu(4)
    def test_needs_four_gpus(self):
        self.join_group()
"""


def test_torch_written_module_passes_and_skips_under_mpdist(pytester: pytest.Pytester) -> None:
    pytest.importorskip("torch.distributed")
    pytest.importorskip("expecttest")  # imported by torch's common_distributed
    pytester.makepyfile(
        test_torch_only="from mpdist.testing import MultiProcessTestCase\n" + TORCH_MODULE
    )
    # a subprocess: torch's operator registrations outlive an in-process run's module
    # cleanup and break the next torch import in this session
    result = pytester.runpytest_subprocess("-rs", "-p", "no:cacheprovider")
    result.assert_outcomes(passed=5, skipped=2)
    result.stdout.fnmatch_lines_random(
        ["SKIPPED*Need at least 2 CUDA devices*", "SKIPPED*Need at least 4 CUDA devices*"]
    )
