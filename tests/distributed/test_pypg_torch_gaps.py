"""torch 2.13 process-group hooks that ported tests rely on: the group's store, the default
store, the name registry, and the ``all_gather_single`` / ``reduce_scatter_single`` methods
that the tensor collectives call on a Python group."""

from __future__ import annotations

import numpy as np
import pytest

import mpdist as dist
import mpdist.distributed as c10d
from mpdist import ProcessGroup
from mpdist.process_group import completed_work
from mpdist.store import HashStore, Store
from mpdist.testing import FakeStore, spawn_threads

UNINIT = (
    "Default process group has not been initialized, please make sure to call init_process_group."
)


class Recording(ProcessGroup):
    """Records which methods the module API called; one rank, copies data through."""

    def __init__(self, *args):
        super().__init__(*args)
        self.called: list[str] = []

    def getBackendName(self):
        return "recording"


class SingleHooks(Recording):
    def all_gather_single(self, output, input, opts=None):
        self.called.append("all_gather_single")
        output[...] = input
        return completed_work([output])

    def reduce_scatter_single(self, output, input, opts=None):
        self.called.append("reduce_scatter_single")
        output[...] = input
        return completed_work([output])

    def _allgather_base(self, output, input, opts=None):
        self.called.append("_allgather_base")
        return completed_work([output])

    def _reduce_scatter_base(self, output, input, opts=None):
        self.called.append("_reduce_scatter_base")
        return completed_work([output])


class BaseHooksOnly(Recording):
    def _allgather_base(self, output, input, opts=None):
        self.called.append("_allgather_base")
        output[...] = input
        return completed_work([output])

    def _reduce_scatter_base(self, output, input, opts=None):
        self.called.append("_reduce_scatter_base")
        output[...] = 2 * input
        return completed_work([output])


def test_tensor_collectives_call_the_single_hooks_like_torch():
    pg = SingleHooks(0, 1)
    out = np.zeros(3, np.float32)
    dist.all_gather_into_tensor(out, np.full(3, 5, np.float32), group=pg)
    dist.reduce_scatter_tensor(out, np.full(3, 7, np.float32), group=pg)
    assert pg.called == ["all_gather_single", "reduce_scatter_single"]
    np.testing.assert_array_equal(out, [7, 7, 7])


def test_single_hooks_fall_back_to_the_base_methods():
    pg = BaseHooksOnly(0, 1)
    out = np.zeros(2)
    dist.all_gather_into_tensor(out, np.ones(2), group=pg)
    np.testing.assert_array_equal(out, [1, 1])
    dist.reduce_scatter_tensor(out, np.full(2, 3.0), group=pg)
    np.testing.assert_array_equal(out, [6, 6])
    assert pg.called == ["_allgather_base", "_reduce_scatter_base"]
    with pytest.raises(NotImplementedError, match="_allgather_base"):
        dist.all_gather_into_tensor(out, np.ones(2), group=Recording(0, 1))


class AllToAllBase(Recording):
    def alltoall_base(self, output, input, output_split_sizes, input_split_sizes, opts=None):
        self.called.append((output_split_sizes, input_split_sizes))
        output[...] = input
        return completed_work([output])


def test_all_to_all_single_hands_a_python_group_its_splits_as_lists():
    pg = AllToAllBase(0, 2)
    out = np.zeros(3)
    # numpy splits are accepted (the built-in groups take them): the group gets int lists
    dist.all_to_all_single(out, np.ones(3), np.array([1, 2]), np.array([2, 1]), group=pg)
    dist.all_to_all_single(out, np.ones(3), [2, 1], (1, 2), group=pg)
    dist.all_to_all_single(np.zeros(4), np.ones(4), group=pg)  # even split: empty lists
    dist.all_to_all_single(np.zeros(4), np.ones(4), None, [], group=pg)
    assert pg.called == [([1, 2], [2, 1]), ([2, 1], [1, 2]), ([], []), ([], [])]
    assert all(type(s) is int for call in pg.called for splits in call for s in splits)
    np.testing.assert_array_equal(out, [1, 1, 1])


def test_group_store_is_the_store_it_was_built_with():
    store = HashStore()
    assert Recording(store, 0, 1).get_group_store() is store
    assert Recording(0, 1).get_group_store() is None


def test_name_registry():
    a, b = Recording(0, 1), Recording(0, 1)
    c10d._register_process_group("test-name-registry", a)
    try:
        with pytest.raises(RuntimeError, match="already registered under the name"):
            c10d._register_process_group("test-name-registry", b)
        assert c10d._resolve_process_group("test-name-registry") is a
        with pytest.raises(TypeError):
            c10d._register_process_group("other", object())
    finally:
        c10d._unregister_process_group("test-name-registry")
    c10d._unregister_process_group("test-name-registry")  # a second time: nothing happens
    with pytest.raises(RuntimeError, match="Could not resolve"):
        c10d._resolve_process_group("test-name-registry")


def test_default_store_needs_init():
    with pytest.raises(ValueError, match="Default process group has not been initialized"):
        c10d._get_default_store()


def test_default_store_of_the_fake_backend():
    dist.init_process_group("fake", rank=0, world_size=2, store=FakeStore())
    try:
        store = c10d._get_default_store()
        assert isinstance(store, Store)
        assert c10d._get_default_store() is store
    finally:
        dist.destroy_process_group()


def default_store_job(rank: int, n: int) -> tuple[int, bool]:
    store = c10d._get_default_store()
    total = store.add("arrived", 1)
    dist.barrier()
    # the built-in group keeps the store it was built with, a view of the same keys
    group_store = c10d._get_default_group().get_group_store()
    return int(store.get("arrived")), total <= n and group_store is store


def test_default_store_is_shared_by_the_ranks_and_is_the_groups_store():
    assert spawn_threads(default_store_job, 3) == [(3, True)] * 3
