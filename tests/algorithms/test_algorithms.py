"""Every algorithm against numpy references, for world sizes 1-4, over both transports."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from mesh_helpers import KINDS, run_ranks
from reduce_reference import reference

import mpdist.algorithms as A
from mpdist.algorithms import (
    ReduceOp,
    halving_doubling,
    recursive_doubling,
    ring_allgather,
    ring_allreduce,
)
from mpdist.errors import DistBackendError

DTYPES = ["float16", "float32", "float64", "int8", "int16", "int32", "int64", "uint8", "bool"]
SIZES = [1, 2, 3, 4]


def valid(op: ReduceOp, dtype: str) -> bool:
    if op in (ReduceOp.BAND, ReduceOp.BOR, ReduceOp.BXOR) and dtype.startswith("float"):
        return False
    return not (op is ReduceOp.AVG and dtype == "bool")


def data(rank: int, dtype: str, n: int, salt: int = 0) -> np.ndarray:
    """Values whose sums and products are exact in every dtype, so any order gives the same bits."""
    rng = np.random.default_rng(1000 * salt + rank)
    if dtype == "bool":
        return rng.random(n) > 0.5
    if dtype == "uint8":
        return rng.integers(0, 6, n).astype(dtype)
    if dtype.startswith("float"):
        return (rng.integers(-4, 5, n) / 2).astype(dtype)
    return rng.integers(-5, 6, n).astype(dtype)


def test_reference_is_right_on_hand_worked_values() -> None:
    """The reference itself, on values worked out by hand (including int8 wrap-around)."""
    a = [np.array([100, -3, 7], np.int8), np.array([100, 2, -8], np.int8)]
    assert reference(a, ReduceOp.SUM).tolist() == [-56, -1, -1]
    assert reference(a, ReduceOp.PRODUCT).tolist() == [16, -6, -56]
    assert reference(a, ReduceOp.AVG).tolist() == [-28, -1, -1]
    assert reference(a, ReduceOp.MIN).tolist() == [100, -3, -8]
    assert reference(a, ReduceOp.BAND).tolist() == [100, 0, 0]
    assert reference(a, ReduceOp.BXOR).tolist() == [0, -1, -1]
    b = [np.array([True, False, True]), np.array([True, False, False])]
    assert reference(b, ReduceOp.SUM).tolist() == [True, False, True]
    assert reference(b, ReduceOp.PRODUCT).tolist() == [True, False, False]
    assert reference(b, ReduceOp.BXOR).tolist() == [False, False, True]
    f = [np.array([1.5, -2.0], np.float16), np.array([0.5, 1.0], np.float16)]
    assert reference(f + [f[0]], ReduceOp.AVG).tolist() == [np.float16(3.5 / 3), -1.0]
    assert reference(f, ReduceOp.PRODUCT).dtype == np.float16


def combos() -> list[tuple[int, ReduceOp, str]]:
    return [
        (i, op, dt)
        for i, (op, dt) in enumerate((op, dt) for op in ReduceOp for dt in DTYPES)
        if valid(op, dt)
    ]


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("size", SIZES)
def test_reductions_every_op_and_dtype(kind: str, size: int) -> None:
    n = 13

    def fn(comm: A.Communicator):
        out = {}
        for i, op, dt in combos():
            x = data(comm.rank, dt, n, i)
            A.allreduce(comm, x, op)
            y = data(comm.rank, dt, n, i)
            root = i % size
            A.reduce(comm, y, root, op)
            ins = [data(comm.rank, dt, n, i * 10 + j) for j in range(size)]
            z = np.empty(n, dt)
            A.reduce_scatter(comm, z, ins, op)
            out[i] = (x, y, z)
        return out

    res = run_ranks(size, fn, kind)
    for i, op, dt in combos():
        ref = reference([data(r, dt, n, i) for r in range(size)], op)
        for r in range(size):
            x, y, z = res[r][i]
            assert x.dtype == np.dtype(dt)
            assert np.array_equal(x, ref), (op, dt, r)
            if r == i % size:
                assert np.array_equal(y, ref), (op, dt, r)
            else:  # non-roots keep their input
                assert np.array_equal(y, data(r, dt, n, i))
            zref = reference([data(q, dt, n, i * 10 + r) for q in range(size)], op)
            assert np.array_equal(z, zref), (op, dt, r)


ALGOS = {
    "rd": recursive_doubling.allreduce,
    "hd": halving_doubling.allreduce,
    "ring": ring_allreduce.allreduce,
}


def run_algo(comm: A.Communicator, algo: str, x: np.ndarray, op: ReduceOp) -> None:
    comm.start("all_reduce", x.dtype, x.nbytes, x.shape, -1, op.value)
    if comm.size > 1:
        ALGOS[algo](comm, x.reshape(-1), op, "all_reduce")
    comm.finish()


@pytest.mark.parametrize("kind", ["local", "tcp"])
@pytest.mark.parametrize("algo", sorted(ALGOS))
@pytest.mark.parametrize("size", [2, 3, 4, 5])
def test_each_allreduce_algorithm(algo: str, size: int, kind: str) -> None:
    cases = [(ReduceOp.SUM, "float32"), (ReduceOp.MAX, "int8"), (ReduceOp.PRODUCT, "int64")]

    def fn(comm: A.Communicator):
        out = []
        for i, (op, dt) in enumerate(cases):
            for n in (0, 1, size + 1, 30011):
                x = data(comm.rank, dt, n, i)
                run_algo(comm, algo, x, op)
                out.append(x)
        return out

    res = run_ranks(size, fn, kind)
    j = 0
    for i, (op, dt) in enumerate(cases):
        for n in (0, 1, size + 1, 30011):
            ref = reference([data(r, dt, n, i) for r in range(size)], op)
            for r in range(size):
                assert np.array_equal(res[r][j], ref), (algo, op, dt, n, r)
            j += 1


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("size", [2, 3, 4])
def test_large_allreduce(kind: str, size: int) -> None:
    cases = [(ReduceOp.SUM, "float32"), (ReduceOp.AVG, "float64")]
    n = (3 << 20) // 8 + 1001

    def fn(comm: A.Communicator):
        out = []
        for i, (op, dt) in enumerate(cases):
            x = data(comm.rank, dt, n, i).reshape(-1, 1)
            A.allreduce(comm, x, op)
            out.append(x)
        return out

    res = run_ranks(size, fn, kind)
    for i, (op, dt) in enumerate(cases):
        ref = reference([data(r, dt, n, i) for r in range(size)], op).reshape(-1, 1)
        for r in range(size):
            assert np.array_equal(res[r][i], ref)


def test_allreduce_algorithm_switch() -> None:
    assert A.allreduce_algorithm(4, 2) == "rd"
    assert A.allreduce_algorithm(16 << 20, 2) == "ring"
    assert A.allreduce_algorithm(6 << 20, 2) == "rd"
    assert A.allreduce_algorithm((6 << 20) + 1, 2) == "ring"
    assert A.allreduce_algorithm(1 << 20, 4) == "hd"
    assert A.allreduce_algorithm(64 << 20, 4) == "ring"
    assert A.allreduce_algorithm(1 << 20, 3) == "ring"
    assert A.allreduce_algorithm(1 << 10, 3) == "rd"


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("size", SIZES)
def test_data_movement_collectives(kind: str, size: int) -> None:
    def fn(comm: A.Communicator):
        r = comm.rank
        out = {}
        b = np.full((2, 3), r, np.int16)
        A.broadcast(comm, b, size - 1)
        out["bcast"] = b
        big = np.arange(400_000, dtype=np.float32) if r == 0 else np.zeros(400_000, np.float32)
        A.broadcast(comm, big, 0)
        out["bcast_big"] = bool((big == np.arange(400_000, dtype=np.float32)).all())
        outs = [np.empty((2, 2), np.float64) for _ in range(size)]
        A.allgather(comm, outs, np.full((2, 2), r + 0.5))
        out["allgather"] = outs
        g = [np.empty(3, np.uint8) for _ in range(size)] if r == 0 else None
        A.gather(comm, np.full(3, r, np.uint8), g, 0)
        out["gather"] = g
        s_in = [np.full(2, 10 * i, np.int64) for i in range(size)] if r == size - 1 else None
        s_out = np.empty(2, np.int64)
        A.scatter(comm, s_out, s_in, size - 1)
        out["scatter"] = s_out
        # uneven all-to-all: rank r sends r + i + 1 items to rank i
        a_in = [np.full(r + i + 1, 100 * r + i, np.int32) for i in range(size)]
        a_out = [np.empty(i + r + 1, np.int32) for i in range(size)]
        A.alltoall(comm, a_out, a_in)
        out["alltoall"] = a_out
        A.barrier(comm)
        return out

    res = run_ranks(size, fn, kind)
    for r in range(size):
        o = res[r]
        assert np.array_equal(o["bcast"], np.full((2, 3), size - 1, np.int16))
        assert o["bcast_big"]
        assert [a[0, 0] for a in o["allgather"]] == [i + 0.5 for i in range(size)]
        if r == 0:
            assert [a.tolist() for a in o["gather"]] == [[i] * 3 for i in range(size)]
        assert o["scatter"].tolist() == [10 * r] * 2
        assert [a.tolist() for a in o["alltoall"]] == [
            [100 * i + r] * (i + r + 1) for i in range(size)
        ]


@pytest.mark.parametrize("kind", ["local", "tcp"])
@pytest.mark.parametrize("algo", sorted(ALGOS))
@pytest.mark.parametrize("size", [2, 3, 4])
def test_allreduce_bitwise_identical_on_every_rank(algo: str, size: int, kind: str) -> None:
    n = 100_003

    def fn(comm: A.Communicator):
        x = np.random.default_rng(comm.rank).standard_normal(n).astype(np.float32)
        run_algo(comm, algo, x, ReduceOp.SUM)
        y = np.random.default_rng(comm.rank).standard_normal(n).astype(np.float32)
        A.allreduce(comm, y, ReduceOp.AVG)
        return x.tobytes() + y.tobytes()

    res = run_ranks(size, fn, kind)
    assert len(set(res)) == 1


@settings(max_examples=25, deadline=None)
@given(
    size=st.integers(1, 5),
    n=st.integers(0, 40),
    chunk=st.sampled_from([4, 12, 40, 1 << 20]),
    op=st.sampled_from([ReduceOp.SUM, ReduceOp.MAX, ReduceOp.PRODUCT]),
    algo=st.sampled_from(["ring", "hd"]),
)
def test_chunked_allreduce_any_shape_and_chunking(
    size: int, n: int, chunk: int, op: ReduceOp, algo: str
) -> None:
    def fn(comm: A.Communicator):
        x = data(comm.rank, "int32", n)
        comm.start("all_reduce", x.dtype, x.nbytes, x.shape, -1, op.value)
        if comm.size > 1:
            ALGOS[algo](comm, x, op, "all_reduce", chunk_bytes=chunk)
        comm.finish()
        return x

    res = run_ranks(size, fn, "local")
    ref = reference([data(r, "int32", n) for r in range(size)], op)
    for x in res:
        assert np.array_equal(x, ref)


@settings(max_examples=15, deadline=None)
@given(
    size=st.integers(1, 4),
    shape=st.lists(st.integers(0, 4), min_size=0, max_size=3).map(tuple),
    root=st.integers(0, 3),
    splits=st.lists(st.integers(0, 3), min_size=16, max_size=16),
)
def test_roots_shapes_and_splits(size: int, shape: tuple, root: int, splits: list[int]) -> None:
    root %= size

    def cnt(src: int, dst: int) -> int:
        return splits[src * 4 + dst]

    def fn(comm: A.Communicator):
        r = comm.rank
        x = data(r, "float64", int(np.prod(shape)), 3).reshape(shape)
        A.reduce(comm, x, root, ReduceOp.SUM)
        b = data(r, "int64", int(np.prod(shape)), 4).reshape(shape)
        A.broadcast(comm, b, root)
        a_in = [np.full(cnt(r, i), r, np.int16) for i in range(size)]
        a_out = [np.empty(cnt(i, r), np.int16) for i in range(size)]
        A.alltoall(comm, a_out, a_in, op_name="all_to_all_single")
        return x, b, a_out

    res = run_ranks(size, fn, "local")
    m = int(np.prod(shape))
    ref = reference([data(r, "float64", m, 3) for r in range(size)], ReduceOp.SUM).reshape(shape)
    assert np.array_equal(res[root][0], ref)
    for r in range(size):
        assert np.array_equal(res[r][1], data(root, "int64", m, 4).reshape(shape))
        assert [a.tolist() for a in res[r][2]] == [[i] * cnt(i, r) for i in range(size)]


def _mismatch(kind: str, size: int, call, match: str) -> None:
    def fn(comm: A.Communicator):
        try:
            call(comm)
            A.barrier(comm)  # a rank that did not notice at once must raise now
        except DistBackendError as e:
            return str(e)
        return "no error"

    res = run_ranks(size, fn, kind, timeout=10)
    for r, msg in enumerate(res):
        assert "mismatch" in msg or "did not expect" in msg, (r, msg)
        assert match in msg, (r, msg)


@pytest.mark.parametrize("kind", KINDS)
def test_mismatched_dtype_raises_on_every_rank(kind: str) -> None:
    def call(comm: A.Communicator) -> None:
        A.allreduce(comm, np.ones(4, np.float64 if comm.rank == 1 else np.float32))

    _mismatch(kind, 3, call, "all_reduce")


@pytest.mark.parametrize("kind", KINDS)
def test_mismatched_shape_raises_on_every_rank(kind: str) -> None:
    def call(comm: A.Communicator) -> None:
        A.allreduce(comm, np.ones((2, 3) if comm.rank == 0 else (3, 2)))

    _mismatch(kind, 2, call, "different shapes")


@pytest.mark.parametrize("kind", KINDS)
def test_mismatched_collective_raises_on_every_rank(kind: str) -> None:
    def call(comm: A.Communicator) -> None:
        if comm.rank == 0:
            A.broadcast(comm, np.ones(4), 0)
        else:
            A.allreduce(comm, np.ones(4))

    _mismatch(kind, 3, call, "broadcast")


@pytest.mark.parametrize("kind", KINDS)
def test_mismatched_root_raises_on_every_rank(kind: str) -> None:
    def call(comm: A.Communicator) -> None:
        A.broadcast(comm, np.ones(4), 0 if comm.rank == 0 else 1)

    _mismatch(kind, 3, call, "root")


@pytest.mark.parametrize("kind", KINDS)
def test_mismatched_split_sizes_raise(kind: str) -> None:
    def call(comm: A.Communicator) -> None:
        n_out = 3 if comm.rank == 1 else 2  # rank 1 expects 3 items but gets 2
        A.alltoall(
            comm,
            [np.empty(2 if i != 0 or comm.rank != 1 else n_out) for i in range(2)],
            [np.ones(2) for _ in range(2)],
        )

    _mismatch(kind, 2, call, "bytes")


def test_bad_arguments_raise_locally_and_group_stays_usable() -> None:
    def fn(comm: A.Communicator):
        with pytest.raises(ValueError, match="contiguous"):
            A.allreduce(comm, np.ones((4, 4))[:, ::2])
        with pytest.raises(ValueError, match="BAND"):
            A.allreduce(comm, np.ones(3), ReduceOp.BAND)
        with pytest.raises(ValueError, match="root"):
            A.broadcast(comm, np.ones(3), 7)
        with pytest.raises(ValueError, match="entries"):
            A.allgather(comm, [np.ones(3)], np.ones(3))
        with pytest.raises(TypeError, match="dtype"):
            A.allgather(comm, [np.ones(3), np.ones(3, np.float32)], np.ones(3))
        with pytest.raises(ValueError, match="required"):
            A.gather(comm, np.ones(1), None, comm.rank)
        x = np.ones(2)
        A.allreduce(comm, x)
        return x.tolist()

    assert run_ranks(2, fn, "tcp") == [[2.0, 2.0]] * 2


@pytest.mark.parametrize("kind", KINDS)
def test_mismatched_reduce_op_raises_on_every_rank(kind: str) -> None:
    def call(comm: A.Communicator) -> None:
        A.allreduce(comm, np.ones(3), ReduceOp.MAX if comm.rank == 2 else ReduceOp.SUM)

    _mismatch(kind, 4, call, "reduce op")


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("op", ["reduce", "gather"])
def test_two_ranks_each_thinking_it_is_root_fail_fast(kind: str, op: str) -> None:
    def call(comm: A.Communicator) -> None:
        comm.timeout_s = 30.0  # must not be what ends it
        x = np.ones(3)
        if op == "reduce":
            A.reduce(comm, x, comm.rank)
        else:
            A.gather(comm, x, [np.empty(3) for _ in range(comm.size)], comm.rank)

    _mismatch(kind, 2, call, "root")


@pytest.mark.parametrize("kind", ["local", "tcp"])
@pytest.mark.parametrize("size", [2, 3, 4])
def test_all_gather_and_reduce_scatter_on_both_sides_of_the_direct_threshold(
    kind: str, size: int
) -> None:
    # small blocks go to every rank at once (direct), big ones round the ring; all_gather
    # in a small group goes direct up to a bigger threshold (its big blocks: posted at once)
    small = 5
    big = A.DIRECT_BLOCK_BYTES // 4 + 3  # float32 elements: just over the threshold
    huge = A.DIRECT_ALLGATHER_BYTES // 4 + 3  # all_gather's ring
    sizes = (small, big, huge)

    def fn(comm: A.Communicator):
        out = []
        for n in sizes:
            mine = data(comm.rank, "float32", n, n)
            gathered = [np.empty(n, np.float32) for _ in range(size)]
            A.allgather(comm, gathered, mine)
            ins = [data(comm.rank, "float32", n, 7 * n + j) for j in range(size)]
            z = np.empty(n, np.float32)
            A.reduce_scatter(comm, z, ins, ReduceOp.SUM)
            out.append((gathered, z))
        return out

    res = run_ranks(size, fn, kind)
    for r in range(size):
        for (gathered, z), n in zip(res[r], sizes, strict=True):
            for q in range(size):
                assert np.array_equal(gathered[q], data(q, "float32", n, n))
            zref = reference([data(q, "float32", n, 7 * n + r) for q in range(size)], ReduceOp.SUM)
            assert np.array_equal(z, zref)


@pytest.mark.parametrize("size", [4, 8])
def test_small_reduce_scatter_of_a_power_of_two_group_is_one_butterfly(
    size: int, monkeypatch: pytest.MonkeyPatch
) -> None:
    # a whole input (every rank's blocks) up to the group's allowance is reduced by
    # recursive doubling, each rank keeping its block; one item more and it goes direct
    butterflies: list[int] = []
    real = recursive_doubling.reduce_scatter_blocking

    def spy(comm, output, inputs, op, op_name) -> None:  # type: ignore[no-untyped-def]
        butterflies.append(output.nbytes)
        real(comm, output, inputs, op, op_name)

    monkeypatch.setattr(recursive_doubling, "reduce_scatter_blocking", spy)
    cases = [(op, dt) for op in ReduceOp for dt in ("float32", "int64", "bool") if valid(op, dt)]

    def fn(comm: A.Communicator):
        latency = comm.transport.latency_bytes >> A.butterfly_shift(size)
        out = {}
        for i, (op, dt) in enumerate(cases):
            fits = latency // (np.dtype(dt).itemsize * size)
            for n in (1, fits, fits + 1):
                ins = [data(comm.rank, dt, n, 10 * i + j) for j in range(size)]
                kept = [x.copy() for x in ins]
                z = np.empty(n, dt)
                A.reduce_scatter(comm, z, ins, op)
                assert all(np.array_equal(a, b) for a, b in zip(ins, kept, strict=True))
                out[(op, dt, n)] = (i, z)
        return out, latency

    res = run_ranks(size, fn, "tcp")
    latency = res[0][1]
    for r in range(size):
        for (op, dt, n), (i, z) in res[r][0].items():
            ref = reference(
                [data(q, dt, n, 10 * i + j) for q, j in [(q, r) for q in range(size)]], op
            )
            assert np.array_equal(z, ref), (op, dt, n, r)
    fitting = [
        n * np.dtype(dt).itemsize
        for (op, dt, n) in res[0][0]
        if n * np.dtype(dt).itemsize * size <= latency
    ]
    assert sorted(butterflies) == sorted(fitting * size)
    assert latency == 0 or len(fitting) == 2 * len(cases)


@pytest.mark.parametrize("size", [2, 3, 4])
@pytest.mark.parametrize("path", ["direct", "ring"])
def test_reduce_scatter_reduces_from_the_shared_ring_and_gives_every_payload_back(
    size: int, path: str
) -> None:
    # blocks past the latency path (direct) and past the direct threshold (ring) are
    # reduced straight from the payload the transport lends (the shared ring between two
    # processes' transports)
    # just past the latency path (direct, lending) or past the direct threshold (ring);
    # int64 blocks are twice as big, still on the same side of the next threshold
    limit = A.DIRECT_BLOCK_BYTES if path == "direct" else A.DIRECT_REDUCE_SCATTER_BYTES
    n = limit // 4 + 3

    def fn(comm: A.Communicator):
        out = {}
        for i, op in enumerate(ReduceOp):
            for dt in ("float32", "int64"):
                if not valid(op, dt):
                    continue
                ins = [data(comm.rank, dt, n, 10 * i + j) for j in range(size)]
                z = np.empty(n, dt)
                A.reduce_scatter(comm, z, ins, op)
                out[(op, dt)] = (i, z)
        A.barrier(comm)  # every rank has finished reading what it was sent
        # every payload this rank put in a ring was lent, read and given back by its peer
        rings = [p.tx_ring for p in comm.transport._peers if p is not None and p.tx_ring]
        unreleased = [ring.allocated - int(ring._ctrl[0]) for ring in rings]
        return out, len(rings), unreleased, sum(ring.allocated for ring in rings)

    res = run_ranks(size, fn, "tcp")
    for r in range(size):
        out, n_rings, unreleased, sent = res[r]
        assert n_rings == size - 1, "the transports must share rings for this test"
        assert sent >= len(out)  # the payloads went through the rings
        assert unreleased == [0] * (size - 1)
        for (op, dt), (i, z) in out.items():
            ref = reference([data(q, dt, n, 10 * i + r) for q in range(size)], op)
            assert np.array_equal(z, ref), (op, dt, r)


@pytest.mark.parametrize("kind", ["local", "tcp"])
@pytest.mark.parametrize("size", [2, 3, 4])
@pytest.mark.parametrize("n", [1, 7, 2503])  # one chunk; fewer than the window; many more
def test_ring_all_gather_in_chunks_with_a_window_of_them_in_flight(
    kind: str, size: int, n: int
) -> None:
    # 1000-byte chunks (not a multiple of the item size): a float64 block of 2503 items is
    # 21 chunks, more than the window (3 of them: three quarters of 4000 bytes), cut mid-item
    def fn(comm: A.Communicator):
        comm.transport.inflight_bytes = 4000
        mine = data(comm.rank, "float64", n, n)
        gathered = [np.full(n, np.nan) for _ in range(size)]
        comm.start("all_gather", mine.dtype, mine.nbytes, mine.shape)
        ring_allgather.allgather(comm, gathered, mine, "all_gather", chunk_bytes=1000)
        comm.finish()
        return gathered

    res = run_ranks(size, fn, kind)
    for r in range(size):
        for q in range(size):
            assert np.array_equal(res[r][q], data(q, "float64", n, n)), (r, q)


def test_window_is_a_share_of_what_the_transport_holds_per_peer() -> None:
    class Holding:
        rank, size = 0, 2

        def __init__(self, inflight: int) -> None:
            self.inflight_bytes = inflight

    ring = A.Communicator(Holding(16 << 20), 1.0)  # the tcp transport's shared ring
    assert ring.window(4 << 20, 3) == 3  # ring all-gather: 12 of its 16 MiB
    assert ring.window(1 << 20, 2) == 8  # ring allreduce: 8 MiB
    assert ring.window(64 << 20, 3) == 1  # a chunk bigger than the share: one at a time
    assert A.Communicator(Holding(0), 1.0).window(4 << 20, 3) >= 1 << 40  # no limit


@pytest.mark.parametrize("size", [2, 3, 4])
def test_ring_allreduce_with_more_chunks_than_its_window_between_processes(size: int) -> None:
    # 256-byte chunks: each rank's segment is ~20 of them, more than the window in flight
    # (8 of them: half of 4096 bytes)
    n = 20 * 64 * size + 5

    def fn(comm: A.Communicator):
        comm.transport.inflight_bytes = 4096
        x = data(comm.rank, "int32", n)
        comm.start("all_reduce", x.dtype, x.nbytes, x.shape, -1, ReduceOp.SUM.value)
        ring_allreduce.allreduce(comm, x, ReduceOp.SUM, "all_reduce", chunk_bytes=256)
        comm.finish()
        return x

    res = run_ranks(size, fn, "tcp")
    ref = reference([data(r, "int32", n) for r in range(size)], ReduceOp.SUM)
    for x in res:
        assert np.array_equal(x, ref)
