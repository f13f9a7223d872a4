"""Where torch's own tests notice a difference: destroying nothing, registering a backend name
again, the fake backend with a store that implements nothing, and how a FakeProcessGroup is
built. Each behaviour is checked here, and against torch itself where it is installed."""

from __future__ import annotations

import importlib.util
import sys
import textwrap
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest

import mpdist as dist
from mpdist.backends.fake import FakeProcessGroup
from mpdist.process_group import Backend, ProcessGroup
from mpdist.store import Store

NONE_TEXT = "Process group cannot be None"
NO_CONSTRUCTOR = "No constructor defined"


@pytest.fixture
def registry() -> Iterator[None]:
    """Put the backend registry back as it was (it is process-wide)."""
    before = dict(Backend._plugins)
    yield
    Backend._plugins.clear()
    Backend._plugins.update(before)


class NothingStore(Store):
    """A store that implements nothing (torch's FakeStore): any use of it is counted and
    fails."""

    touched = 0

    def _touch(self, *args: Any) -> Any:
        NothingStore.touched += 1
        raise AssertionError("the fake backend used its store")

    _set = _get = _add = _compare_set = _delete_key = _num_keys = _touch
    _check = _wait = _append = _multi_get = _multi_set = _touch


# ------------------------------------------------------------------ destroy_process_group


def test_destroying_with_nothing_initialized_is_torchs_assertion_error() -> None:
    assert not dist.is_initialized()
    with pytest.raises(AssertionError, match=NONE_TEXT):
        dist.destroy_process_group()
    # and after a destroy, again
    dist.init_process_group("fake", rank=0, world_size=1)
    dist.destroy_process_group()
    with pytest.raises(AssertionError, match=NONE_TEXT):
        dist.destroy_process_group()


def test_torch_raises_the_same_on_destroying_nothing() -> None:
    pytest.importorskip("torch")
    import torch.distributed as tdist

    if tdist.is_initialized():
        pytest.skip("a torch default group is up in this process")
    with pytest.raises(AssertionError) as info:
        tdist.destroy_process_group()
    assert NONE_TEXT in str(info.value)


# ------------------------------------------------------------------ register_backend


class Tagged(FakeProcessGroup):
    """A fake group that remembers which creator made it."""

    tag = ""


def _creator(tag: str) -> Any:
    def create(store: Store, rank: int, size: int, timeout: Any) -> ProcessGroup:
        pg = Tagged._create_internal(rank, size)
        pg.tag = tag
        return pg

    return create


def test_registering_a_name_again_replaces_its_creator(registry: None) -> None:
    Backend.register_backend("twice", _creator("first"))
    Backend.register_backend("TWICE", _creator("second"))
    assert Backend.TWICE == "twice" and "twice" in Backend.backend_list()
    dist.init_process_group("twice", store=dist.HashStore(), rank=0, world_size=1)
    try:
        pg = dist.group.WORLD
        assert isinstance(pg, Tagged) and pg.tag == "second"
    finally:
        dist.destroy_process_group()


def test_undefined_is_still_not_a_backend_name(registry: None) -> None:
    with pytest.raises(ValueError, match="already exist"):
        Backend.register_backend("undefined", _creator("x"))


def test_torch_replaces_a_registration_too() -> None:
    pytest.importorskip("torch")
    import torch.distributed as tdist

    def first(*args: Any) -> None:
        return None

    def second(*args: Any) -> None:
        return None

    tdist.Backend.register_backend("mpdist_compat_probe", first, devices=["cpu"])
    tdist.Backend.register_backend("mpdist_compat_probe", second, devices=["cpu"])  # no error
    assert tdist.Backend._plugins["MPDIST_COMPAT_PROBE"].creator_fn is second


# A module in the shape of torch's fake_pg.py, ported by its imports: an empty Store
# subclass, and the "fake" backend registered again, at import, through _create_internal.
FAKE_PG_MODULE = textwrap.dedent(
    """
    import mpdist as dist
    from mpdist.backends.fake import FakeProcessGroup

    made = []


    class EmptyStore(dist.Store):
        '''Implements nothing: the fake backend must never use it.'''


    def _create(common_opts, backend_opts):
        pg = FakeProcessGroup._create_internal(
            common_opts.group_rank, common_opts.group_size, backend_opts
        )
        made.append(pg)
        return pg


    dist.Backend.register_backend(
        "fake", _create, extended_api=True, devices=["cpu", "cuda", "hpu", "xpu"]
    )
    """
)


def _import_module(path: Path, name: str) -> Any:
    spec = importlib.util.spec_from_file_location(name, path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    try:
        spec.loader.exec_module(module)
    finally:
        del sys.modules[name]
    return module


def test_a_module_that_registers_fake_at_import_imports_and_serves(
    registry: None, tmp_path: Path
) -> None:
    path = tmp_path / "ported_fake_pg.py"
    path.write_text(FAKE_PG_MODULE)
    _import_module(path, "ported_fake_pg_once")
    mod = _import_module(path, "ported_fake_pg_twice")  # registering twice is fine too
    dist.init_process_group("fake", store=mod.EmptyStore(), rank=1, world_size=4)
    try:
        assert len(mod.made) == 1 and dist.group.WORLD is mod.made[0]
        assert dist.get_rank() == 1 and dist.get_world_size() == 4
        a = np.arange(3.0)
        dist.all_reduce(a)
        assert np.array_equal(a, [0.0, 1.0, 2.0])
        sub = dist.new_group([0, 1, 2])
        assert sub is mod.made[1]
    finally:
        dist.destroy_process_group()


def test_the_fake_backend_never_touches_its_store() -> None:
    NothingStore.touched = 0
    dist.init_process_group("fake", store=NothingStore(), rank=0, world_size=2)
    try:
        dist.new_group([0])
        dist.barrier()
    finally:
        dist.destroy_process_group()
    dist.init_process_group("fake", store=NothingStore(), rank=0, world_size=2)  # again
    dist.destroy_process_group()
    assert NothingStore.touched == 0


# ------------------------------------------------------------------ FakeProcessGroup


def test_fake_process_group_has_no_constructor_but_create_internal() -> None:
    with pytest.raises(TypeError, match=NO_CONSTRUCTOR):
        FakeProcessGroup(0, 2)
    with pytest.raises(TypeError, match=NO_CONSTRUCTOR):
        FakeProcessGroup()
    pg = FakeProcessGroup._create_internal(1, 3)
    assert isinstance(pg, FakeProcessGroup) and pg.rank() == 1 and pg.size() == 3
    assert not pg.options.error_on_collective
    failing = FakeProcessGroup._create_internal(
        0, 2, FakeProcessGroup.Options(error_on_collective=True)
    )
    with pytest.raises(RuntimeError, match="error_on_collective"):
        failing.barrier().wait()
    from mpdist.testing import FakeProcessGroup as exported

    assert exported is FakeProcessGroup


def test_torch_fake_process_group_is_built_the_same_way() -> None:
    pytest.importorskip("torch")
    from torch._C._distributed_c10d import FakeProcessGroup as TorchFake

    with pytest.raises(TypeError) as info:
        TorchFake(0, 2)
    assert NO_CONSTRUCTOR in str(info.value)
    pg = TorchFake._create_internal(1, 3)
    assert pg.rank() == 1 and pg.size() == 3
