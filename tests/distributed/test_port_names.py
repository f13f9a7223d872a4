"""Names that torch's distributed tests reach through module paths other than the public API,
so that a ported test finds them under ``mpdist`` by changing only its imports:
``torch.distributed._Work`` (the class tests subclass), ``torch.distributed.distributed_c10d``
(the module holding ``_get_default_group``), and ``torch.futures.Future[T]`` in annotations."""

from __future__ import annotations

import pytest

import mpdist
from mpdist import distributed as dist
from mpdist.autograd import Tensor
from mpdist.store import HashStore


def test_private_work_name_is_the_work_class() -> None:
    assert mpdist._Work is mpdist.Work

    class Done(mpdist._Work):  # what torch's tests do with dist._Work
        def wait(self, timeout: object = None) -> bool:
            return True

    assert isinstance(Done(), mpdist.Work)
    assert Done().wait() is True


def test_private_work_name_matches_torch() -> None:
    torch = pytest.importorskip("torch")
    assert torch.distributed._Work is torch.distributed.Work


def test_distributed_c10d_is_the_module_api() -> None:
    assert mpdist.distributed_c10d is dist
    dist.init_process_group("threaded", store=HashStore(), rank=0, world_size=1)
    try:
        assert mpdist.distributed_c10d._get_default_group() is dist.group.WORLD
    finally:
        dist.destroy_process_group()


def test_future_is_subscriptable_in_annotations() -> None:
    alias = mpdist.Future[Tensor]
    assert alias.__origin__ is mpdist.Future
    assert alias.__args__ == (Tensor,)

    def hook(state: object, bucket: object) -> mpdist.Future[Tensor]:
        fut: mpdist.Future = mpdist.Future()
        fut.set_result(3)
        return fut

    assert hook(None, None).wait() == 3
    # subscripting names a type only: the object built is still a plain Future
    assert type(mpdist.Future()) is mpdist.Future
