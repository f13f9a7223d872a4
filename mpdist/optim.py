"""Optimizers with torch's update rules: ``SGD`` (momentum, dampening, Nesterov, weight
decay), ``Adam`` and ``AdamW``.

They update ``param.data`` in place, so the arrays a model (or a DDP bucket view) holds stay
the same objects. State is kept per parameter object, as in torch, and its tensors are Tensors
(a DTensor placed like its parameter for a DTensor parameter): SGD's ``momentum_buffer``,
Adam's ``step`` (0-d, of torch's scalar dtype), ``exp_avg``, ``exp_avg_sq``, ``max_exp_avg_sq``.
"""

from __future__ import annotations

import copy
import math
from collections import defaultdict
from collections.abc import Callable, Iterable, Mapping
from typing import Any

import numpy as np

from mpdist.autograd import Tensor
from mpdist.autograd._tensor import zero_grads
from mpdist.autograd.dtypes import get_default_dtype


class Optimizer:
    """Base class: parameter groups, per-parameter state, ``zero_grad``, ``state_dict``."""

    def __init__(self, params: Iterable[Any], defaults: dict[str, Any]) -> None:
        if isinstance(params, Tensor):
            raise TypeError(
                "params argument given to the optimizer should be an iterable of Tensors or "
                f"dicts, but got {type(params).__name__}"
            )
        self.defaults = dict(defaults)
        self.state: defaultdict[Any, dict[str, Any]] = defaultdict(dict)
        self.param_groups: list[dict[str, Any]] = []
        groups = list(params)
        if not groups:
            raise ValueError("optimizer got an empty parameter list")
        if not isinstance(groups[0], dict):
            groups = [{"params": groups}]
        for g in groups:
            self.add_param_group(g)

    def add_param_group(self, param_group: dict[str, Any]) -> None:
        """Add a group of parameters with its own hyperparameters."""
        group = dict(param_group)
        ps = group["params"]
        ps = [ps] if isinstance(ps, Tensor) else list(ps)
        for p in ps:
            if not isinstance(p, Tensor):
                raise TypeError(
                    f"optimizer can only optimize Tensors, but one of the params is {type(p).__name__}"
                )
            if not p.is_leaf:
                raise ValueError("can't optimize a non-leaf Tensor")
        existing = {id(p) for g in self.param_groups for p in g["params"]}
        if any(id(p) in existing for p in ps) or len({id(p) for p in ps}) != len(ps):
            raise ValueError("some parameters appear in more than one parameter group")
        group["params"] = ps
        for k, v in self.defaults.items():
            group.setdefault(k, v)
        self.param_groups.append(group)

    def zero_grad(self, set_to_none: bool = True) -> None:
        """Clear gradients: set to None (default) or fill with zeros in place."""
        zero_grads((p for g in self.param_groups for p in g["params"]), set_to_none)

    def step(self, closure: Callable[[], Any] | None = None) -> Any:
        """One update of every parameter that has a gradient; returns closure's loss."""
        loss = closure() if closure is not None else None
        for group in self.param_groups:
            for p in group["params"]:
                if p.grad is not None:
                    state = self.state.get(p, {})
                    self._update(p, p.grad.data, group, state)
                    if state:  # a parameter gets an entry only once it has state (torch's)
                        self.state[p] = state
        return loss

    def _update(
        self, p: Tensor, grad: np.ndarray, group: dict[str, Any], state: dict[str, Any]
    ) -> None:
        raise NotImplementedError

    def state_dict(self) -> dict[str, Any]:
        """``{"state": ..., "param_groups": ...}`` with each parameter replaced by its index
        (counted over the groups in order). As torch's: the per-parameter state dicts are the
        optimizer's own (their tensors are live), the groups are copies without ``params``."""
        index: dict[int, int] = {}
        groups = []
        for g in self.param_groups:
            packed = {k: v for k, v in g.items() if k != "params"}
            packed["params"] = [index.setdefault(id(p), len(index)) for p in g["params"]]
            groups.append(packed)
        state = {(index[id(p)] if isinstance(p, Tensor) else p): s for p, s in self.state.items()}
        return {"state": state, "param_groups": groups}

    def load_state_dict(self, state_dict: Mapping[str, Any]) -> None:
        """Restore what ``state_dict`` returned, for the same layout of groups and parameters.

        As torch's: the groups' hyperparameters are deep copies of the saved ones; each
        parameter's state is a new dict whose tensors are the saved ones, cast to the
        parameter's dtype when it is floating (``step`` never: a new object only when cast);
        an ndarray is taken as a Tensor.
        """
        saved_groups = copy.deepcopy(list(state_dict["param_groups"]))
        if len(saved_groups) != len(self.param_groups):
            raise ValueError("loaded state dict has a different number of parameter groups")
        if any(
            len(a["params"]) != len(b["params"])
            for a, b in zip(saved_groups, self.param_groups, strict=True)
        ):
            raise ValueError(
                "loaded state dict contains a parameter group that doesn't match the size of "
                "optimizer's group"
            )
        by_index = {
            i: p
            for saved, mine in zip(saved_groups, self.param_groups, strict=True)
            for i, p in zip(saved["params"], mine["params"], strict=True)
        }
        state: defaultdict[Any, dict[str, Any]] = defaultdict(dict)
        for i, s in state_dict["state"].items():
            if i in by_index:
                p = by_index[i]
                state[p] = {k: _cast_state(p, k, v) for k, v in s.items()}
            else:
                state[i] = s
        for saved, mine in zip(saved_groups, self.param_groups, strict=True):
            saved["params"] = mine["params"]
        self.param_groups = saved_groups
        self.state = state

    def __repr__(self) -> str:
        lines = [f"{type(self).__name__} ("]
        for i, g in enumerate(self.param_groups):
            lines.append(f"Parameter Group {i}")
            lines += [f"    {k}: {v}" for k, v in sorted(g.items()) if k != "params"]
        return "\n".join(lines + [")"])


def _cast_state(p: Tensor, key: Any, value: Any) -> Any:
    """A loaded state value for parameter ``p``: tensors (and ndarrays, as Tensors) cast to
    ``p``'s dtype when ``p`` is floating, except ``step``; dicts and lists item by item."""
    if isinstance(value, np.ndarray):
        value = Tensor(value)
    if isinstance(value, Tensor):
        if key != "step" and p.dtype.kind in "fc" and value.dtype != p.dtype:
            return value.to(p.dtype)
        return value
    if isinstance(value, dict):
        return {k: _cast_state(p, k, v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return type(value)(_cast_state(p, None, v) for v in value)
    return value


def _state_like(p: Tensor, data: np.ndarray) -> Tensor:
    """A state tensor holding ``data`` (shaped like ``p.data``), of ``p``'s kind: a DTensor
    parameter's state is a DTensor placed like it, as torch's."""
    out = p.detach()
    out.data = data
    return out


def _scalar_dtype() -> np.dtype:
    """torch's dtype of ``step``: float64 under a float64 default dtype, else float32."""
    return np.dtype(np.float64 if get_default_dtype() == np.float64 else np.float32)


def _check(name: str, value: float, ok: bool) -> None:
    if not ok:
        raise ValueError(f"Invalid {name}: {value}")


class SGD(Optimizer):
    """Stochastic gradient descent, torch's rule:

    g = grad + weight_decay * p;  buf = g (first step) or momentum * buf + (1 - dampening) * g;
    g = g + momentum * buf (Nesterov) or buf;  p -= lr * g.
    """

    def __init__(
        self,
        params: Iterable[Any],
        lr: float = 1e-3,
        momentum: float = 0.0,
        dampening: float = 0.0,
        weight_decay: float = 0.0,
        nesterov: bool = False,
        *,
        maximize: bool = False,
    ) -> None:
        _check("learning rate", lr, lr >= 0.0)
        _check("momentum value", momentum, momentum >= 0.0)
        _check("weight_decay value", weight_decay, weight_decay >= 0.0)
        if nesterov and (momentum <= 0 or dampening != 0):
            raise ValueError("Nesterov momentum requires a momentum and zero dampening")
        super().__init__(
            params,
            dict(
                lr=lr,
                momentum=momentum,
                dampening=dampening,
                weight_decay=weight_decay,
                nesterov=nesterov,
                maximize=maximize,
            ),
        )

    def _update(
        self, p: Tensor, grad: np.ndarray, group: dict[str, Any], state: dict[str, Any]
    ) -> None:
        g = -grad if group["maximize"] else grad
        if group["weight_decay"]:
            g = g + group["weight_decay"] * p.data
        momentum = group["momentum"]
        if momentum:
            if state.get("momentum_buffer") is None:
                buf = np.array(g, dtype=p.data.dtype, copy=True)
                state["momentum_buffer"] = _state_like(p, buf)
            else:
                buf = state["momentum_buffer"].data
                buf *= momentum
                buf += (1 - group["dampening"]) * g
            g = g + momentum * buf if group["nesterov"] else buf
        p.data -= group["lr"] * g


class Adam(Optimizer):
    """Adam, torch's rule (bias-corrected moments; ``amsgrad`` optional; L2 weight decay
    added to the gradient)."""

    _decoupled = False

    def __init__(
        self,
        params: Iterable[Any],
        lr: float = 1e-3,
        betas: tuple[float, float] = (0.9, 0.999),
        eps: float = 1e-8,
        weight_decay: float = 0.0,
        amsgrad: bool = False,
        *,
        maximize: bool = False,
    ) -> None:
        _check("learning rate", lr, lr >= 0.0)
        _check("epsilon value", eps, eps >= 0.0)
        _check("beta parameter at index 0", betas[0], 0.0 <= betas[0] < 1.0)
        _check("beta parameter at index 1", betas[1], 0.0 <= betas[1] < 1.0)
        _check("weight_decay value", weight_decay, weight_decay >= 0.0)
        super().__init__(
            params,
            dict(
                lr=lr,
                betas=tuple(betas),
                eps=eps,
                weight_decay=weight_decay,
                amsgrad=amsgrad,
                maximize=maximize,
            ),
        )

    def _update(
        self, p: Tensor, grad: np.ndarray, group: dict[str, Any], state: dict[str, Any]
    ) -> None:
        g = -grad if group["maximize"] else grad
        lr, (b1, b2), eps, wd = group["lr"], group["betas"], group["eps"], group["weight_decay"]
        if not state:
            state["step"] = Tensor(np.zeros((), dtype=_scalar_dtype()))
            state["exp_avg"] = _state_like(p, np.zeros_like(p.data))
            state["exp_avg_sq"] = _state_like(p, np.zeros_like(p.data))
            if group["amsgrad"]:
                state["max_exp_avg_sq"] = _state_like(p, np.zeros_like(p.data))
        if wd:
            if self._decoupled:
                p.data *= 1 - lr * wd
            else:
                g = g + wd * p.data
        step = state["step"]
        if not isinstance(step, Tensor):  # a plain number from an older checkpoint
            step = state["step"] = Tensor(np.array(step, dtype=_scalar_dtype()))
        np.add(step.data, 1, out=step.data)
        t = float(step.data)
        m, v = state["exp_avg"].data, state["exp_avg_sq"].data
        m += (1 - b1) * (g - m)
        v *= b2
        v += (1 - b2) * g * g
        step_size = lr / (1 - b1**t)
        bc2_sqrt = math.sqrt(1 - b2**t)
        if group["amsgrad"]:
            v = np.maximum(state["max_exp_avg_sq"].data, v, out=state["max_exp_avg_sq"].data)
        denom = np.sqrt(v) / bc2_sqrt + eps
        p.data -= step_size * (m / denom)


class AdamW(Adam):
    """Adam with decoupled weight decay (``p *= 1 - lr * weight_decay`` before the step)."""

    _decoupled = True

    def __init__(
        self,
        params: Iterable[Any],
        lr: float = 1e-3,
        betas: tuple[float, float] = (0.9, 0.999),
        eps: float = 1e-8,
        weight_decay: float = 1e-2,
        amsgrad: bool = False,
        *,
        maximize: bool = False,
    ) -> None:
        super().__init__(params, lr, betas, eps, weight_decay, amsgrad, maximize=maximize)


__all__ = ["SGD", "Adam", "AdamW", "Optimizer"]
