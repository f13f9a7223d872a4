"""register_comm_hook refuses a hook that cannot be one, with torch's errors: not callable,
the wrong number of parameters, a bucket annotation other than GradBucket, a return annotation
other than Future; a second registration; a hook whose result is not a Future (at backward).
A refused registration is logged in the logging data ("has_error", "error") as torch's DDP
logger does. Each case also runs through torch's DDP where torch is installed, which must
refuse it with the same exception type and a message our message contains."""

from __future__ import annotations

import re
from collections.abc import Callable, Iterator
from typing import Any

import numpy as np
import pytest

import mpdist
from mpdist import distributed as dist
from mpdist import nn
from mpdist.autograd import Tensor
from mpdist.parallel import DistributedDataParallel as DDP
from mpdist.parallel import GradBucket
from mpdist.parallel.hooks import allreduce_hook
from mpdist.store import HashStore


@pytest.fixture
def group() -> Iterator[None]:
    dist.init_process_group("threaded", store=HashStore(), rank=0, world_size=1)
    try:
        yield
    finally:
        dist.destroy_process_group()


@pytest.fixture
def torch_group() -> Iterator[Any]:
    torch = pytest.importorskip("torch")
    tdist = torch.distributed
    tdist.init_process_group("gloo", store=tdist.HashStore(), rank=0, world_size=1)
    try:
        yield torch
    finally:
        tdist.destroy_process_group()


# Hooks with annotations as objects (this module's annotations are strings: build them here)
def _annotated(bucket_type: Any, return_type: Any) -> Callable[..., Any]:
    def hook(state, bucket):  # type: ignore[no-untyped-def]
        return None

    hook.__annotations__ = {"bucket": bucket_type, "return": return_type}
    return hook


def _not_a_future(state: object, bucket: GradBucket):  # type: ignore[no-untyped-def]
    return 1


REFUSED: dict[str, tuple[type[Exception], str, Callable[[Any], Any]]] = {
    # name: (exception, torch's text, the hook given the library's (GradBucket, Future))
    "not callable": (TypeError, "Communication hook must be callable.", lambda lib: 1),
    "bucket annotated int": (
        ValueError,
        "Communication hook: bucket annotation should be dist.GradBucket.",
        lambda lib: _annotated(int, lib[1]),
    ),
    "return annotated int": (
        ValueError,
        "Communication hook: return annotation should be torch.futures.Future[torch.Tensor].",
        lambda lib: _annotated(lib[0], int),
    ),
}


@pytest.mark.parametrize("case", REFUSED)
def test_refused_at_registration_and_logged(group: None, case: str) -> None:
    exc, text, make = REFUSED[case]
    ddp = DDP(nn.Linear(2, 2))
    assert "has_error" not in ddp._get_ddp_logging_data()
    with pytest.raises(exc, match=re.escape(text)):
        ddp.register_comm_hook(None, make((GradBucket, mpdist.Future)))
    logged = ddp._get_ddp_logging_data()
    assert logged["has_error"] == 1 and text in str(logged["error"])
    assert exc.__name__ in str(logged["error"])
    ddp.register_comm_hook(None, allreduce_hook)  # a refused hook did not take the slot


@pytest.mark.parametrize("case", REFUSED)
def test_torch_refuses_the_same(torch_group: Any, case: str) -> None:
    torch = torch_group
    exc, text, make = REFUSED[case]
    ddp = torch.nn.parallel.DistributedDataParallel(torch.nn.Linear(2, 2))
    with pytest.raises(exc, match=re.escape(text)):
        ddp.register_comm_hook(None, make((torch.distributed.GradBucket, torch.futures.Future)))


def test_signatures_accepted(group: None) -> None:
    accepted = [
        _annotated(GradBucket, mpdist.Future),
        _annotated(GradBucket, mpdist.Future[Tensor]),
        _annotated("dist.GradBucket", "torch.futures.Future[torch.Tensor]"),  # unevaluated
        allreduce_hook,  # annotated in a module with string annotations
        lambda state, bucket: allreduce_hook(state, bucket),
    ]
    for hook in accepted:
        DDP(nn.Linear(2, 2)).register_comm_hook(None, hook)


def test_wrong_parameter_count(group: None) -> None:
    for hook in (lambda bucket: None, lambda state, bucket, extra: None):
        with pytest.raises(ValueError, match=r"must take \(state, bucket\)"):
            DDP(nn.Linear(2, 2)).register_comm_hook(None, hook)


def test_registered_once(group: None) -> None:
    ddp = DDP(nn.Linear(2, 2))
    ddp.register_comm_hook(None, allreduce_hook)
    once = "register_comm_hook or register_builtin_comm_hook can only be called once."
    with pytest.raises(RuntimeError, match=re.escape(once)):
        ddp.register_comm_hook(None, allreduce_hook)
    assert once in str(ddp._get_ddp_logging_data()["error"])


NOT_A_FUTURE = "callback must return a torch.futures.Future object, but got"


def test_a_result_that_is_not_a_future_fails_backward(group: None) -> None:
    ddp = DDP(nn.Linear(2, 2, dtype=np.float64))
    ddp.register_comm_hook(None, _not_a_future)
    with pytest.raises(RuntimeError, match=re.escape(NOT_A_FUTURE)) as info:
        ddp(Tensor(np.ones((1, 2)))).sum().backward()
    assert "builtins.int" in str(info.value)


def test_torch_fails_backward_the_same(torch_group: Any) -> None:
    torch = torch_group
    ddp = torch.nn.parallel.DistributedDataParallel(torch.nn.Linear(2, 2))
    ddp.register_comm_hook(None, lambda state, bucket: 1)
    with pytest.raises(RuntimeError, match=re.escape(NOT_A_FUTURE)) as info:
        ddp(torch.ones(1, 2)).sum().backward()
    assert "builtins.int" in str(info.value)
