"""Port of PyTorch's test/distributed/_composable/test_replicate.py: composable DDP.

The translation follows DESIGN.md: ``torch.distributed`` -> ``mpdist``,
``torch.distributed._composable.replicate`` -> ``mpdist.parallel.replicate``,
``torch.nn`` -> ``mpdist.nn``, ``torch.randn``/``torch.randperm`` -> numpy (every rank's
numpy RNG is seeded alike by the harness, as torch's harness seeds torch), devices removed,
and "torch.device" -> "mpdist device" in the one error text SPEC §3 renames. Every
ported test runs; none is a known mpdist gap any more.

Not ported: the tests torch runs only with two or more GPUs
(``test_replicate_move_args_kwargs_to_device``, ``test_replicate_ignore_module``,
``test_replicate_device_id``, ``ReplicateFullyShardInit.test_replicate_fully_shard_init``,
the last also needs FSDP's ``fully_shard`` and DTensor).
"""

# The port keeps the shape of torch's code (plain zip, try/except/pass), so that it reads
# side by side with the original.
# ruff: noqa: B905, SIM105

from __future__ import annotations

import os
import unittest
from copy import deepcopy

import numpy as np

import mpdist as dist
from mpdist import nn
from mpdist.autograd import no_grad
from mpdist.nn import functional as F
from mpdist.parallel import replicate
from mpdist.testing import MultiProcessTestCase


class Net(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.fc1 = nn.Linear(2, 2)
        self.fc2 = nn.Linear(2, 2)
        self.fc3 = nn.Linear(2, 2)

    def forward(self, x):
        return self.fc3(self.fc2(self.fc1(x)))


class ReplicateStateDictTest(MultiProcessTestCase):
    def setUp(self) -> None:
        super().setUp()
        self._spawn_processes()

    def tearDown(self):
        super().tearDown()
        try:
            os.remove(self.file_name)
        except OSError:
            pass

    def _init_pg(self):
        dist.init_process_group(
            backend="gloo",
            rank=self.rank,
            world_size=self.world_size,
            store=dist.FileStore(self.file_name, self.world_size),
        )

    def _check_state_dict_parity(self, sd_1, sd_2):
        for k1, k2 in zip(sd_1.keys(), sd_2.keys()):
            self.assertEqual(k1, k2)

        for v1, v2 in zip(sd_1.values(), sd_2.values()):
            self.assertEqual(v1, v2)

    def test_replicate_single_module_save_load(self):
        """replicate() on the whole model leaves its state_dict as the local model's."""
        self._init_pg()
        model = Net()
        replicate_model = replicate(deepcopy(model))
        local_sd = model.state_dict()
        ddp_sd = replicate_model.state_dict()
        self._check_state_dict_parity(local_sd, ddp_sd)

    def test_replicate_non_root_multiple_save_load(self):
        """replicate() on each submodule leaves the state_dict as the local model's."""
        self._init_pg()
        model = Net()
        replicate_model = deepcopy(model)
        replicate(replicate_model.fc1)
        replicate(replicate_model.fc2)
        replicate(replicate_model.fc3)

        local_sd = model.state_dict()
        ddp_sd = replicate_model.state_dict()
        self._check_state_dict_parity(local_sd, ddp_sd)


class ReplicateTest(MultiProcessTestCase):
    @property
    def world_size(self) -> int:
        return 2

    def setUp(self) -> None:
        super().setUp()
        self._spawn_processes()

    def tearDown(self):
        super().tearDown()
        try:
            os.remove(self.file_name)
        except OSError:
            pass

    def _init_pg(self):
        dist.init_process_group(
            backend="gloo",
            rank=self.rank,
            world_size=self.world_size,
            store=dist.FileStore(self.file_name, self.world_size),
        )

    def _compare_module(self, mod, replicate_mod):
        local_batch_size = 1
        global_batch_size = self.world_size * local_batch_size
        input = np.random.randn(global_batch_size, 2).astype(np.float32)
        target = np.random.randn(global_batch_size, 2).astype(np.float32)

        def step_model(model, input, target):
            model.train()
            output = model(input)
            loss = F.mse_loss(output, target)
            loss.backward()
            for param in model.parameters():
                with no_grad():
                    param -= param.grad
                param.grad = None

        start = [p.data.copy() for p in mod.parameters()]
        for iteration in range(2):
            step_model(mod, input, target)
            step_model(
                replicate_mod,
                input[self.rank * local_batch_size : (self.rank + 1) * local_batch_size],
                target[self.rank * local_batch_size : (self.rank + 1) * local_batch_size],
            )

            self.assertEqual(
                len(list(mod.parameters())),
                len(list(replicate_mod.parameters())),
            )
            for i, j in zip(mod.parameters(), replicate_mod.parameters()):
                self.assertEqual(i, j, rtol=1.3e-06, atol=5e-5)
            # Not in torch's test: there the step moves the parameters, which is what makes
            # the comparison above meaningful. Check that premise holds here too.
            self.assertNotEqual(start, [p.data for p in mod.parameters()])

            # A different order of the global batch, the same on every rank.
            np.random.seed(iteration)
            input = input[np.random.permutation(global_batch_size)]

    def test_replicate_single_module(self):
        self._init_pg()
        model = Net()
        replicate_model = replicate(deepcopy(model))
        self._compare_module(model, replicate_model)

    def test_replicate_multi_module(self):
        self._init_pg()
        model = Net()
        replicate_model = deepcopy(model)
        replicate(replicate_model.fc1)
        replicate(replicate_model.fc2)
        replicate(replicate_model.fc3)
        self._compare_module(model, replicate_model)

    def test_replicate_with_kwargs(self):
        self._init_pg()
        model = Net()
        replicate_model = replicate(deepcopy(model), bucket_cap_mb=1, gradient_as_bucket_view=True)
        self._compare_module(model, replicate_model)

    def test_replicate_wrong_device_id_type(self):
        self._init_pg()
        model = Net()
        with self.assertRaisesRegex(RuntimeError, "Expected device_id to be int or mpdist device"):
            replicate(model, device_id=["cpu"])


class ReplicateFullyShardInit(ReplicateTest):
    # torch's own test here needs two GPUs and FSDP; as in torch, the class still runs every
    # test it inherits from ReplicateTest.
    pass


if __name__ == "__main__":
    unittest.main()
