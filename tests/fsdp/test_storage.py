"""Both FSDPs keep unsharded parameters in ``_storage.Storage`` and free them for real: a
resharded unit's map holds no resident pages (the kernel's ``mincore``), and the shared
live-bytes meter says the same."""

from __future__ import annotations

import ctypes
import mmap
from typing import Any

import numpy as np
import pytest

import mpdist
from mpdist import nn
from mpdist.fsdp import FullyShardedDataParallel as FSDP
from mpdist.fsdp import ShardingStrategy, fully_shard, live_unsharded_bytes, peak_unsharded_bytes
from mpdist.fsdp._storage import Storage
from mpdist.fsdp.wrap import ModuleWrapPolicy
from mpdist.testing import spawn_threads

pytestmark = pytest.mark.skipif(
    not hasattr(ctypes.CDLL(None), "mincore"), reason="no mincore in this libc"
)

WIDTH = 128  # a unit is 128 * 129 float64: 129 KiB, many pages
UNIT = WIDTH * (WIDTH + 1) * 8


def resident_bytes(array: np.ndarray) -> int:
    """Bytes of ``array``'s pages the kernel has in memory for this process (mincore)."""
    libc = ctypes.CDLL(None, use_errno=True)
    pages = -(-array.nbytes // mmap.PAGESIZE)
    vec = (ctypes.c_ubyte * pages)()
    assert array.ctypes.data % mmap.PAGESIZE == 0
    rc = libc.mincore(ctypes.c_void_p(array.ctypes.data), ctypes.c_size_t(array.nbytes), vec)
    assert rc == 0, ctypes.get_errno()
    return sum(v & 1 for v in vec) * mmap.PAGESIZE


@pytest.mark.parametrize("numel", [64 * 1024, 600 * 1024])  # 512 KiB; 4.7 MiB: huge pages
def test_freed_storage_gives_its_pages_back_and_reads_zeros(numel: int) -> None:
    before = live_unsharded_bytes()
    s = Storage(numel, np.dtype(np.float64))
    if s.nbytes >= 2 << 20:  # starts on a huge-page boundary, so it can use huge pages
        assert s.array.ctypes.data % (2 << 20) == 0
    s.array[:] = 1.0
    assert resident_bytes(s.array) == s.nbytes == numel * 8
    assert live_unsharded_bytes() == before + s.nbytes
    s.free()
    assert resident_bytes(s.array) == 0  # gone from memory, not only unmapped
    assert live_unsharded_bytes() == before
    assert not s.array.any()
    s.materialize()
    s.array[:] = 2.0  # the same array takes values again
    assert resident_bytes(s.array) == s.nbytes and live_unsharded_bytes() == before + s.nbytes
    s.free()


class Deep(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        mpdist.manual_seed(0)
        self.layers = nn.Sequential(*[nn.Linear(WIDTH, WIDTH, dtype=np.float64) for _ in range(4)])

    def forward(self, x: Any) -> Any:
        return self.layers(x)


def _fsdp1(rank: int, ws: int, strategy: str) -> None:
    model = FSDP(
        Deep(),
        auto_wrap_policy=ModuleWrapPolicy({nn.Linear}),
        sharding_strategy=ShardingStrategy[strategy],
    )
    units = [u._handle for u in model._units() if u._handle.entries]
    assert len(units) == 4
    padded = units[0].storage.nbytes
    assert UNIT <= padded < UNIT + 8 * ws
    seen: list[tuple[int, int]] = []  # (resident bytes of the running unit, live bytes)
    for h, layer in zip(units, model.module.layers, strict=True):
        layer.module.register_forward_hook(  # inside the unit, before its reshard
            lambda *_a, h=h: seen.append((resident_bytes(h.storage.array), live_unsharded_bytes()))
        )
    peak_unsharded_bytes(reset=True)
    out = model(np.ones((4, WIDTH)))
    in_pages = -(-padded // mmap.PAGESIZE) * mmap.PAGESIZE
    assert [r for r, _ in seen] == [in_pages] * 4  # gathered while it runs
    after_forward = [resident_bytes(h.storage.array) for h in units]
    if strategy == "FULL_SHARD":
        assert [live for _, live in seen] == [padded] * 4  # one unit at a time
        assert after_forward == [0] * 4 and live_unsharded_bytes() == 0
    else:  # SHARD_GRAD_OP keeps every unit until its backward
        assert after_forward == [in_pages] * 4 and live_unsharded_bytes() == 4 * padded
    out.sum().backward()
    assert [resident_bytes(h.storage.array) for h in units] == [0] * 4
    assert live_unsharded_bytes() == 0
    peak = peak_unsharded_bytes()
    assert peak == (padded if strategy == "FULL_SHARD" else 4 * padded)
    # the shard plus the peak: the claim (total / world + the two largest units)
    held = sum(p.data.nbytes for p in model.parameters())
    if strategy == "FULL_SHARD":
        assert held + peak <= 4 * padded // ws + 2 * padded


@pytest.mark.parametrize("strategy", ["FULL_SHARD", "SHARD_GRAD_OP"])
def test_fsdp1_resharded_units_hold_no_pages(strategy: str) -> None:
    spawn_threads(_fsdp1, 2, strategy)


def _fully_shard(rank: int, ws: int) -> None:
    model = Deep()
    for layer in model.layers:
        fully_shard(layer)
    fully_shard(model)
    groups = [layer._fsdp_state.group for layer in model.layers]
    out = model(np.ones((4, WIDTH)))
    assert [resident_bytes(g.storage.array) for g in groups] == [0] * 4
    assert live_unsharded_bytes() == 0
    out.sum().backward()
    assert [resident_bytes(g.storage.array) for g in groups] == [0] * 4
    assert live_unsharded_bytes() == 0
    assert [g.storage.nbytes for g in groups] == [UNIT] * 4


def test_fully_shard_resharded_units_hold_no_pages() -> None:
    spawn_threads(_fully_shard, 2)
