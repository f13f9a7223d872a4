"""DeviceMesh on real ranks (4 threads, 2 and 4 tcp processes) and on the fake backend:
construction, coordinates, sub-meshes and their groups (a collective on a slice's group stays
in the slice), identity, errors; the fake-backend meshes are compared with torch's own
DeviceMesh on torch's fake backend (same world size and rank, in this process)."""

from __future__ import annotations

import os
import re
import socket
import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import numpy as np
import pytest

import mpdist.distributed as dist
from mpdist.device_mesh import DeviceMesh, init_device_mesh
from mpdist.testing import spawn_threads


@contextmanager
def fake_world(rank: int, world_size: int = 4) -> Iterator[None]:
    dist.init_process_group("fake", rank=rank, world_size=world_size)
    try:
        yield
    finally:
        dist.destroy_process_group()


def _check_2x2(rank: int) -> DeviceMesh:
    """The 2 x 2 ("dp", "tp") mesh's layout as rank ``rank`` sees it (any backend)."""
    m = init_device_mesh("cpu", (2, 2), mesh_dim_names=("dp", "tp"))
    assert m.shape == (2, 2) and m.ndim == 2 and m.size() == 4 and m.size(1) == 2
    assert m.size("tp") == 2 and m.mesh_dim_names == ("dp", "tp") and m.device_type == "cpu"
    np.testing.assert_array_equal(m.mesh, [[0, 1], [2, 3]])
    assert m.get_coordinate() == (rank // 2, rank % 2) and m.get_rank() == rank
    assert m.get_local_rank("dp") == rank // 2 and m.get_local_rank(1) == rank % 2
    tp, dp = m["tp"], m["dp"]
    np.testing.assert_array_equal(tp.mesh, [rank // 2 * 2, rank // 2 * 2 + 1])
    np.testing.assert_array_equal(dp.mesh, [rank % 2, rank % 2 + 2])
    assert tp.get_coordinate() == (rank % 2,) and dp.get_coordinate() == (rank // 2,)
    assert tp.get_local_rank() == rank % 2 and dp.get_local_rank() == rank // 2
    # sub-meshes reuse the root's groups: slicing creates none
    assert tp.get_group() is m.get_group("tp") is m.get_group(-1)
    assert dp.get_group() is m.get_group(0)
    assert dist.get_process_group_ranks(tp.get_group()) == tp.mesh.tolist()
    assert dist.get_process_group_ranks(dp.get_group()) == dp.mesh.tolist()
    assert m["dp", "tp"] is m and tp["tp"] is tp
    assert m.get_all_groups() == [dp.get_group(), tp.get_group()]
    return m


# -- real ranks ------------------------------------------------------------------------------


def _slice_sums(rank: int) -> tuple[float, float, float]:
    m = _check_2x2(rank)
    x = np.array([10.0**rank])
    y = x.copy()
    z = x.copy()
    dist.all_reduce(x, group=m.get_group("tp"))
    dist.all_reduce(y, group=m["dp"].get_group())
    dist.all_reduce(z)  # the world group is still the whole world
    return float(x[0]), float(y[0]), float(z[0])


def _expected_sums(rank: int) -> tuple[float, float, float]:
    row, col = rank // 2, rank % 2
    tp = sum(10.0**r for r in (2 * row, 2 * row + 1))
    dp = sum(10.0**r for r in (col, col + 2))
    return tp, dp, 1111.0


def test_2x2_on_four_threads_reduces_within_each_slice() -> None:
    out = spawn_threads(lambda rank, ws: _slice_sums(rank), 4)
    for rank, sums in enumerate(out):
        assert sums == _expected_sums(rank)


@pytest.mark.mpdist(world_size=4)
def test_2x2_on_four_tcp_processes_reduces_within_each_slice(rank, world_size) -> None:
    assert dist.get_backend() in ("tcp", "gloo")
    assert _slice_sums(rank) == _expected_sums(rank)


@pytest.mark.mpdist(world_size=2)
def test_meshes_on_two_tcp_processes(rank, world_size) -> None:
    m = init_device_mesh("cpu", (2,))
    # a dimension spanning the world is the default group (as torch)
    assert m.get_group() is dist.group.WORLD and m.get_local_rank() == rank
    # a 1 x 2 mesh: "a" slices are single ranks, "b" the world
    m2 = DeviceMesh("cpu", [[1, 0]], mesh_dim_names=("a", "b"))
    assert m2.get_coordinate() == (0, 1 - rank)
    assert dist.get_world_size(m2.get_group("a")) == 1
    x = np.array([rank + 1.0])
    dist.all_reduce(x, group=m2["a"].get_group())
    assert x[0] == rank + 1.0
    dist.all_reduce(x, group=m2["b"].get_group())
    assert x[0] == 3.0
    # a mesh whose slices are not increasing: the group orders ranks, the coordinate does not
    np.testing.assert_array_equal(m2["b"].mesh, [1, 0])
    assert m2.get_local_rank("b") == rank


def test_threads_meshes_are_equal_within_a_rank_only() -> None:
    def body(rank: int, ws: int) -> tuple[Any, ...]:
        a = init_device_mesh("cpu", (2, 2), mesh_dim_names=("dp", "tp"))
        b = DeviceMesh("cpu", [[0, 1], [2, 3]], mesh_dim_names=("dp", "tp"))
        c = init_device_mesh("cpu", (2, 2))
        assert a == b and hash(a) == hash(b) and a != c and a != "mesh"
        assert a["tp"] == b["tp"] and a["tp"] is not b["tp"] and a["tp"] != a["dp"]
        return a, a["tp"]

    (a0, tp0), (a1, _) = spawn_threads(body, 4)[:2]
    # torch keys a mesh built under the threaded backend by its thread
    assert a0 != a1 and a0 == a0 and tp0 == tp0


def test_threads_meshes_of_threads_one_after_another_are_not_equal() -> None:
    # a thread's ident goes to the next thread once it ends: the key must not reuse it
    meshes = [spawn_threads(lambda r, w: init_device_mesh("cpu", (1,)), 1)[0] for _ in range(3)]
    assert meshes[0] != meshes[1] and meshes[1] != meshes[2] and meshes[0] != meshes[2]
    assert len({hash(m) for m in meshes}) == 3


# -- the fake backend: one process, world size 4 ------------------------------------------------


@pytest.mark.parametrize("rank", range(4))
def test_fake_backend_builds_a_2x2_mesh(rank: int) -> None:
    with fake_world(rank):
        m = _check_2x2(rank)
        assert repr(m) == "DeviceMesh((dp=2, tp=2), 'cpu', stride=(2, 1))"
        assert repr(m["dp"]) == "DeviceMesh((dp=2), 'cpu', stride=(2,))"
        assert [g.group_desc for g in m.get_all_groups()] == ["mesh_dp", "mesh_tp"]


def test_groups_are_made_once_in_the_same_order_on_every_rank(monkeypatch) -> None:
    """new_group is collective: every rank creates every slice, so group names agree; sub-meshes
    and get_group create none."""
    made: list[list[int]] = []
    real = dist.new_group

    def counting(ranks: Any, **kwargs: Any) -> Any:
        made.append(list(ranks))
        return real(ranks, **kwargs)

    monkeypatch.setattr(dist, "new_group", counting)
    names = []
    for rank in range(4):
        with fake_world(rank):
            made.clear()
            m = init_device_mesh("cpu", (2, 2), mesh_dim_names=("dp", "tp"))
            assert made == [[0, 2], [1, 3], [0, 1], [2, 3]]
            m["tp"], m["dp"], m.get_group("tp"), m.get_local_rank(0)
            assert len(made) == 4
            names.append([g.group_name for g in m.get_all_groups()])
    # dp slices [0, 2], [1, 3] are groups 1, 2; tp slices [0, 1], [2, 3] are groups 3, 4
    assert names == [["1", "3"], ["2", "3"], ["1", "4"], ["2", "4"]]


MESHES: list[tuple[str, Any, Any]] = [
    ("init", (2, 2), ("dp", "tp")),
    ("init", (2, 2), None),
    ("init", (4,), None),
    ("init", (1, 2, 2), ("a", "b", "c")),
    ("mesh", [[3, 1], [0, 2]], ("a", "b")),
    ("mesh", [[0, 2], [1, 3]], ("x", "y")),
]


def _describe(build: Any, dm_cls: Any, how: str, arg: Any, names: Any, ranks: Any) -> Any:
    m = (
        build("cpu", arg, mesh_dim_names=names)
        if how == "init"
        else dm_cls("cpu", arg, mesh_dim_names=names)
    )
    subs = {}
    if names:
        for n in names:
            subs[n] = (repr(m[n]), np.asarray(m[n].mesh).tolist(), m[n].get_coordinate())
        if len(names) == 3:
            s = m[names[0], names[2]]
            subs["02"] = (repr(s), np.asarray(s.mesh).tolist(), s.get_coordinate())
    return (
        repr(m),
        np.asarray(m.mesh).tolist(),
        m.shape,
        m.ndim,
        m.size(),
        m.get_coordinate(),
        [m.get_local_rank(d) for d in range(m.ndim)],
        [ranks(g) for g in m.get_all_groups()],
        subs,
    )


@pytest.mark.parametrize("how,arg,names", MESHES)
def test_meshes_equal_torchs_on_the_fake_backend(how: str, arg: Any, names: Any) -> None:
    torch = pytest.importorskip("torch")
    import torch.distributed as tdist
    from torch.distributed.device_mesh import DeviceMesh as TDeviceMesh
    from torch.distributed.device_mesh import init_device_mesh as t_init
    from torch.testing._internal.distributed.fake_pg import FakeStore as TFakeStore

    if tdist.is_initialized():
        pytest.skip("a torch default group is up in this process")
    for rank in range(4):
        tdist.init_process_group("fake", store=TFakeStore(), rank=rank, world_size=4)
        try:
            theirs = _describe(t_init, TDeviceMesh, how, arg, names, tdist.get_process_group_ranks)
        finally:
            tdist.destroy_process_group()
        with fake_world(rank):
            ours = _describe(
                init_device_mesh, DeviceMesh, how, arg, names, dist.get_process_group_ranks
            )
        assert ours == theirs, rank
    assert torch.distributed is tdist


# -- errors ----------------------------------------------------------------------------------


def _err(fn: Any) -> tuple[str, str]:
    try:
        fn()
    except Exception as e:  # noqa: BLE001 (the error is the result)
        # torch passes some errors several strings: read them as one sentence
        return type(e).__name__, " ".join(str(a) for a in e.args)
    raise AssertionError("no error")


def _usage_errors(init: Any, dm: Any) -> list[tuple[str, str]]:
    m = init("cpu", (2, 2), mesh_dim_names=("dp", "tp"))
    return [
        _err(lambda: init("cpu", (2, 2), mesh_dim_names=("a", "a"))),
        _err(lambda: init("cpu", (2, 2), mesh_dim_names=("a",))),
        _err(lambda: m["xx"]),
        _err(lambda: m["tp", "dp"]),
        _err(lambda: m["tp"]["dp"]),
        _err(lambda: init("cpu", (4,))["x"]),
        _err(lambda: m.get_group("xx")),
        _err(lambda: dm("cpu", [[0, 1], [2, 7]])),
    ]


def test_usage_errors_are_torchs() -> None:
    pytest.importorskip("torch")
    import torch.distributed as tdist
    from torch.distributed.device_mesh import DeviceMesh as TDeviceMesh
    from torch.distributed.device_mesh import init_device_mesh as t_init
    from torch.testing._internal.distributed.fake_pg import FakeStore as TFakeStore

    if tdist.is_initialized():
        pytest.skip("a torch default group is up in this process")
    tdist.init_process_group("fake", store=TFakeStore(), rank=1, world_size=4)
    try:
        theirs = _usage_errors(t_init, TDeviceMesh)
    finally:
        tdist.destroy_process_group()
    with fake_world(1):
        ours = _usage_errors(init_device_mesh, DeviceMesh)
    assert ours == theirs


def test_errors() -> None:
    with fake_world(1):
        m = init_device_mesh("cpu", (2, 2), mesh_dim_names=("dp", "tp"))
        for bad, what in (
            ([[0, 1], [1, 3]], "rank(s) [1] more than once"),
            ([0, 1, 2, -1], "Rank -1 is out of range"),
            ([0, 2], "has 2 ranks but the world has 4"),
            ([[0, 1, 2, 3], [4, 5, 6, 7]], "Mesh should not be bigger than default world size 4"),
            (3, "at least one dimension"),
        ):
            with pytest.raises(ValueError, match=re.escape(what)):
                DeviceMesh("cpu", bad)
        for dev in ("cuda", "cuda:0", "meta"):
            with pytest.raises(ValueError, match="mpdist runs on the CPU"):
                init_device_mesh(dev, (4,))
            with pytest.raises(ValueError, match="mpdist runs on the CPU"):
                DeviceMesh(dev, [0, 1, 2, 3])
        with pytest.raises(TypeError, match="whole-number ranks"):
            DeviceMesh("cpu", [0.5, 1, 2, 3])
        with pytest.raises(TypeError, match="int ranks"):
            DeviceMesh("cpu", ["a", "b", "c", "d"])
        with pytest.raises(ValueError, match="positive ints"):
            init_device_mesh("cpu", (0, 4))
        with pytest.raises(RuntimeError, match="needs to be specified"):
            m.get_group()
        with pytest.raises(RuntimeError, match="needs to be specified"):
            m.get_local_rank()
        with pytest.raises(IndexError, match="mesh_dim 2 is out of range"):
            m.get_group(2)
        with pytest.raises(TypeError, match="mesh_dim must be an int"):
            m.size(1.0)  # type: ignore[arg-type]
        # a whole-number float mesh is read as ints, as torch does
        np.testing.assert_array_equal(DeviceMesh("cpu", [0.0, 1.0, 2.0, 3.0]).mesh, [0, 1, 2, 3])


def test_init_device_mesh_starts_the_default_group_from_the_environment(tmp_path) -> None:
    """As torch: with no default group, init_device_mesh initializes it (env://)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    env = dict(os.environ, MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK="0", WORLD_SIZE="1")
    code = (
        "import mpdist as dist\n"
        "from mpdist.device_mesh import init_device_mesh\n"
        "m = init_device_mesh('cpu', (1,))\n"
        "assert dist.is_initialized() and m.get_group() is dist.group.WORLD\n"
        "print(m)\n"
        "dist.destroy_process_group()\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=60
    )
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "DeviceMesh((1,), 'cpu', stride=((),))"  # torch's repr
