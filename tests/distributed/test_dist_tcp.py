"""The tcp backend with real rank processes: results, failures, strangers and clean teardown.

A representative subset of the collective matrix runs over TCP and must give bitwise the
same results as the threaded backend on the same inputs (same algorithms). Ranks run under
the harness: ``spawn_ranks`` where values come back to the parent, the ``mpdist`` marker
where each rank asserts for itself.
"""

from __future__ import annotations

import os
import socket
import threading
from datetime import timedelta

import numpy as np
import psutil
import pytest

import mpdist as dist
from mpdist import DistBackendError, DistNetworkError, ReduceOp
from mpdist.testing import spawn_ranks, spawn_threads


def representative(rank: int, n: int) -> dict[str, object]:
    rng = np.random.default_rng(rank)
    out: dict[str, object] = {}

    a = rng.standard_normal(1000).astype(np.float32)
    dist.all_reduce(a)
    out["all_reduce_small"] = a
    big = rng.standard_normal(200_000).astype(np.float32)
    dist.all_reduce(big, op=ReduceOp.AVG)
    out["all_reduce_big_avg"] = big
    m = rng.integers(-50, 50, 17).astype(np.int32)
    dist.all_reduce(m, op=ReduceOp.MAX)
    out["all_reduce_max"] = m
    bits = rng.integers(0, 255, 9).astype(np.uint8)
    dist.all_reduce(bits, op=ReduceOp.BXOR)
    out["all_reduce_bxor"] = bits

    b = rng.standard_normal((4, 4))
    dist.broadcast(b, src=n - 1)
    out["broadcast"] = b

    outs = [np.zeros(5, np.float16) for _ in range(n)]
    dist.all_gather(outs, rng.standard_normal(5).astype(np.float16))
    out["all_gather"] = np.stack(outs)

    rs = np.zeros(3, np.float64)
    dist.reduce_scatter_tensor(rs, rng.standard_normal(3 * n), op=ReduceOp.SUM)
    out["reduce_scatter_tensor"] = rs

    red = rng.standard_normal(6)
    dist.reduce(red, dst=1, op=ReduceOp.PRODUCT)
    out["reduce"] = red if rank == 1 else None

    splits_in = [(rank + i) % 3 for i in range(n)]
    splits_out = [(i + rank) % 3 for i in range(n)]
    a2a = np.zeros((sum(splits_out), 2), np.int64)
    dist.all_to_all_single(
        a2a,
        np.arange(sum(splits_in) * 2, dtype=np.int64).reshape(-1, 2) + 100 * rank,
        output_split_sizes=splits_out,
        input_split_sizes=splits_in,
    )
    out["all_to_all_single"] = a2a

    gl = [np.zeros(2, np.int16) for _ in range(n)] if rank == 0 else None
    dist.gather(np.full(2, rank, np.int16), gl, dst=0)
    out["gather"] = None if gl is None else np.stack(gl)
    sc = np.zeros(2, np.int8)
    dist.scatter(sc, [np.full(2, i, np.int8) for i in range(n)] if rank == 2 else None, src=2)
    out["scatter"] = sc

    # async work runs in issue order; a synchronous op issued behind it waits its turn
    x = np.full(3, float(rank))
    w1 = dist.all_reduce(x, async_op=True)
    y = [np.zeros(1) for _ in range(n)]
    w2 = dist.all_gather(y, np.array([float(rank)]), async_op=True)
    z = np.full(2, rank + 1.0)
    dist.all_reduce(z, op=ReduceOp.MAX)
    assert w1.wait(timeout=timedelta(seconds=10)) and w2.wait(10)
    assert w1.get_future().value()[0] is x and w1.is_success()
    out["async"] = (x, np.stack(y), z)

    # point to point: tags keep messages apart; any-source receives name the sender
    if rank == 0:
        got = {}
        for _ in range(n - 1):
            buf = np.zeros(2)
            src = dist.recv(buf, tag=7)
            got[src] = buf.copy()
        t9 = np.zeros(1)
        dist.recv(t9, src=1, tag=9)
        out["p2p"] = (sorted(got), [got[s] for s in sorted(got)], t9)
    else:
        if rank == 1:
            w = dist.isend(np.array([99.0]), dst=0, tag=9)
        dist.send(np.full(2, rank * 10.0), dst=0, tag=7)
        if rank == 1:
            w.wait()
        out["p2p"] = None

    objs: list[object] = [None] * n
    dist.all_gather_object(objs, {"rank": rank, "text": "x" * rank})
    out["all_gather_object"] = objs
    bl = [f"from {rank}", rank] if rank == 1 else [None, None]
    dist.broadcast_object_list(bl, src=1)
    out["broadcast_object_list"] = bl

    g = dist.new_group([0, 2])
    if rank == 1:
        assert g == dist.GroupMember.NON_GROUP_MEMBER and dist.get_rank(g) == -1
    else:
        assert dist.get_rank(g) == rank // 2 and dist.get_world_size(g) == 2
        v = np.array([rank + 1])
        dist.all_reduce(v, group=g)
        assert v[0] == 4
        # global ranks in arguments, even inside a subgroup
        s = np.array([rank])
        dist.broadcast(s, src=2, group=g)
        assert s[0] == 2
    # both ranks post a send bigger than the socket buffers before their receive
    right, left = (rank + 1) % n, (rank - 1) % n
    ring = np.zeros(300_000)
    works = dist.batch_isend_irecv(
        [
            dist.P2POp(dist.isend, np.full(300_000, float(rank)), right),
            dist.P2POp(dist.irecv, ring, left),
        ]
    )
    for w in works:
        w.wait()
    assert np.array_equal(ring, np.full(300_000, float(left)))
    dist.barrier()
    return out


def assert_same(a: object, b: object, where: str = "") -> None:
    if isinstance(a, np.ndarray):
        assert isinstance(b, np.ndarray) and a.dtype == b.dtype, where
        assert np.array_equal(a, b), f"{where}: {a} != {b}"
    elif isinstance(a, (list, tuple)):
        assert type(a) is type(b) and len(a) == len(b), where
        for i, (x, y) in enumerate(zip(a, b, strict=True)):
            assert_same(x, y, f"{where}[{i}]")
    elif isinstance(a, dict):
        assert a.keys() == b.keys(), where
        for k in a:
            assert_same(a[k], b[k], f"{where}.{k}")
    else:
        assert a == b, f"{where}: {a!r} != {b!r}"


def test_tcp_results_equal_threaded_and_numpy():
    n = 3
    tcp = spawn_ranks(representative, n)  # the default group is tcp
    threaded = spawn_threads(representative, n)
    for r in range(n):
        assert_same(tcp[r], threaded[r], f"rank {r}")
    # spot checks against numpy
    inputs = [np.random.default_rng(r).standard_normal(1000).astype(np.float32) for r in range(n)]
    assert np.allclose(tcp[0]["all_reduce_small"], sum(inputs), atol=1e-4)
    for r in range(n):  # all_reduce is bitwise identical on every rank
        assert np.array_equal(tcp[r]["all_reduce_big_avg"], tcp[0]["all_reduce_big_avg"])
    assert tcp[0]["p2p"][0] == [1, 2]
    assert np.array_equal(tcp[0]["p2p"][1][1], [20.0, 20.0])
    assert tcp[0]["p2p"][2][0] == 99.0
    assert tcp[2]["all_gather_object"][1] == {"rank": 1, "text": "x"}
    assert tcp[0]["broadcast_object_list"] == ["from 1", 1]
    x, y, z = tcp[1]["async"]
    assert np.array_equal(x, np.full(3, 3.0)) and np.array_equal(y[:, 0], [0, 1, 2])
    assert np.array_equal(z, [3.0, 3.0])


@pytest.mark.mpdist(world_size=2)
def test_cross_rank_shape_dtype_and_op_mismatch_raise_on_every_rank(rank, world_size):
    for case in ("shape", "dtype", "op"):
        g = dist.new_group()
        with pytest.raises(DistBackendError) as info:
            if case == "shape":
                dist.all_reduce(np.zeros(3 + rank), group=g)
            elif case == "dtype":
                dist.all_reduce(np.zeros(4, np.float32 if rank else np.float64), group=g)
            elif rank == 0:
                dist.all_reduce(np.zeros(4), group=g)
            else:
                dist.broadcast(np.zeros(4), src=0, group=g)
        msg = str(info.value)
        assert "all_reduce" in msg or "broadcast" in msg, f"{case}: {msg}"
        assert "rank" in msg, f"{case}: {msg}"
        dist.destroy_process_group(g)
    # the default group is untouched by the other groups' failures
    a = np.ones(2)
    dist.all_reduce(a)
    assert np.array_equal(a, [world_size, world_size])


def dies(rank: int, n: int) -> str:
    a = np.ones(4)
    dist.all_reduce(a)
    if rank == 1:
        os._exit(3)
    try:
        dist.all_reduce(a)
    except DistNetworkError as e:
        return str(e)
    return "no error"


def test_peer_that_exits_mid_job_raises_network_error_naming_it():
    res = spawn_ranks(dies, 2, may_die=[1], group_timeout=15)
    assert res[1] is None
    assert "rank 1" in res[0], res[0]


def with_stranger(rank: int, n: int, path: str) -> float:
    from mpdist.store import FileStore

    store = FileStore(path, n)
    if rank == n - 1:
        # before joining, knock on rank 0's door with a bogus handshake: refused
        host, _, port = store.get("mpdist/1/0/mpdist_tcp/addr/0").decode().rpartition(":")
        with socket.create_connection((host, int(port)), timeout=10) as s:
            s.sendall(b"\x00" * 16)
            assert s.recv(1) == b""
    dist.init_process_group("tcp", store=store, rank=rank, world_size=n)
    a = np.full(2, rank + 1.0)
    dist.all_reduce(a)
    dist.destroy_process_group()
    store.close()
    return float(a[0])


def test_stranger_is_refused_and_job_carries_on(tmp_path):
    path = str(tmp_path / "stranger")
    assert spawn_ranks(with_stranger, 3, path, backend=None) == [6.0] * 3


def resources() -> tuple[int, int, int]:
    proc = psutil.Process()
    return threading.active_count(), proc.num_fds(), len(proc.net_connections(kind="inet"))


def reinit(rank: int, n: int, base: str, ports: list[int]) -> list[tuple[int, int, int]]:
    from mpdist.store import FileStore, HashStore

    seen = [resources()]
    for i in range(4):
        store = None
        if i == 1:
            url = f"file://{base}-{i}?rank={rank}&world_size={n}"
            dist.init_process_group("gloo", init_method=url)
        elif i == 2:  # rank 0 runs a TCPStore server, which destroy must shut down
            url = f"tcp://127.0.0.1:{ports[0]}?rank={rank}&world_size={n}"
            dist.init_process_group("tcp", init_method=url)
        elif i == 3:  # no store, no init_method: env://
            os.environ.update(
                RANK=str(rank),
                WORLD_SIZE=str(n),
                MASTER_ADDR="127.0.0.1",
                MASTER_PORT=str(ports[1]),
            )
            dist.init_process_group()
        else:
            store = FileStore(f"{base}-{i}", n)
            dist.init_process_group("tcp", store=store, rank=rank, world_size=n)
        assert dist.is_initialized() and dist.get_backend() in ("tcp", "gloo")
        a = np.ones(3)
        w = dist.all_reduce(a, async_op=True)
        g = dist.new_group([0, 1])
        dist.all_reduce(a, group=g)
        w.wait()
        with pytest.raises(ValueError, match="twice"):
            dist.init_process_group("tcp", store=HashStore(), rank=0, world_size=1)
        dist.destroy_process_group()
        assert not dist.is_initialized()
        if store is not None:
            store.close()
        seen.append(resources())
    return seen


def test_destroy_and_reinit_four_times_leaks_nothing(tmp_path):
    """Store, file://, tcp:// and env:// inits in turn; after each destroy the same
    threads, fds and sockets."""
    base = str(tmp_path / "reinit")
    # ports held (bound, not listening, SO_REUSEADDR) so nobody else takes them meanwhile
    with socket.socket() as held1, socket.socket() as held2:
        for held in (held1, held2):
            held.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            held.bind(("127.0.0.1", 0))
        ports = [held1.getsockname()[1], held2.getsockname()[1]]
        results = spawn_ranks(reinit, 2, base, ports, backend=None)
    for seen in results:
        assert seen[1] == seen[2] == seen[3] == seen[4], seen
        assert seen[0][0] == seen[4][0] and seen[0][2] == seen[4][2], seen
