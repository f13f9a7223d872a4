"""shm.copy_bytes: ring copies are exact at every distance between the two buffers, and the
aliased distances (where glibc's copy stalls) go through the thread's bounce buffer."""

from __future__ import annotations

import mmap
import threading

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from mpdist.transport import shm


def _at(buf: memoryview, page_offset: int, nbytes: int) -> memoryview:
    """``nbytes`` of ``buf`` starting ``page_offset`` bytes past a page boundary."""
    base = shm.address_of(buf)
    assert base is not None
    start = (page_offset - base) % shm._PAGE
    return buf[start : start + nbytes]


def _in_fresh_thread(fn) -> object:
    """``fn()`` in a new thread (which has no bounce buffer yet); its result."""
    out: list[object] = []
    t = threading.Thread(target=lambda: out.append(fn()))
    t.start()
    t.join()
    return out[0]


@settings(max_examples=60, deadline=None)
@given(
    nbytes=st.sampled_from([1, 4095, 4096, 40000, 65536, 262144 + 8, shm._BOUNCE_MAX + 64]),
    src_off=st.integers(0, 4095),
    distance=st.one_of(st.integers(0, 80), st.integers(0, 4095)),
)
def test_every_distance_copies_exactly(nbytes: int, src_off: int, distance: int) -> None:
    ring = mmap.mmap(-1, nbytes + 2 * shm._PAGE)
    user = bytearray(nbytes + 2 * shm._PAGE)
    try:
        ring_mv, user_mv = memoryview(ring), memoryview(user)
        src = _at(ring_mv, src_off, nbytes)
        src[:] = np.random.default_rng(nbytes + src_off).integers(0, 256, nbytes, np.uint8)
        dst = _at(user_mv, (src_off + distance) % shm._PAGE, nbytes)
        src_at = shm.address_of(src)
        shm.copy_bytes(dst, src, None, src_at)
        assert dst.tobytes() == src.tobytes()
        del src, dst, ring_mv, user_mv
    finally:
        ring.close()


@pytest.mark.parametrize("distance", [16, 32, 63])
def test_an_aliased_copy_takes_the_bounce_buffer(distance: int) -> None:
    nbytes = 65536

    def copy(distance: int) -> bool:
        src_buf, dst_buf = bytearray(nbytes + shm._PAGE), bytearray(nbytes + 2 * shm._PAGE)
        src = _at(memoryview(src_buf), 100, nbytes)
        src[:] = bytes(range(256)) * (nbytes // 256)
        dst = _at(memoryview(dst_buf), 100 + distance, nbytes)
        shm.copy_bytes(dst, src)
        assert dst.tobytes() == src.tobytes()
        return shm._bounce.buf is not None

    assert _in_fresh_thread(lambda: copy(distance)) is True
    # far apart, or exactly a page apart: the plain copy, no bounce buffer made
    assert _in_fresh_thread(lambda: copy(2048)) is False
    assert _in_fresh_thread(lambda: copy(0)) is False


def test_a_read_only_source_is_copied_plainly() -> None:
    data = bytes(range(256)) * 64
    src = memoryview(data)  # read-only: no address
    assert shm.address_of(src) is None
    dst = bytearray(len(data))
    shm.copy_bytes(memoryview(dst), src)
    assert bytes(dst) == data
