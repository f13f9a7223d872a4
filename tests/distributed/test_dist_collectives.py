"""Every collective x every ReduceOp x every dtype x world sizes 1-4 against numpy references.

The ranks are threads (``spawn_threads``: the ``threaded`` backend runs the same algorithms
as ``tcp``), so the whole matrix costs one group per world size. Values are small integers, so every
reduction is exact in every dtype and results are compared for equality.
"""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from reduce_reference import reference

import mpdist as dist
from mpdist import ReduceOp
from mpdist.algorithms.reduction import check_op_dtype
from mpdist.autograd import Tensor
from mpdist.testing import spawn_threads

DTYPES = [
    np.float16,
    np.float32,
    np.float64,
    np.int8,
    np.int16,
    np.int32,
    np.int64,
    np.uint8,
    np.bool_,
]
OPS = list(ReduceOp)


def valid(op: ReduceOp, dtype: type) -> bool:
    try:
        check_op_dtype(op, np.dtype(dtype))
    except ValueError:
        return False
    return True


def data(rank: int, dtype: type, shape: tuple[int, ...], salt: int = 0) -> np.ndarray:
    """Rank ``rank``'s input: small values so products of 4 ranks fit in int8."""
    rng = np.random.default_rng([salt, rank])
    if np.dtype(dtype) == np.bool_:
        return rng.integers(0, 2, shape).astype(np.bool_)
    return rng.integers(1, 4, shape).astype(dtype)


def check(got: np.ndarray, want: np.ndarray, what: str) -> None:
    assert got.dtype == want.dtype, f"{what}: dtype {got.dtype} != {want.dtype}"
    assert np.array_equal(got, want), f"{what}: got {got!r}, want {want!r}"


def reducing_matrix(rank: int, n: int) -> int:
    shape = (2, 3)
    count = 0
    for salt, dtype in enumerate(DTYPES):
        everyone = [data(r, dtype, shape, salt) for r in range(n)]
        for op in OPS:
            if not valid(op, dtype):
                with pytest.raises(ValueError):
                    dist.all_reduce(data(rank, dtype, shape, salt), op=op)
                continue
            what = f"{op.name} {np.dtype(dtype)} n={n}"
            want = reference(everyone, op)
            a = data(rank, dtype, shape, salt)
            dist.all_reduce(a, op=op)
            check(a, want, "all_reduce " + what)

            root = (salt + op.value) % n
            a = data(rank, dtype, shape, salt)
            dist.reduce(a, dst=root, op=op)
            if rank == root:
                check(a, want, "reduce " + what)

            # reduce_scatter: rank r contributes in_list[i] = data(r, salt=i); out = op over r
            ins = [data(rank, dtype, shape, 100 + i) for i in range(n)]
            out = np.zeros(shape, dtype)
            dist.reduce_scatter(out, ins, op=op)
            check(
                out,
                reference([data(r, dtype, shape, 100 + rank) for r in range(n)], op),
                "reduce_scatter " + what,
            )

            big = data(rank, dtype, (2 * n, 3), salt)
            out = np.zeros((2, 3), dtype)
            dist.reduce_scatter_tensor(out, big, op=op)
            chunks = [data(r, dtype, (2 * n, 3), salt)[2 * rank : 2 * rank + 2] for r in range(n)]
            check(out, reference(chunks, op), "reduce_scatter_tensor " + what)
            count += 4
    return count


def moving_matrix(rank: int, n: int) -> int:
    shape = (3, 2)
    for salt, dtype in enumerate(DTYPES):
        everyone = [data(r, dtype, shape, salt) for r in range(n)]
        src = salt % n

        a = data(rank, dtype, shape, salt)
        dist.broadcast(a, src=src)
        check(a, everyone[src], "broadcast")

        outs = [np.zeros(shape, dtype) for _ in range(n)]
        dist.all_gather(outs, data(rank, dtype, shape, salt))
        for i in range(n):
            check(outs[i], everyone[i], "all_gather")

        cat = np.zeros((3 * n, 2), dtype)
        dist.all_gather_into_tensor(cat, data(rank, dtype, shape, salt))
        check(cat, np.concatenate(everyone), "all_gather_into_tensor concat")
        stacked = np.zeros((n, *shape), dtype)
        dist.all_gather_into_tensor(stacked, data(rank, dtype, shape, salt))
        check(stacked, np.stack(everyone), "all_gather_into_tensor stacked")

        gl = [np.zeros(shape, dtype) for _ in range(n)] if rank == src else None
        dist.gather(data(rank, dtype, shape, salt), gl, dst=src)
        if rank == src:
            for i in range(n):
                check(gl[i], everyone[i], "gather")

        out = np.zeros(shape, dtype)
        sl = [data(src, dtype, shape, 50 + i) for i in range(n)] if rank == src else None
        dist.scatter(out, sl, src=src)
        check(out, data(src, dtype, shape, 50 + rank), "scatter")

        # all_to_all: rank r sends in[i] = data(r, salt=200+i) to rank i, sizes i+1 rows
        ins = [data(rank, dtype, (i + 1, 2), 200 + i) for i in range(n)]
        outs = [np.zeros((rank + 1, 2), dtype) for _ in range(n)]
        dist.all_to_all(outs, ins)
        for i in range(n):
            check(outs[i], data(i, dtype, (rank + 1, 2), 200 + rank), "all_to_all")

        inp = data(rank, dtype, (2 * n, 2), salt)
        out = np.zeros((2 * n, 2), dtype)
        dist.all_to_all_single(out, inp)
        want = np.concatenate(
            [data(i, dtype, (2 * n, 2), salt)[2 * rank : 2 * rank + 2] for i in range(n)]
        )
        check(out, want, "all_to_all_single")
    return 1


@pytest.mark.parametrize("world_size", [1, 2, 3, 4])
def test_reducing_collectives_every_op_and_dtype(world_size):
    counts = spawn_threads(reducing_matrix, world_size)
    assert counts[0] > 0 and len(set(counts)) == 1


@pytest.mark.parametrize("world_size", [1, 2, 3, 4])
def test_data_movement_collectives_every_dtype(world_size):
    assert spawn_threads(moving_matrix, world_size) == [1] * world_size


def complex_and_tensor(rank: int, n: int) -> None:
    z = np.array([1 + 2j, 3 - 1j], np.complex64) * (rank + 1)
    dist.all_reduce(z, op=ReduceOp.AVG)
    want = np.array([1 + 2j, 3 - 1j], np.complex64) * (n + 1) / 2
    assert np.allclose(z, want)
    t = Tensor(np.full(3, float(rank)))
    dist.all_reduce(t)
    assert np.array_equal(t.data, np.full(3, sum(range(n)), float))
    outs = [Tensor(np.zeros(3)) for _ in range(n)]
    dist.all_gather(outs, t)
    assert all(np.array_equal(o.data, t.data) for o in outs)


def test_complex_avg_and_autograd_tensors():
    spawn_threads(complex_and_tensor, 3)


# ------------------------------------------------------------------ hypothesis


def splits_job(rank: int, n: int, send_rows: list[list[int]], cols: int, root: int) -> None:
    # send_rows[r][i]: rows rank r sends to rank i
    mine = send_rows[rank]
    inp = np.arange(sum(mine) * cols, dtype=np.int32).reshape(sum(mine), cols) + 1000 * rank
    recv_rows = [send_rows[i][rank] for i in range(n)]
    out = np.full((sum(recv_rows), cols), -1, np.int32)
    dist.all_to_all_single(out, inp, output_split_sizes=recv_rows, input_split_sizes=mine)
    pieces = []
    for i in range(n):
        theirs = send_rows[i]
        src = np.arange(sum(theirs) * cols, dtype=np.int32).reshape(sum(theirs), cols) + 1000 * i
        start = sum(theirs[:rank])
        pieces.append(src[start : start + theirs[rank]])
    assert np.array_equal(out, np.concatenate(pieces))
    a = np.full(cols, rank, np.int64)
    dist.broadcast(a, src=root)
    assert np.array_equal(a, np.full(cols, root))


@settings(max_examples=8, deadline=None)
@given(data=st.data(), n=st.integers(1, 4), cols=st.integers(1, 3))
def test_all_to_all_single_uneven_splits(data, n, cols):
    send_rows = data.draw(
        st.lists(st.lists(st.integers(0, 3), min_size=n, max_size=n), min_size=n, max_size=n)
    )
    root = data.draw(st.integers(0, n - 1))
    spawn_threads(splits_job, n, send_rows, cols, root)


def shapes_job(rank: int, n: int, shape: tuple[int, ...], root: int) -> None:
    a = np.full(shape, rank + 1, np.float64)
    dist.all_reduce(a)
    assert np.array_equal(a, np.full(shape, n * (n + 1) / 2))
    b = np.full(shape, rank, np.int16)
    dist.reduce(b, dst=root, op=ReduceOp.MAX)
    if rank == root:
        assert np.array_equal(b, np.full(shape, n - 1, np.int16))
    outs = [np.zeros(shape, np.uint8) for _ in range(n)]
    dist.all_gather(outs, np.full(shape, rank, np.uint8))
    assert all(np.array_equal(outs[i], np.full(shape, i, np.uint8)) for i in range(n))


@settings(max_examples=8, deadline=None)
@given(
    n=st.integers(1, 4),
    shape=st.lists(st.integers(0, 5), min_size=0, max_size=3).map(tuple),
    root=st.integers(0, 3),
)
def test_shapes_and_roots(n, shape, root):
    spawn_threads(shapes_job, n, shape, root % n)


def big_job(rank: int, n: int) -> None:
    # large enough for the ring algorithms (above the small-message switch)
    a = np.arange(300_000, dtype=np.float32) % 7 + rank
    dist.all_reduce(a)
    want = (np.arange(300_000, dtype=np.float32) % 7) * n + sum(range(n))
    assert np.array_equal(a, want)


def test_large_all_reduce_uses_ring():
    spawn_threads(big_job, 3)
