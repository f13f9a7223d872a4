"""Batch normalization layers: ``BatchNorm1d``/``2d``/``3d`` and ``SyncBatchNorm``, whose
statistics are those of the batch all ranks of a process group see together."""

from __future__ import annotations

from typing import Any

import numpy as np

from mpdist import distributed as dist
from mpdist.autograd import Tensor
from mpdist.nn import _normalize, init
from mpdist.nn import functional as F
from mpdist.nn._factory import factory_dtype
from mpdist.nn.module import Module
from mpdist.nn.parameter import Parameter
from mpdist.process_group import ProcessGroup, ReduceOp


class _BatchNorm(Module):
    """What the batch-norm layers share: parameters ``weight``/``bias``, buffers
    ``running_mean``/``running_var``/``num_batches_tracked`` (torch's names), the momentum
    rule and train/eval behaviour. Subclasses say which input ranks they take."""

    _version = 2  # version 2 added num_batches_tracked

    def __init__(
        self,
        num_features: int,
        eps: float = 1e-5,
        momentum: float | None = 0.1,
        affine: bool = True,
        track_running_stats: bool = True,
        device: Any = None,
        dtype: Any = None,
        *,
        bias: bool = True,
    ) -> None:
        super().__init__()
        dt = factory_dtype(device, dtype)
        self.num_features = num_features
        self.eps = eps
        self.momentum = momentum
        self.affine = affine
        self.track_running_stats = track_running_stats
        if affine:
            self.weight = Parameter(np.empty(num_features, dtype=dt))
            if bias:
                self.bias = Parameter(np.empty(num_features, dtype=dt))
            else:
                self.register_parameter("bias", None)
        else:
            self.register_parameter("weight", None)
            self.register_parameter("bias", None)
        if track_running_stats:
            self.register_buffer("running_mean", np.zeros(num_features, dtype=dt))
            self.register_buffer("running_var", np.ones(num_features, dtype=dt))
            self.register_buffer("num_batches_tracked", np.array(0, dtype=np.int64))
        else:
            self.register_buffer("running_mean", None)
            self.register_buffer("running_var", None)
            self.register_buffer("num_batches_tracked", None)
        self.reset_parameters()

    def _load_from_state_dict(
        self,
        state_dict: dict[str, Any],
        prefix: str,
        local_metadata: dict[str, Any],
        strict: bool,
        missing_keys: list[str],
        unexpected_keys: list[str],
        error_msgs: list[str],
    ) -> None:
        # A state dict saved before version 2 (or with no version) has no num_batches_tracked:
        # keep the current count rather than call the key missing, as torch does.
        key = prefix + "num_batches_tracked"
        version = local_metadata.get("version")
        old = version is None or version < 2
        if old and self.track_running_stats and key not in state_dict:
            state_dict[key] = self.num_batches_tracked
        super()._load_from_state_dict(
            state_dict, prefix, local_metadata, strict, missing_keys, unexpected_keys, error_msgs
        )

    def reset_running_stats(self) -> None:
        """Running mean 0, running variance 1, no batches tracked."""
        if self.track_running_stats:
            self.running_mean.data.fill(0)
            self.running_var.data.fill(1)
            self.num_batches_tracked.data.fill(0)

    def reset_parameters(self) -> None:
        """Reset the running statistics; weight 1, bias 0."""
        self.reset_running_stats()
        if self.weight is not None:
            init.ones_(self.weight)
        if self.bias is not None:
            init.zeros_(self.bias)

    def _check_input_dim(self, input: Tensor) -> None:
        raise NotImplementedError

    def _factor(self) -> float:
        """The weight of this batch in the running statistics, counting the batch first
        when training with running statistics (momentum None: a cumulative average)."""
        if self.training and self.track_running_stats:
            self.num_batches_tracked.data += 1
            if self.momentum is None:
                return 1.0 / float(self.num_batches_tracked.data)
        return 0.0 if self.momentum is None else float(self.momentum)

    def _uses_batch_stats(self) -> bool:
        """Training, or no running statistics to use: normalize with the batch's own."""
        return self.training or (self.running_mean is None and self.running_var is None)

    def _running(self) -> tuple[Tensor | None, Tensor | None]:
        """The running statistics that this call reads or updates (none when training
        without tracking them)."""
        if not self.training or self.track_running_stats:
            return self.running_mean, self.running_var
        return None, None

    def forward(self, input: Any) -> Tensor:
        """Normalize ``input`` per channel (axis 1)."""
        x = F._t(input)
        self._check_input_dim(x)
        factor = self._factor()
        rm, rv = self._running()
        return F.batch_norm(
            x, rm, rv, self.weight, self.bias, self._uses_batch_stats(), factor, self.eps
        )

    def extra_repr(self) -> str:
        """The constructor's settings, as torch prints them."""
        return (
            f"{self.num_features}, eps={self.eps}, momentum={self.momentum}, "
            f"affine={self.affine}, bias={self.bias is not None}, "
            f"track_running_stats={self.track_running_stats}"
        )


def _require_dims(x: Tensor, allowed: tuple[int, ...], text: str) -> None:
    if x.ndim not in allowed:
        raise ValueError(f"expected {text} input (got {x.ndim}D input)")


class BatchNorm1d(_BatchNorm):
    """Batch normalization of ``(N, C)`` or ``(N, C, L)`` input over N (and L)."""

    def _check_input_dim(self, input: Tensor) -> None:
        _require_dims(input, (2, 3), "2D or 3D")


class BatchNorm2d(_BatchNorm):
    """Batch normalization of ``(N, C, H, W)`` input over N, H and W."""

    def _check_input_dim(self, input: Tensor) -> None:
        _require_dims(input, (4,), "4D")


class BatchNorm3d(_BatchNorm):
    """Batch normalization of ``(N, C, D, H, W)`` input over N, D, H and W."""

    def _check_input_dim(self, input: Tensor) -> None:
        _require_dims(input, (5,), "5D")


class SyncBatchNorm(_BatchNorm):
    """Batch normalization whose training statistics are those of the whole group's batch.

    In training, with a process group of more than one rank, the forward all-reduces each
    rank's ``[count, sum, sum of squares]`` per channel (one all-reduce) and the backward
    all-reduces ``[sum(dy), sum(dy * (x - mean))]`` (one more, when the input needs a
    gradient): every rank gets the output and input gradient that BatchNorm would give on
    the concatenated batch; weight and bias gradients stay per rank (DDP sums them). A rank
    whose batch is empty takes part in both and gets an empty output, zero weight/bias
    gradients and no NaN. Every rank must call it alike. In eval mode, without an
    initialized process group, or on a group of one rank it is plain BatchNorm.
    """

    def __init__(
        self,
        num_features: int,
        eps: float = 1e-5,
        momentum: float | None = 0.1,
        affine: bool = True,
        track_running_stats: bool = True,
        process_group: ProcessGroup | None = None,
        device: Any = None,
        dtype: Any = None,
        *,
        bias: bool = True,
    ) -> None:
        super().__init__(
            num_features, eps, momentum, affine, track_running_stats, device, dtype, bias=bias
        )
        self.process_group = process_group

    def _check_input_dim(self, input: Tensor) -> None:
        if input.ndim < 2:
            raise ValueError(f"expected at least 2D input (got {input.ndim}D input)")

    def forward(self, input: Any) -> Tensor:
        """Normalize ``input`` per channel, with the group's statistics when training."""
        x = F._t(input)
        self._check_input_dim(x)
        if x.shape[1] == 0:
            raise ValueError("SyncBatchNorm number of input channels should be non-zero")
        factor = self._factor()
        rm, rv = self._running()
        batch_stats = self._uses_batch_stats()
        group = self.process_group
        if not (batch_stats and self.training and dist.is_initialized()):
            return F.batch_norm(x, rm, rv, self.weight, self.bias, batch_stats, factor, self.eps)
        if dist.get_world_size(group) < 2:
            return F.batch_norm(x, rm, rv, self.weight, self.bias, True, factor, self.eps)

        def sum_across_ranks(a: np.ndarray) -> None:
            dist.all_reduce(a, op=ReduceOp.SUM, group=group)

        return _normalize.BatchNormTrain.apply(
            x,
            self.weight,
            self.bias,
            None if rm is None else rm.data,
            None if rv is None else rv.data,
            factor,
            self.eps,
            sum_across_ranks,
        )

    @classmethod
    def convert_sync_batchnorm(
        cls, module: Module, process_group: ProcessGroup | None = None
    ) -> Module:
        """``module`` with every BatchNorm layer in it (itself included) replaced by a
        SyncBatchNorm on ``process_group`` that shares its parameters and buffers and has
        its mode; other modules are kept and returned as they are."""
        out = module
        if isinstance(module, _BatchNorm) and not isinstance(module, SyncBatchNorm):
            out = cls(
                module.num_features,
                module.eps,
                module.momentum,
                module.affine,
                module.track_running_stats,
                process_group,
            )
            # the same Parameter and buffer objects: optimizers and DDP keep working
            for name in ("weight", "bias"):
                out.register_parameter(name, module._parameters.get(name))
            for name in ("running_mean", "running_var", "num_batches_tracked"):
                out.register_buffer(name, module._buffers.get(name))
            out.train(module.training)
        # assigned into the dict, not with add_module, which would move the entry to the end
        for name, child in list(module._modules.items()):
            if child is not None:
                out._modules[name] = cls.convert_sync_batchnorm(child, process_group)
        return out
