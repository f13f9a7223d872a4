"""The helpers torch's DTensor / tensor-parallel tests build on: DTensorTestBase and MLPModule.

torch's ``torch.testing._internal.distributed._tensor.common_dtensor`` -> here (and
``with_comms`` -> ``mpdist.testing.with_comms``, which takes torch's ``eager_init`` too)::

    class TestTP(DTensorTestBase):
        @with_comms
        def test_mesh(self):
            mesh = self.build_device_mesh()      # 1-D over the world, "cpu"
            assert mesh.size() == self.world_size

``DTensorTestBase`` is a :class:`MultiProcessTestCase`: each test runs in ``world_size``
(4, as torch's, whatever ``--ranks`` says) processes over the tcp backend (torch's "gloo"), on the CPU.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable
from typing import Any

from mpdist import distributed as dist
from mpdist import nn
from mpdist.device_mesh import DeviceMesh, init_device_mesh
from mpdist.random import manual_seed
from mpdist.store import FileStore
from mpdist.testing.multiprocess import MultiProcessTestCase

__all__ = ["DTensorTestBase", "MLPModule", "MLPStacked"]


class DTensorTestBase(MultiProcessTestCase):
    """torch's DTensorTestBase on mpdist: ranks spawned in ``setUp``, groups by ``with_comms``.

    ``backend`` is "gloo" (mpdist's tcp backend), ``device_type`` "cpu";
    ``build_device_mesh()`` is the 1-D mesh over the world; ``init_pg`` / ``destroy_pg``
    set the default group up and down by hand, as torch's do.
    """

    @property
    def world_size(self) -> int:
        """4, as torch's (its tests are written for 4 ranks); a ``world_size`` marker still
        picks the size of its items, but ``--ranks`` does not."""
        if self._mpdist_world_size is not None:
            return self._mpdist_world_size
        return 4

    @property
    def backend(self) -> str:
        """The default group's backend: "gloo" (torch's name for the CPU backend)."""
        return "gloo"

    @property
    def device_type(self) -> str:
        """Always "cpu": mpdist runs on the CPU."""
        return "cpu"

    @property
    def is_local_tensor_enabled(self) -> bool:
        """False, as torch's (no local-tensor mode here)."""
        return False

    def build_device_mesh(self) -> DeviceMesh:
        """A 1-D DeviceMesh over every rank of the world."""
        return init_device_mesh(self.device_type, (self.world_size,))

    def init_manual_seed_for_rank(self) -> None:
        """Seed this rank's generator with its rank (different values on every rank)."""
        manual_seed(self.rank)

    def init_pg(self, eager_init: bool = False, backend: str | None = None) -> None:
        """Initialize the default group of this rank over the test's store file."""
        dist.init_process_group(
            backend or self.backend,
            store=FileStore(self.file_name, self.world_size),
            rank=self.rank,
            world_size=self.world_size,
        )

    def destroy_pg(self, device_id: int | None = None) -> None:
        """Wait for every rank, then destroy the default group."""
        dist.barrier()
        dist.destroy_process_group()

    def setUp(self) -> None:
        super().setUp()
        self._spawn_processes()

    def run_subtests(
        self,
        subtest_config: dict[str, list[Any]],
        test_fn: Callable[..., Any],
        *test_args: Any,
        **test_kwargs: Any,
    ) -> None:
        """Run ``test_fn`` once per combination of ``subtest_config``'s values (as keywords),
        each in a ``subTest``, with a barrier between combinations."""
        names = list(subtest_config)
        for values in itertools.product(*(subtest_config[n] for n in names)):
            kwargs = dict(zip(names, values, strict=True))
            with self.subTest(**kwargs):
                test_fn(*test_args, **test_kwargs, **kwargs)
            dist.barrier()


class MLPModule(nn.Module):
    """Linear(10, 16) -> ReLU -> Linear(16, 10), initialized right after ``manual_seed(5)``,
    so every rank (and every instance) starts from the same weights, as torch's helper does."""

    def __init__(self, device: Any = "cpu", bias: bool = True) -> None:
        super().__init__()
        manual_seed(5)
        self.net1 = nn.Linear(10, 16, bias=bias, device=device)
        self.relu = nn.ReLU()
        self.net2 = nn.Linear(16, 10, bias=bias, device=device)

    def forward(self, x: Any) -> Any:
        """net2(relu(net1(x)))."""
        return self.net2(self.relu(self.net1(x)))

    def reset_parameters(self) -> None:
        """Draw both layers' parameters afresh (from the current generator)."""
        self.net1.reset_parameters()
        self.net2.reset_parameters()


class MLPStacked(nn.Module):
    """``n_layers`` MLPModules one after the other (each seeded alike, as torch's)."""

    def __init__(self, device: Any = "cpu", n_layers: int = 2) -> None:
        super().__init__()
        self.layers = nn.ModuleList([MLPModule(device) for _ in range(n_layers)])

    def forward(self, x: Any) -> Any:
        """Each MLPModule in turn."""
        for layer in self.layers:
            x = layer(x)
        return x
