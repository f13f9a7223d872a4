"""``Module``: the base of layers and models (parameters, buffers, submodules, hooks, state).

Assigning a ``Parameter`` or a ``Module`` to an attribute registers it; registration order is
iteration order, so ``parameters()`` lists parameters in the order they were assigned (DDP's
buckets depend on this). ``state_dict`` keys are dotted paths such as ``fc1.weight``.
"""

from __future__ import annotations

import warnings
from collections import OrderedDict
from collections.abc import Callable, Iterator, Mapping
from typing import Any, NamedTuple

import numpy as np

from mpdist.autograd import RemovableHandle, Tensor
from mpdist.autograd._tensor import zero_grads
from mpdist.autograd.device import parse_to
from mpdist.autograd.grad_mode import no_grad
from mpdist.nn.parameter import Parameter

# The key suffix of a module's ``get_extra_state()`` in a state dict (torch's).
_EXTRA_STATE = "_extra_state"


class IncompatibleKeys(NamedTuple):
    """The keys ``load_state_dict`` could not match: the module's keys the state dict
    lacks, and the state dict's keys the module lacks."""

    missing_keys: list[str]
    unexpected_keys: list[str]


class _IncompatibleKeys(IncompatibleKeys):
    """What ``load_state_dict`` returns: ``IncompatibleKeys`` whose repr says when every
    key matched, as torch's does."""

    __slots__ = ()

    def __repr__(self) -> str:
        if not self.missing_keys and not self.unexpected_keys:
            return "<All keys matched successfully>"
        return super().__repr__()

    __str__ = __repr__


def _quoted(keys: list[str]) -> str:
    return ", ".join(f'"{k}"' for k in keys)


def _size(shape: Any) -> str:
    # torch's error texts print shapes as torch.Size; ported tests match those texts.
    return f"torch.Size({list(shape)})"


def _is_tensor_like(value: Any) -> bool:
    """An mpdist Tensor, or an array-like with a shape (an ndarray, a torch tensor, a numpy
    scalar)."""
    return isinstance(value, Tensor) or (hasattr(value, "__array__") and hasattr(value, "shape"))


def _array(value: Any) -> Any:
    """What ``copy_`` takes from a state-dict value: an mpdist Tensor (a DTensor stays one,
    placed) or ndarray as it is; anything else (a torch tensor) as an ndarray."""
    if isinstance(value, (Tensor, np.ndarray)):
        return value
    detach = getattr(value, "detach", None)
    return np.asarray(detach() if callable(detach) else value)


def _assigned(target: Tensor, value: Any) -> Tensor:
    """What ``load_state_dict(assign=True)`` puts in place of ``target``: ``value`` itself
    when it is already of target's kind, else ``value`` wrapped (sharing its memory); a
    parameter keeps ``target``'s ``requires_grad``."""
    if isinstance(target, Parameter):
        if isinstance(value, Parameter):
            return value.requires_grad_(target.requires_grad)
        return Parameter(_array(value), requires_grad=target.requires_grad)
    return value if isinstance(value, Tensor) else Tensor(_array(value))


class Module:
    """Base class of every layer and model; subclasses define ``forward``."""

    training: bool
    # Saved in a state dict's _metadata; a subclass whose saved layout changes bumps it and
    # reads older layouts in _load_from_state_dict (BatchNorm: 2).
    _version: int = 1

    def __init__(self) -> None:
        d = self.__dict__
        d["training"] = True
        d["_parameters"] = OrderedDict()
        d["_buffers"] = OrderedDict()
        d["_non_persistent_buffers"] = set()
        d["_modules"] = OrderedDict()
        d["_forward_pre_hooks"] = OrderedDict()
        d["_forward_pre_hooks_with_kwargs"] = set()
        d["_forward_hooks"] = OrderedDict()

    # ----------------------------------------------------------------- registration
    def _require_init(self) -> None:
        if "_parameters" not in self.__dict__:
            raise AttributeError(
                f"cannot assign parameters or submodules before {type(self).__name__}.__init__() "
                "called super().__init__()"
            )

    def register_parameter(self, name: str, param: Parameter | None) -> None:
        """Register ``param`` (or None) under ``name``."""
        self._require_init()
        if not isinstance(name, str) or not name or "." in name:
            raise KeyError(f'parameter name must be a non-empty string without ".", got {name!r}')
        if param is not None and not isinstance(param, Parameter):
            raise TypeError(
                f"cannot assign '{type(param).__name__}' object to parameter '{name}' "
                "(mpdist.nn.Parameter or None required)"
            )
        self._forget(name, "_parameters")
        self._parameters[name] = param

    def register_buffer(self, name: str, tensor: Any, persistent: bool = True) -> None:
        """Register a non-parameter array (saved in ``state_dict`` unless not persistent)."""
        self._require_init()
        if not isinstance(name, str) or not name or "." in name:
            raise KeyError(f'buffer name must be a non-empty string without ".", got {name!r}')
        if tensor is not None and not isinstance(tensor, Tensor):
            tensor = Tensor(np.asarray(tensor))
        self._forget(name, "_buffers")
        self._buffers[name] = tensor
        if persistent:
            self._non_persistent_buffers.discard(name)
        else:
            self._non_persistent_buffers.add(name)

    def add_module(self, name: str, module: Module | None) -> None:
        """Register a submodule (or None) under ``name``."""
        self._require_init()
        if module is not None and not isinstance(module, Module):
            raise TypeError(f"{type(module).__name__} is not a Module subclass")
        if not isinstance(name, str) or "." in name or not name:
            raise KeyError(f'module name must be a non-empty string without ".", got {name!r}')
        self._forget(name, "_modules")
        self._modules[name] = module

    register_module = add_module

    def _forget(self, name: str, keep: str) -> None:
        # Drop ``name`` from the other stores; in ``keep`` it stays where it is, so
        # re-registering a name (``m.weight = Parameter(...)``) keeps the state dict's order.
        for store in ("_parameters", "_buffers", "_modules"):
            if store != keep:
                self.__dict__[store].pop(name, None)
        self.__dict__.pop(name, None)

    def __setattr__(self, name: str, value: Any) -> None:
        d = self.__dict__
        if isinstance(value, Parameter):
            self.register_parameter(name, value)
        elif isinstance(value, Module):
            self.add_module(name, value)
        elif "_parameters" in d and name in d["_parameters"]:
            if value is not None:
                raise TypeError(
                    f"cannot assign '{type(value).__name__}' as parameter '{name}' "
                    "(mpdist.nn.Parameter or None expected)"
                )
            d["_parameters"][name] = None
        elif "_modules" in d and name in d["_modules"]:
            if value is not None:
                raise TypeError(
                    f"cannot assign '{type(value).__name__}' as child module '{name}' "
                    "(mpdist.nn.Module or None expected)"
                )
            d["_modules"][name] = None
        elif "_buffers" in d and name in d["_buffers"]:
            if value is not None and not isinstance(value, Tensor):
                value = Tensor(np.asarray(value))
            d["_buffers"][name] = value
        else:
            object.__setattr__(self, name, value)

    def __getattr__(self, name: str) -> Any:
        # Only called when normal lookup fails, i.e. for registered names.
        d = self.__dict__
        for store in ("_parameters", "_buffers", "_modules"):
            if store in d and name in d[store]:
                return d[store][name]
        raise AttributeError(f"'{type(self).__name__}' object has no attribute '{name}'")

    def __delattr__(self, name: str) -> None:
        d = self.__dict__
        for store in ("_parameters", "_buffers", "_modules"):
            if name in d.get(store, ()):
                del d[store][name]
                d["_non_persistent_buffers"].discard(name)
                return
        object.__delattr__(self, name)

    def get_submodule(self, target: str) -> Module:
        """The submodule at dotted path ``target`` (``""`` is self)."""
        mod: Module = self
        for part in target.split(".") if target else []:
            if part not in mod._modules or mod._modules[part] is None:
                raise AttributeError(f"{type(mod).__name__} has no attribute `{part}`")
            mod = mod._modules[part]
        return mod

    def get_parameter(self, target: str) -> Parameter:
        """The parameter at dotted path ``target``."""
        mod_path, _, name = target.rpartition(".")
        mod = self.get_submodule(mod_path)
        if name not in mod._parameters:
            raise AttributeError(f"{type(mod).__name__} has no parameter `{name}`")
        return mod._parameters[name]

    # ----------------------------------------------------------------- iteration
    def named_modules(
        self, memo: set[int] | None = None, prefix: str = "", remove_duplicate: bool = True
    ) -> Iterator[tuple[str, Module]]:
        """(path, module) for self and every descendant, depth first, each once."""
        if memo is None:
            memo = set()
        if remove_duplicate:
            if id(self) in memo:
                return
            memo.add(id(self))
        yield prefix, self
        for name, child in self._modules.items():
            if child is None:
                continue
            sub = f"{prefix}.{name}" if prefix else name
            yield from child.named_modules(memo, sub, remove_duplicate)

    def modules(self) -> Iterator[Module]:
        """Self and every descendant."""
        for _, m in self.named_modules():
            yield m

    def named_children(self) -> Iterator[tuple[str, Module]]:
        """(name, module) of direct submodules."""
        seen: set[int] = set()
        for name, child in self._modules.items():
            if child is not None and id(child) not in seen:
                seen.add(id(child))
                yield name, child

    def children(self) -> Iterator[Module]:
        """Direct submodules."""
        for _, m in self.named_children():
            yield m

    def _named_members(
        self, store: str, prefix: str, recurse: bool, remove_duplicate: bool
    ) -> Iterator[tuple[str, Any]]:
        seen: set[int] = set()
        mods = (
            self.named_modules(prefix=prefix, remove_duplicate=remove_duplicate)
            if recurse
            else [(prefix, self)]
        )
        for mod_prefix, mod in mods:
            for name, value in mod.__dict__[store].items():
                if value is None or (remove_duplicate and id(value) in seen):
                    continue
                seen.add(id(value))
                yield (f"{mod_prefix}.{name}" if mod_prefix else name), value

    def named_parameters(
        self, prefix: str = "", recurse: bool = True, remove_duplicate: bool = True
    ) -> Iterator[tuple[str, Parameter]]:
        """(path, parameter) in registration order; shared parameters once."""
        return self._named_members("_parameters", prefix, recurse, remove_duplicate)

    def parameters(self, recurse: bool = True) -> Iterator[Parameter]:
        """Parameters in registration order."""
        for _, p in self.named_parameters(recurse=recurse):
            yield p

    def named_buffers(
        self, prefix: str = "", recurse: bool = True, remove_duplicate: bool = True
    ) -> Iterator[tuple[str, Tensor]]:
        """(path, buffer) in registration order."""
        return self._named_members("_buffers", prefix, recurse, remove_duplicate)

    def buffers(self, recurse: bool = True) -> Iterator[Tensor]:
        """Buffers in registration order."""
        for _, b in self.named_buffers(recurse=recurse):
            yield b

    # ----------------------------------------------------------------- state
    def state_dict(
        self,
        *args: Any,
        destination: dict[str, Any] | None = None,
        prefix: str = "",
        keep_vars: bool = False,
    ) -> dict[str, Any]:
        """Parameters and persistent buffers (and extra state) by dotted path: a new
        OrderedDict, or ``destination`` filled in and returned.

        Values are detached Tensors sharing memory with the parameters and buffers, so
        writing into one in place changes the module (``keep_vars=True``: the Parameter and
        buffer objects themselves). A new OrderedDict carries ``_metadata``: each module's
        ``{"version": _version}`` by path, which ``load_state_dict`` hands back to
        ``_load_from_state_dict``. Positional arguments (destination, prefix, keep_vars) still
        work with a FutureWarning, as in torch.
        """
        if args:
            warnings.warn(
                "Positional args are being deprecated, use kwargs instead: "
                "state_dict(destination=..., prefix=..., keep_vars=...)",
                FutureWarning,
                stacklevel=2,
            )
            destination = args[0] if destination is None else destination
            prefix = args[1] if len(args) > 1 and prefix == "" else prefix
            keep_vars = args[2] if len(args) > 2 and not keep_vars else keep_vars
        if destination is None:
            fresh: Any = OrderedDict()
            fresh._metadata = OrderedDict()
            destination = fresh
        metadata = getattr(destination, "_metadata", None)
        if metadata is not None:
            metadata[prefix[:-1]] = {"version": self._version}
        self._save_to_state_dict(destination, prefix, keep_vars)
        for name, child in self._modules.items():
            if child is not None:
                child.state_dict(
                    destination=destination, prefix=prefix + name + ".", keep_vars=keep_vars
                )
        return destination

    def _persistent_state(self) -> dict[str, Tensor]:
        """This module's own parameters and persistent buffers (not None), by name."""
        state: dict[str, Tensor] = {k: p for k, p in self._parameters.items() if p is not None}
        for k, b in self._buffers.items():
            if b is not None and k not in self._non_persistent_buffers:
                state[k] = b
        return state

    def _save_to_state_dict(
        self, destination: dict[str, Any], prefix: str, keep_vars: bool
    ) -> None:
        """Put this module's own state (not its children's) into ``destination``; the one
        place a subclass changes what it saves."""
        for name, t in self._persistent_state().items():
            destination[prefix + name] = t if keep_vars else t.detach()
        if type(self).get_extra_state is not Module.get_extra_state:
            destination[prefix + _EXTRA_STATE] = self.get_extra_state()

    def get_extra_state(self) -> Any:
        """State beyond parameters and buffers to save under ``_extra_state`` (picklable);
        a subclass that has some overrides this and ``set_extra_state``."""
        raise RuntimeError(
            f"{type(self).__name__}.get_extra_state() was called but is not overridden: only a "
            "module that overrides it has extra state"
        )

    def set_extra_state(self, state: Any) -> None:
        """Restore what ``get_extra_state`` returned (a subclass overrides both)."""
        raise RuntimeError(
            f"{type(self).__name__}.set_extra_state() was called but is not overridden: only a "
            "module that overrides it has extra state"
        )

    def load_state_dict(
        self, state_dict: Mapping[str, Any], strict: bool = True, assign: bool = False
    ) -> IncompatibleKeys:
        """Copy ``state_dict``'s values (mpdist or torch Tensors, Parameters, ndarrays) into
        the parameters and buffers in place, cast to their dtypes; ``assign=True`` makes the
        values themselves the parameters (kept Parameters, or wrapped into new ones with the
        old ``requires_grad``) and buffers.

        Missing and unexpected keys are always collected; ``strict`` makes them errors. Every
        error is gathered first, then raised as one RuntimeError in torch's wording. Returns
        ``_IncompatibleKeys(missing_keys, unexpected_keys)``.
        """
        if not isinstance(state_dict, Mapping):
            raise TypeError(f"Expected state_dict to be dict-like, got {type(state_dict)}.")
        metadata = getattr(state_dict, "_metadata", None)
        # A copy: a module's _load_from_state_dict may add keys (BatchNorm's old versions).
        whole: dict[str, Any] = OrderedDict(state_dict)
        missing: list[str] = []
        unexpected: list[str] = []
        errors: list[str] = []

        def load(module: Module, local: dict[str, Any], prefix: str) -> None:
            meta = dict(metadata.get(prefix[:-1], {})) if metadata is not None else {}
            if assign:
                meta["assign_to_params_buffers"] = True
            module._load_from_state_dict(local, prefix, meta, True, missing, unexpected, errors)
            for name, child in module._modules.items():
                if child is not None:
                    sub = prefix + name + "."
                    load(child, {k: v for k, v in local.items() if k.startswith(sub)}, sub)

        load(self, whole, "")
        if strict:
            if unexpected:
                errors.insert(0, f"Unexpected key(s) in state_dict: {_quoted(unexpected)}. ")
            if missing:
                errors.insert(0, f"Missing key(s) in state_dict: {_quoted(missing)}. ")
        if errors:
            raise RuntimeError(
                f"Error(s) in loading state_dict for {type(self).__name__}:\n\t"
                + "\n\t".join(errors)
            )
        return _IncompatibleKeys(missing, unexpected)

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
        """Load this module's own state from the keys under ``prefix`` (torch's hook, with
        torch's arguments): errors go to ``error_msgs``, keys this module lacks or finds
        extra to the two lists (with ``strict``). ``local_metadata`` is what ``state_dict``
        recorded for this module (its ``version``), plus ``assign_to_params_buffers``."""
        own = self._persistent_state()
        assign = bool(local_metadata.get("assign_to_params_buffers", False))
        for name, target in own.items():
            key = prefix + name
            if key not in state_dict:
                if strict:
                    missing_keys.append(key)
                continue
            value = state_dict[key]
            if not _is_tensor_like(value):
                error_msgs.append(
                    f'While copying the parameter named "{key}", expected torch.Tensor or '
                    f"Tensor-like object from checkpoint but received {type(value)}"
                )
                continue
            if target.ndim == 0 and tuple(value.shape) == (1,):
                value = value[0]  # a one-element 1-d checkpoint value fits a 0-d tensor
            if tuple(value.shape) != tuple(target.shape):
                error_msgs.append(
                    f"size mismatch for {key}: copying a param with shape {_size(value.shape)} "
                    f"from checkpoint, the shape in current model is {_size(target.shape)}."
                )
                continue
            try:
                if assign:
                    setattr(self, name, _assigned(target, value))
                else:
                    with no_grad():
                        target.copy_(_array(value))
            except Exception as ex:
                error_msgs.append(
                    f'While copying the parameter named "{key}", whose dimensions in the model '
                    f"are {_size(target.shape)} and whose dimensions in the checkpoint are "
                    f"{_size(value.shape)}, an exception occurred : {ex.args}."
                )
        extra = prefix + _EXTRA_STATE
        if type(self).set_extra_state is not Module.set_extra_state:
            if extra in state_dict:
                self.set_extra_state(state_dict[extra])
            elif strict:
                missing_keys.append(extra)
        elif strict and extra in state_dict:
            unexpected_keys.append(extra)
        if strict:
            for key in state_dict:
                if not key.startswith(prefix) or key == extra:
                    continue
                head, dot, _ = key[len(prefix) :].partition(".")
                # A dotted rest must name a child; an undotted one, this module's own state.
                if head not in (self._modules if dot else own):
                    unexpected_keys.append(key)

    def zero_grad(self, set_to_none: bool = True) -> None:
        """Clear every parameter's gradient (None, or zeros in place)."""
        zero_grads(self.parameters(), set_to_none)

    def requires_grad_(self, requires_grad: bool = True) -> Module:
        """Set ``requires_grad`` on every parameter."""
        for p in self.parameters():
            p.requires_grad = requires_grad
        return self

    def train(self, mode: bool = True) -> Module:
        """Set training mode on self and descendants."""
        if not isinstance(mode, bool):
            raise ValueError("training mode is expected to be boolean")
        for m in self.modules():
            m.__dict__["training"] = mode
        return self

    def eval(self) -> Module:
        """``train(False)``."""
        return self.train(False)

    def apply(self, fn: Callable[[Module], None]) -> Module:
        """Call ``fn`` on every descendant, children first, then self."""
        for child in self.children():
            child.apply(fn)
        fn(self)
        return self

    def to(self, *args: Any, **kwargs: Any) -> Module:
        """torch's ``Module.to``: ``to(dtype)``, ``to(device)``, ``to(device, dtype)``,
        ``to(tensor)``. Floating parameters and buffers (and their grads) are cast to the
        dtype in place (the objects stay); a device must be the CPU and changes nothing."""
        dtype = parse_to(args, kwargs).dtype
        if dtype is None:
            return self
        if dtype.kind not in "fc":
            raise TypeError(
                "nn.Module.to only accepts floating point or complex dtypes, but got desired "
                f"dtype={dtype}"
            )
        for t in list(self.parameters()) + list(self.buffers()):
            if t.data.dtype.kind == "f":
                t.data = t.data.astype(dtype)
                if t.grad is not None:
                    t.grad = t.grad.data.astype(dtype)
        return self

    def cpu(self) -> Module:
        """Self: every mpdist module lives on the CPU."""
        return self

    def float(self) -> Module:
        """Cast to float32."""
        return self.to(np.float32)

    def double(self) -> Module:
        """Cast to float64."""
        return self.to(np.float64)

    # ----------------------------------------------------------------- calling
    def forward(self, *args: Any, **kwargs: Any) -> Any:
        """The computation; subclasses override it."""
        raise NotImplementedError(
            f'Module [{type(self).__name__}] is missing the required "forward" function'
        )

    def register_forward_pre_hook(
        self, hook: Callable[..., Any], *, with_kwargs: bool = False
    ) -> RemovableHandle:
        """``hook(module, args)`` (or ``hook(module, args, kwargs)`` with ``with_kwargs``) runs
        before forward; a non-None return replaces args (or ``(args, kwargs)``)."""
        handle = RemovableHandle(self._forward_pre_hooks)
        self._forward_pre_hooks[handle.id] = hook
        if with_kwargs:
            self._forward_pre_hooks_with_kwargs.add(handle.id)
        return handle

    def register_forward_hook(self, hook: Callable[..., Any]) -> RemovableHandle:
        """``hook(module, args, output)`` runs after forward; a non-None return replaces output."""
        handle = RemovableHandle(self._forward_hooks)
        self._forward_hooks[handle.id] = hook
        return handle

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        """Run ``forward`` between the forward pre-hooks and the forward hooks."""
        for hid, hook in list(self._forward_pre_hooks.items()):
            if hid in self._forward_pre_hooks_with_kwargs:
                res = hook(self, args, kwargs)
                if res is not None:
                    args, kwargs = res
            else:
                res = hook(self, args)
                if res is not None:
                    args = res if isinstance(res, tuple) else (res,)
        out = self.forward(*args, **kwargs)
        for hook in list(self._forward_hooks.values()):
            res = hook(self, args, out)
            if res is not None:
                out = res
        return out

    def extra_repr(self) -> str:
        """Extra text shown inside this module's repr."""
        return ""

    def __repr__(self) -> str:
        lines = []
        for name, child in self._modules.items():
            body = repr(child).replace("\n", "\n  ")
            lines.append(f"({name}): {body}")
        extra = self.extra_repr()
        if not lines:
            return f"{type(self).__name__}({extra})"
        head = [extra] if extra else []
        return f"{type(self).__name__}(\n  " + "\n  ".join(head + lines) + "\n)"
