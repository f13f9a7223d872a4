"""Port of PyTorch's test/distributed/test_c10d_pypg.py: Python-subclassed process groups.

Checks DESIGN's claim that a torch.distributed test ports by changing imports and tensors:
``torch.distributed`` -> ``mpdist``, ``torch.futures.Future`` -> ``mpdist.Future``,
``dist._Work`` -> ``mpdist.Work``, ``_create_work_from_future`` ->
``mpdist.create_work_from_future``, ``torch.nn`` -> ``mpdist.nn``, DDP ->
``mpdist.parallel``, test cases -> ``mpdist.testing``, tensors -> numpy arrays, devices
removed. Tests of each known mpdist gap are ``xfail(strict=True)`` with the gap as reason.

Not ported: the two CUDA stream tests (``test_block_current_stream*``), and the tests of
torch features newer than torch 2.13 (``test_coalescing_manager``,
``test_reconfigure_*``, ``test_window_delegation``, ``test_batch_isend_irecv_coalescing``;
torch 2.13 has no ``ReconfigureOptions``, ``_reconfigure``, ``_new_window`` or Python
coalescing hooks).
"""

# The port keeps the shape of torch's code (plain zip, try/except/pass), so that it reads
# side by side with the original.
# ruff: noqa: B905, SIM105

from __future__ import annotations

import os
import socket
import unittest
import weakref

import c10d_common_port as test_c10d_common
import numpy as np

import mpdist
import mpdist as dist
import mpdist.distributed as c10d
from mpdist import Future, nn
from mpdist import create_work_from_future as _create_work_from_future
from mpdist.parallel import DistributedDataParallel as DDP
from mpdist.testing import MultiProcessTestCase, MultiThreadedTestCase
from mpdist.testing._asserts import ArrayAssertions


class TestCase(ArrayAssertions, unittest.TestCase):
    """torch's single-process ``TestCase``: unittest with an array-aware ``assertEqual``."""


def create_work(result):
    future = Future()
    future.set_result(result)
    return _create_work_from_future(future)


class MyWork(dist.Work):
    def __init__(self, result, pg):
        super().__init__()
        self.result_ = result
        self.future_ = Future()
        self.future_.set_result(result)
        self.pg_ = weakref.ref(pg)

    def wait(self, timeout):
        self.pg_().wait_count += 1
        return True

    def get_future(self):
        self.pg_().get_future_count += 1
        return self.future_


class LonelyRankProcessGroup(dist.ProcessGroup):
    """A group of one rank whose collectives do nothing but count how they are waited on."""

    def __init__(self, rank, world, use_wrapper):
        super().__init__(rank, world)
        if rank != 0:
            raise AssertionError(f"Expected rank == 0, got {rank}")
        if world != 1:
            raise AssertionError(f"Expected world == 1, got {world}")

        self._rank = rank
        self._world = world
        self.wait_count = 0
        self.get_future_count = 0
        self.use_wrapper = use_wrapper
        self._work = []

    def broadcast(self, tensor_list, opts):
        if self.use_wrapper:
            return create_work(tensor_list)
        res = MyWork(tensor_list, self)
        self._work.append(res)
        return res

    def allgather(self, output_tensors, input_tensor, opts):
        for o, i in zip(output_tensors[0], input_tensor):
            o[...] = i
        if self.use_wrapper:
            return create_work(output_tensors)

        res = MyWork(output_tensors, self)
        self._work.append(res)

        return res

    def allreduce(self, tensors, opts):
        if self.use_wrapper:
            return create_work(tensors)
        res = MyWork(tensors, self)
        self._work.append(res)
        return res

    def getSize(self):
        return self._world

    def getBackendName(self):
        return "lonely-pg"

    def __repr__(self):
        return f"PLG w:{self._world} r:{self._rank}"


class DummyAttrProcessGroup(dist.ProcessGroup):
    def getRank(self):
        return 123

    def getSize(self):
        return 456

    def getBackendName(self):
        return "dummy-attr"

    def setGroupName(self, name) -> None:
        self._group_name = "py:" + name

    def getGroupName(self) -> str:
        return self._group_name

    def setGroupDesc(self, group_desc) -> None:
        self._group_desc = "py:" + group_desc

    def getGroupDesc(self) -> str:
        return self._group_desc


class StoreProcessGroup(dist.ProcessGroup):
    """Built with the three-argument ``(store, rank, size)`` constructor."""

    def __init__(self, store, rank, world):
        super().__init__(store, rank, world)
        self._rank = rank
        self._world = world

    def getBackendName(self):
        return "store-pg"


# The DDP tests live partly on the shared base class, so one subclass per Work flavour.
class AbstractDDPSingleRank(test_c10d_common.CommonDistributedDataParallelTest):
    def setUp(self):
        super().setUp()
        self._spawn_threads()

    @property
    def world_size(self):
        return 1

    def _get_process_group(self):
        return LonelyRankProcessGroup(self.rank, self.world_size, self.use_wrapper)

    def test_ddp_invoke_work_object(self):
        pg = self._get_process_group()

        mpdist.manual_seed(123)
        np.random.seed(123)
        model = nn.Sequential(nn.Linear(2, 2), nn.ReLU())
        wrapped_model = model
        input_tensor = np.random.rand(2).astype(np.float32)
        model = DDP(model, process_group=pg)
        model(input_tensor).sum().backward()

        ddp_grad = wrapped_model[0].bias.grad.clone()

        wrapped_model.zero_grad()
        wrapped_model(input_tensor).sum().backward()
        self.assertEqual(wrapped_model[0].bias.grad, ddp_grad)
        if not self.use_wrapper:
            self.assertTrue(pg.wait_count > 0)
            self.assertTrue(pg.get_future_count > 0)

    def test_ddp_with_pypg(self):
        pg = self._get_process_group()

        self._test_ddp_with_process_group(pg, device_ids=None)

    def test_ddp_with_pypg_with_grad_views(self):
        pg = self._get_process_group()

        self._test_ddp_with_process_group(pg, device_ids=None, gradient_as_bucket_view=True)

    def test_ddp_no_init_sync(self):
        pg = self._get_process_group()

        model = nn.Sequential(nn.Linear(2, 2), nn.ReLU())
        model = DDP(model, process_group=pg, init_sync=False)

        self.assertEqual(pg.wait_count, 0)
        self.assertEqual(pg.get_future_count, 0)


class TestDDPWithWorkSubclass(AbstractDDPSingleRank, MultiThreadedTestCase):
    @property
    def use_wrapper(self):
        return False


class TestDDPWithWorkWrapper(AbstractDDPSingleRank, MultiThreadedTestCase):
    @property
    def use_wrapper(self):
        return True


class TestPyProcessGroup(TestCase):
    def test_attr_overrides(self):
        pg = DummyAttrProcessGroup(0, 1)
        self.assertEqual(pg.name(), "dummy-attr")
        self.assertEqual(pg.rank(), 123)
        self.assertEqual(pg.size(), 456)

        pg._set_group_name("name")
        self.assertEqual(pg.group_name, "py:name")

        pg._set_group_desc("desc")
        self.assertEqual(pg.group_desc, "py:desc")

    def test_store_constructor(self):
        store = dist.HashStore()
        store.set("test_key", "test_value")

        pg = StoreProcessGroup(store, 0, 1)

        # The group hands back the store it was built with, the same object.
        group_store = pg.get_group_store()
        self.assertIs(group_store, store)
        self.assertEqual(group_store.get("test_key"), b"test_value")

        # The Python override of getBackendName is what name() reports.
        self.assertEqual(pg.name(), "store-pg")
        self.assertEqual(pg.rank(), 0)
        self.assertEqual(pg.size(), 1)

    def test_all_gather_single(self):
        # torch drives this through its functional op all_gather_into_tensor_out(input, 1,
        # group_name, out=output); mpdist has no functional ops addressed by group name, so
        # the port calls the module-level collective on the group itself.
        pg = test_c10d_common.DummyProcessGroup(0, 1)
        c10d._register_process_group("test_all_gather_single", pg)
        try:
            input = np.ones(2, dtype=np.float32)
            output = np.empty(2, dtype=np.float32)
            dist.all_gather_into_tensor(output, input, group=pg)
            self.assertIn("all_gather_single", pg.collectives_called)
            self.assertEqual(output, np.ones(2, dtype=np.float32))
        finally:
            c10d._unregister_process_group("test_all_gather_single")

    def test_reduce_scatter_single(self):
        # A direct call: the override runs and writes into the output buffer.
        pg = test_c10d_common.DummyProcessGroup(0, 1)
        input = np.ones(2, dtype=np.float32)
        output = np.zeros(2, dtype=np.float32)
        pg.reduce_scatter_single(output, input).wait()
        self.assertIn("reduce_scatter_single", pg.collectives_called)
        self.assertEqual(output, np.ones(2, dtype=np.float32))

    def test_abort_shutdown(self) -> None:
        # Both are no-ops on a group that does not override them.
        pg = DummyAttrProcessGroup(0, 1)
        pg.abort()
        pg.shutdown()


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class TestBatchSendRecv(MultiProcessTestCase):
    def setUp(self):
        super().setUp()
        # torch's test body sets MASTER_PORT=6789; a fixed port breaks overlapping runs
        # (xdist, several checkouts), so the parent picks a free one and the ranks inherit it.
        old = os.environ.get("MASTER_PORT")
        os.environ["MASTER_PORT"] = str(_free_port())
        self.addCleanup(
            lambda: (
                os.environ.pop("MASTER_PORT", None)
                if old is None
                else os.environ.__setitem__("MASTER_PORT", old)
            )
        )
        self._spawn_processes()

    def tearDown(self):
        super().tearDown()
        try:
            os.remove(self.file_name)
        except OSError:
            pass

    @staticmethod
    def create_dummy(store, group_rank, group_size, timeout):
        return test_c10d_common.DummyProcessGroup(group_rank, group_size)

    def test_batch_isend_irecv(self):
        # Without coalescing support the batch falls back to one send/recv per op; the
        # dummy group adds 1 on send and 2 on recv, which proves the ops reached Python.
        dist.Backend.register_backend("dummy", TestBatchSendRecv.create_dummy)

        os.environ["MASTER_ADDR"] = "127.0.0.1"
        dist.init_process_group("dummy", rank=self.rank, world_size=self.world_size)

        peer = (self.rank + 1) % self.world_size
        send_tensor = np.zeros((2, 2), dtype=np.float32)
        recv_tensor = np.zeros((2, 2), dtype=np.float32)
        reqs = dist.batch_isend_irecv(
            [
                dist.P2POp(dist.isend, send_tensor, peer),
                dist.P2POp(dist.irecv, recv_tensor, peer),
            ]
        )
        for req in reqs:
            req.wait()

        self.assertEqual(send_tensor, np.zeros((2, 2), dtype=np.float32) + 1)
        self.assertEqual(recv_tensor, np.zeros((2, 2), dtype=np.float32) + 2)

        dist.barrier()
        dist.destroy_process_group()


if __name__ == "__main__":
    unittest.main()
