"""DeviceMesh: the world's ranks laid out as an n-dimensional array, one group per slice.

``torch.distributed.device_mesh`` -> ``mpdist.device_mesh``. Every rank builds the same
mesh (``init_device_mesh("cpu", (2, 2), mesh_dim_names=("dp", "tp"))`` on 4 ranks is
``[[0, 1], [2, 3]]``); along each dimension the mesh is cut into 1-D slices (the "tp"
slices are ``[0, 1]`` and ``[2, 3]``, the "dp" slices ``[0, 2]`` and ``[1, 3]``), and each
slice gets a process group, so ``mesh.get_group("tp")`` reduces within this rank's tp slice.

The groups are made once, when the root mesh is built, by ``mpdist.new_group`` on every
rank in the same order (every slice of dimension 0, then of dimension 1, ...): new_group
is collective over the world. A dimension that spans the whole world uses the default group,
as torch does. Sub-meshes (``mesh["tp"]``, ``mesh["dp", "tp"]``) reuse the root's groups, so
slicing communicates nothing and may be done by any rank alone.

Differences from torch, on purpose: the mesh must cover the whole world (torch also allows
a smaller mesh whose other ranks do not take part), ranks are checked up front on every
rank (duplicates, negatives, out of range: ``ValueError``), and ``device_type`` is "cpu".
"""

from __future__ import annotations

import itertools
import threading
from collections.abc import Sequence
from typing import Any

import numpy as np

from mpdist import distributed as dist
from mpdist.process_group import ProcessGroup

__all__ = ["DeviceMesh", "init_device_mesh"]


def _check_device_type(device_type: Any) -> str:
    if not isinstance(device_type, str):
        raise TypeError(
            f"device_type must be a str such as 'cpu', got {type(device_type).__name__}"
        )
    if device_type != "cpu":
        raise ValueError(
            f"device_type {device_type!r} is not supported: mpdist runs on the CPU, so a "
            "DeviceMesh has device_type 'cpu'"
        )
    return device_type


def _check_names(names: Any, ndim: int) -> tuple[str, ...] | None:
    if not names:
        return None
    if isinstance(names, str) or not isinstance(names, Sequence):
        raise TypeError(f"mesh_dim_names must be a tuple of str, got {names!r}")
    names = tuple(names)
    for n in names:
        if not isinstance(n, str):
            raise TypeError(f"mesh_dim_names must hold str, got {n!r}")
    # torch's checks and texts (init_device_mesh); a DeviceMesh gets the same
    if len(set(names)) != len(names):
        raise RuntimeError(
            "Each mesh_dim_name must be unique. "
            f"Found repeated mesh_dim_name in mesh_dim_names {names}"
        )
    if len(names) != ndim:
        raise RuntimeError(
            "mesh_shape and mesh_dim_names should have same length! "
            f"Found len(mesh_dim_names): {len(names)} and len(mesh_shape):{ndim}."
        )
    return names


def _rank_array(mesh: Any) -> np.ndarray:
    """The mesh argument as a C-contiguous int64 array (nested lists, ndarray, Tensor)."""
    arr = np.array(mesh)  # a Tensor (mpdist's or torch's) converts through __array__
    if arr.dtype == object or not (
        np.issubdtype(arr.dtype, np.integer) or np.issubdtype(arr.dtype, np.floating)
    ):
        raise TypeError(f"mesh must be an array of int ranks, got {mesh!r}")
    if np.issubdtype(arr.dtype, np.floating) and not np.array_equal(arr, np.round(arr)):
        raise TypeError(f"mesh must hold whole-number ranks, got {arr.tolist()}")
    if arr.ndim == 0:
        raise ValueError("mesh must have at least one dimension, got a single rank")
    return np.ascontiguousarray(arr, dtype=np.int64)


def _check_ranks(arr: np.ndarray, world_size: int) -> None:
    """The mesh holds every rank of the world exactly once."""
    if arr.size > world_size:
        raise ValueError(
            f"Mesh should not be bigger than default world size {world_size}, but found "
            f"{arr.size} ranks!"
        )
    flat = arr.ravel()
    bad = flat[(flat < 0) | (flat >= world_size)]
    if bad.size:
        raise ValueError(
            f"Rank {int(bad[0])} is out of range. Valid ranks are 0 to {world_size - 1} "
            f"(world_size={world_size})"
        )
    values, counts = np.unique(flat, return_counts=True)
    if (counts > 1).any():
        raise ValueError(
            f"mesh {arr.tolist()} holds rank(s) {values[counts > 1].tolist()} more than once; "
            "each rank must appear once"
        )
    if arr.size != world_size:
        raise ValueError(
            f"mesh {arr.tolist()} has {arr.size} ranks but the world has {world_size}: an mpdist "
            "DeviceMesh covers every rank of the world (missing: "
            f"{sorted(set(range(world_size)) - set(flat.tolist()))})"
        )


def _row_major_strides(shape: tuple[int, ...]) -> tuple[int, ...]:
    strides, step = [], 1
    for n in reversed(shape):
        strides.append(step)
        step *= n
    return tuple(reversed(strides))


_thread_serials = itertools.count()
_this_thread = threading.local()


def _thread_serial() -> int:
    """The calling thread's number, which no other thread of the process gets (a thread's
    ``threading.get_ident()`` is handed to the next thread once it ends)."""
    serial = getattr(_this_thread, "serial", None)
    if serial is None:
        serial = _this_thread.serial = next(_thread_serials)
    return int(serial)


class DeviceMesh:
    """An n-D array of global ranks with a process group along each dimension.

    ``DeviceMesh("cpu", [[0, 1], [2, 3]], mesh_dim_names=("dp", "tp"))`` is collective: every
    rank of the world calls it with the same mesh, and it creates the groups of every slice.
    ``mesh`` is the rank array this rank sees (for a sub-mesh: the slice holding this rank).
    """

    def __init__(
        self,
        device_type: str,
        mesh: Any,
        *,
        mesh_dim_names: Sequence[str] | None = None,
        _init_backend: bool = True,
    ) -> None:
        self._device_type = _check_device_type(device_type)
        arr = _rank_array(mesh)
        names = _check_names(mesh_dim_names, arr.ndim)
        if not dist.is_initialized():  # torch initializes the default group itself (env://)
            dist.init_process_group()
        _check_ranks(arr, dist.get_world_size())
        arr.flags.writeable = False
        self._root_ranks = arr  # the root mesh's full rank array
        self._dims = tuple(range(arr.ndim))  # root dimensions this mesh spans, ascending
        self._root: DeviceMesh | None = None
        self._names = names
        # the threaded backend's ranks share a process: meshes of two ranks are not equal
        self._thread_id = _thread_serial() if dist.get_backend() == "threaded" else None
        self._rank = dist.get_rank()
        self._root_coord = tuple(int(c[0]) for c in np.nonzero(arr == self._rank))
        self._groups = self._init_groups() if _init_backend else []
        self._hash: int | None = None

    def _init_groups(self) -> list[ProcessGroup]:
        """One group per slice of every dimension, created on every rank in one order."""
        arr, world_size = self._root_ranks, dist.get_world_size()
        mine: list[ProcessGroup] = []
        for dim in range(arr.ndim):
            label = self._names[dim] if self._names else f"dim_{dim}"
            if arr.shape[dim] == world_size:  # the whole world: its default group
                mine.append(dist.group.WORLD)  # type: ignore[arg-type]
                continue
            slices = np.moveaxis(arr, dim, -1).reshape(-1, arr.shape[dim])
            for ranks in slices.tolist():
                pg = dist.new_group(ranks, group_desc=f"mesh_{label}")
                if self._rank in ranks:
                    assert isinstance(pg, ProcessGroup)
                    mine.append(pg)
        return mine

    # -- what the mesh is ------------------------------------------------------------------

    @property
    def device_type(self) -> str:
        """Always "cpu"."""
        return self._device_type

    @property
    def mesh(self) -> np.ndarray:
        """The (read-only) array of global ranks of this mesh that holds this rank."""
        index = tuple(
            slice(None) if d in self._dims else self._root_coord[d]
            for d in range(self._root_ranks.ndim)
        )
        return self._root_ranks[index]

    @property
    def mesh_dim_names(self) -> tuple[str, ...] | None:
        """The names of the dimensions, or None."""
        return self._names

    @property
    def ndim(self) -> int:
        """The number of dimensions."""
        return len(self._dims)

    @property
    def shape(self) -> tuple[int, ...]:
        """The size of each dimension."""
        return tuple(self._root_ranks.shape[d] for d in self._dims)

    def size(self, mesh_dim: int | str | None = None) -> int:
        """The number of ranks in the mesh, or along ``mesh_dim`` (an index or a name)."""
        if mesh_dim is None:
            return int(np.prod(self.shape))
        return self.shape[self._dim_index(mesh_dim)]

    def get_rank(self) -> int:
        """This process's global rank."""
        return self._rank

    def get_coordinate(self) -> tuple[int, ...]:
        """This rank's index along every dimension of the mesh."""
        return tuple(self._root_coord[d] for d in self._dims)

    def _dim_index(self, mesh_dim: int | str) -> int:
        """A dimension given by index (negative counts from the end) or name -> its index."""
        if isinstance(mesh_dim, str):
            if not self._names:
                raise KeyError("No `mesh_dim_names` found.")
            if mesh_dim not in self._names:
                raise KeyError(
                    f"Mesh dimension '{mesh_dim}' does not exist. Available mesh dimensions "
                    f"are: mesh_dim_names={self._names}"
                )
            return self._names.index(mesh_dim)
        if not isinstance(mesh_dim, (int, np.integer)) or isinstance(mesh_dim, bool):
            raise TypeError(f"mesh_dim must be an int or a dimension name, got {mesh_dim!r}")
        if not -self.ndim <= mesh_dim < self.ndim:
            raise IndexError(
                f"mesh_dim {mesh_dim} is out of range for a DeviceMesh of {self.ndim} dimensions"
            )
        return int(mesh_dim) % self.ndim

    def _need_dim(self, mesh_dim: int | str | None, extra: str = "") -> int:
        if mesh_dim is None:
            if self.ndim > 1:
                raise RuntimeError(
                    f"Found the DeviceMesh have {self.ndim} dimensions. Optional kwarg "
                    f"`mesh_dim` needs to be specified when device_mesh.ndim > 1.{extra}"
                )
            return 0
        return self._dim_index(mesh_dim)

    # -- groups ----------------------------------------------------------------------------

    def get_group(self, mesh_dim: int | str | None = None) -> ProcessGroup:
        """The group of this rank's slice along ``mesh_dim`` (optional for a 1-D mesh)."""
        dim = self._need_dim(
            mesh_dim,
            " If you want to get the list of all the ProcessGroups in the DeviceMesh, "
            "please use `get_all_groups()` instead.",
        )
        root = self._root if self._root is not None else self
        if not root._groups:
            raise RuntimeError("DeviceMesh process groups not initialized!")
        return root._groups[self._dims[dim]]

    def get_all_groups(self) -> list[ProcessGroup]:
        """The group of every dimension, in order."""
        return [self.get_group(d) for d in range(self.ndim)]

    def get_local_rank(self, mesh_dim: int | str | None = None) -> int:
        """This rank's rank in the group of ``mesh_dim`` (optional for a 1-D mesh).

        As in torch, a group orders its members by global rank, so this equals the
        coordinate along ``mesh_dim`` when the mesh's slices are increasing.
        """
        dim = self._need_dim(mesh_dim)
        return dist.get_rank(self.get_group(dim))

    # -- sub-meshes ------------------------------------------------------------------------

    def __getitem__(self, mesh_dim_names: str | tuple[str, ...]) -> DeviceMesh:
        """The sub-mesh of the named dimensions (in the mesh's order) that holds this rank."""
        if not self._names:
            raise RuntimeError("Cannot slice a DeviceMesh without mesh_dim_names!")
        wanted = (mesh_dim_names,) if isinstance(mesh_dim_names, str) else tuple(mesh_dim_names)
        if wanted == self._names:
            return self
        if not wanted or not all(isinstance(n, str) and n in self._names for n in wanted):
            raise KeyError(
                f"Invalid mesh_dim_names {wanted} specified. Valid mesh_dim_names are "
                f"{list(self._names)}."
            )
        idx = [self._names.index(n) for n in wanted]
        if idx != sorted(set(idx)):
            raise KeyError(
                f"Invalid mesh_dim_names {wanted} specified. Mesh dim indices should be in "
                "ascending order."
            )
        sub = object.__new__(DeviceMesh)
        sub.__dict__.update(self.__dict__)
        sub._dims = tuple(self._dims[i] for i in idx)
        sub._names = wanted
        sub._root = self._root if self._root is not None else self
        sub._groups = []
        sub._hash = None
        return sub

    # -- identity --------------------------------------------------------------------------

    def _strides(self) -> tuple[Any, ...]:
        # torch prints a size-1 dimension's stride as ()
        full = _row_major_strides(self._root_ranks.shape)
        return tuple(full[d] if self._root_ranks.shape[d] != 1 else () for d in self._dims)

    def _key(self) -> tuple[Any, ...]:
        return (
            tuple(self._root_ranks.ravel().tolist()),
            self.shape,
            self._strides(),
            self._device_type,
            self._names,
            self._thread_id,
        )

    def __eq__(self, other: object) -> bool:
        if self is other:
            return True
        if not isinstance(other, DeviceMesh):
            return False
        return self._key() == other._key()

    def __hash__(self) -> int:
        if self._hash is None:
            self._hash = hash(self._key())
        return self._hash

    def __repr__(self) -> str:
        if self._names:
            dims = (
                "("
                + ", ".join(f"{n}={s}" for n, s in zip(self._names, self.shape, strict=True))
                + ")"
            )
        else:
            dims = str(self.shape)
        return f"DeviceMesh({dims}, '{self._device_type}', stride={self._strides()})"


def init_device_mesh(
    device_type: str,
    mesh_shape: Sequence[int],
    *,
    mesh_dim_names: Sequence[str] | None = None,
) -> DeviceMesh:
    """A DeviceMesh of shape ``mesh_shape`` over ranks 0..n-1 in row-major order (collective).

    Initializes the default group (``env://``) if it is not up yet, as torch does.
    """
    _check_device_type(device_type)
    if isinstance(mesh_shape, (int, np.integer)):
        mesh_shape = (int(mesh_shape),)
    shape = tuple(mesh_shape)
    for n in shape:
        if not isinstance(n, (int, np.integer)) or isinstance(n, bool) or n < 1:
            raise ValueError(f"mesh_shape must hold positive ints, got {tuple(mesh_shape)}")
    _check_names(mesh_dim_names, len(shape))
    ranks = np.arange(int(np.prod(shape)), dtype=np.int64).reshape(shape)
    return DeviceMesh(device_type, ranks, mesh_dim_names=mesh_dim_names)
