"""The tensor-parallel styles: how one submodule's parameters, inputs and outputs are placed.

``torch.distributed.tensor.parallel.style`` -> ``mpdist.tensor.parallel.style``. A style is
applied to one module by ``parallelize_module`` (``style._apply(module, mesh)``, on a 1-D
mesh); it cuts the module's parameters into DTensors and hooks its forward so that inputs
arrive placed as the parameters need and outputs leave placed as the plan says:

* ``ColwiseParallel``: a Linear's weight and bias ``Shard(0)`` (each rank computes some
  output features); input ``Replicate()``, output ``Shard(-1)``.
* ``RowwiseParallel``: weight ``Shard(1)``, bias ``Replicate()`` (each rank holds some input
  features and a term of the output); input ``Shard(-1)``, output ``Replicate()`` (the
  terms all-reduced; ``output_layouts=Shard(0)``: reduce-scattered instead).
* ``SequenceParallel``: parameters replicated, input and output sharded on the sequence
  dimension (for LayerNorm and elementwise layers between the two above).
* ``PrepareModuleInput`` / ``PrepareModuleOutput`` / ``PrepareModuleInputOutput``: no
  parameters; they only convert a module's inputs or outputs between layouts.

Layouts follow torch's rule: an input that is a plain Tensor is taken as this rank's piece
of ``input_layouts`` (``DTensor.from_local``) and redistributed when ``input_layouts``
differs from what the module needs; an output is redistributed to ``output_layouts`` and,
with ``use_local_output``, handed on as its local piece.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np

from mpdist.autograd import Tensor
from mpdist.nn.layers import Linear
from mpdist.nn.module import Module
from mpdist.nn.parameter import Parameter
from mpdist.nn.sparse import Embedding
from mpdist.tensor._api import DTensor, distribute_module, distribute_tensor
from mpdist.tensor.placement_types import Placement, Replicate, Shard

__all__ = [
    "ColwiseParallel",
    "ParallelStyle",
    "PrepareModuleInput",
    "PrepareModuleInputOutput",
    "PrepareModuleOutput",
    "RowwiseParallel",
    "SequenceParallel",
]

Layouts = tuple[Placement | None, ...]


class ParallelStyle:
    """What ``parallelize_module`` applies to a module: subclasses implement ``_apply``.

    ``src_data_rank`` (set by ``parallelize_module``) is the mesh rank whose parameter
    values are scattered or broadcast (``None``: every rank keeps its own values).
    """

    src_data_rank: int | None = 0

    def _apply(self, module: Module, device_mesh: Any) -> Module:
        raise NotImplementedError(f"{type(self).__name__} does not implement _apply")


# ----------------------------------------------------------------- shared pieces
def _to_dtensor(x: Any, mesh: Any, layout: Placement, who: str) -> DTensor:
    """``x`` as a DTensor: a DTensor as it is, a Tensor (or an ndarray, which mpdist's
    layers take too) as this rank's piece of ``layout``."""
    if isinstance(x, DTensor):
        return x
    if isinstance(x, np.ndarray):
        x = Tensor(x)
    if not isinstance(x, Tensor):
        raise ValueError(
            f"expecting input of {who} to be an mpdist Tensor or DTensor, but got "
            f"{type(x).__name__}"
        )
    return DTensor.from_local(x, mesh, (layout,), run_check=False)


def _module_input(
    inputs: tuple[Any, ...], mesh: Any, layout: Placement, desired: Placement, who: str
) -> DTensor:
    """The first input placed as a parallel Linear needs it (the other inputs are dropped,
    as torch's styles do: the layers they apply to take one input)."""
    if not inputs:
        raise ValueError(f"{who} expects an input tensor, got none")
    x = _to_dtensor(inputs[0], mesh, layout, who)
    if layout != desired:
        x = x.redistribute(placements=(desired,))
    return x


def _module_output(out: Any, layout: Placement, use_local_output: bool) -> Any:
    """The output under ``layout`` (redistributed; no collective when it is already so),
    as its local piece when ``use_local_output``."""
    if not isinstance(out, DTensor):
        raise TypeError(f"a tensor-parallel module returned {type(out).__name__}, not a DTensor")
    out = out.redistribute(placements=(layout,))
    return out.to_local() if use_local_output else out


def _shard_params(style: ParallelStyle, placements: dict[str, Placement]) -> Callable[..., None]:
    """A ``partition_fn`` that makes each named parameter of the module a DTensor."""

    def partition(name: str, module: Module, mesh: Any) -> None:
        for key, placement in placements.items():
            p = module._parameters.get(key)
            if p is None or isinstance(p, DTensor):
                continue
            d = distribute_tensor(p.detach(), mesh, [placement], src_data_rank=style.src_data_rank)
            module.register_parameter(key, Parameter(d, requires_grad=p.requires_grad))

    return partition


def _describe(style: Any, fields: tuple[str, ...]) -> str:
    return f"{type(style).__name__}(" + ", ".join(f"{f}={getattr(style, f)}" for f in fields) + ")"


class _LinearStyle(ParallelStyle):
    """Colwise and Rowwise: one Linear, its parameters cut one way, one input, one output."""

    _weight: Placement
    _bias: Placement
    _desired_input: Placement  # also the default input layout
    _default_output: Placement

    def __init__(
        self,
        *,
        input_layouts: Placement | None = None,
        output_layouts: Placement | None = None,
        use_local_output: bool = True,
    ) -> None:
        self.input_layouts = (input_layouts or self._desired_input,)
        self.output_layouts = (output_layouts or self._default_output,)
        self.desired_input_layouts = (self._desired_input,)
        self.use_local_output = use_local_output

    def _apply(self, module: Module, device_mesh: Any) -> Module:
        name = type(self).__name__
        if isinstance(module, Embedding):
            raise NotImplementedError(
                f"{name}: nn.Embedding has no DTensor sharding rule in mpdist yet; shard "
                "nn.Linear layers"
            )
        if not isinstance(module, Linear):
            raise NotImplementedError(f"{name} currently only support nn.Linear and nn.Embedding!")
        layout, desired, out_layout = (
            self.input_layouts[0],
            self._desired_input,
            self.output_layouts[0],
        )
        use_local = self.use_local_output
        return distribute_module(
            module,
            device_mesh,
            _shard_params(self, {"weight": self._weight, "bias": self._bias}),
            lambda mod, inputs, mesh: _module_input(inputs, mesh, layout, desired, name),
            lambda mod, out, mesh: _module_output(out, out_layout, use_local),
        )

    def __repr__(self) -> str:
        return _describe(self, ("input_layouts", "output_layouts", "use_local_output"))


class ColwiseParallel(_LinearStyle):
    """A Linear cut by output features: weight and bias ``Shard(0)``, so each rank computes
    ``out_features / n`` of the outputs from the whole input.

    ``input_layouts`` (default ``Replicate()``) says how the input arrives (``Shard(0)``
    for sequence parallelism: it is all-gathered first); ``output_layouts`` (default
    ``Shard(-1)``) how the output leaves; ``use_local_output`` hands on the local piece.
    """

    _weight = Shard(0)
    _bias = Shard(0)
    _desired_input = Replicate()
    _default_output = Shard(-1)


class RowwiseParallel(_LinearStyle):
    """A Linear cut by input features: weight ``Shard(1)``, bias ``Replicate()``; each rank
    multiplies its slice of the input features, giving one term of the output.

    ``input_layouts`` (default ``Shard(-1)``: what a ColwiseParallel layer hands on);
    ``output_layouts`` (default ``Replicate()``: the terms all-reduced; ``Shard(0)``:
    reduce-scattered along the batch/sequence, for sequence parallelism).
    """

    _weight = Shard(1)
    _bias = Replicate()
    _desired_input = Shard(-1)
    _default_output = Replicate()


class SequenceParallel(ParallelStyle):
    """A module that works row by row (LayerNorm, an activation) run on a slice of the
    sequence: parameters replicated (each rank keeps its values: no broadcast), input and
    output ``Shard(sequence_dim)``. Gradients of the replicated parameters are summed
    across ranks in backward.
    """

    def __init__(self, *, sequence_dim: int = 1, use_local_output: bool = False) -> None:
        self.sequence_sharding = (Shard(sequence_dim),)
        self.use_local_output = use_local_output

    def _apply(self, module: Module, device_mesh: Any) -> Module:
        seq = self.sequence_sharding[0]
        use_local = self.use_local_output

        def replicate(name: str, mod: Module, mesh: Any) -> None:
            for key, p in list(mod._parameters.items()):
                if p is not None and not isinstance(p, DTensor):
                    d = DTensor.from_local(p.detach(), mesh, [Replicate()], run_check=False)
                    mod.register_parameter(key, Parameter(d, requires_grad=p.requires_grad))

        def prepare(mod: Module, inputs: tuple[Any, ...], mesh: Any) -> DTensor:
            x = _to_dtensor(inputs[0] if inputs else None, mesh, seq, repr(mod))
            return x if x.placements == (seq,) else x.redistribute(placements=(seq,))

        return distribute_module(
            module,
            device_mesh,
            replicate,
            prepare,
            lambda mod, out, mesh: out.to_local() if use_local else out,
        )

    def __repr__(self) -> str:
        return (
            f"SequenceParallel(sequence_dim={self.sequence_sharding[0].dim}, "
            f"use_local_output={self.use_local_output})"
        )


def _layouts(x: Placement | Layouts | None) -> Layouts | None:
    return (x,) if isinstance(x, Placement) else (tuple(x) if x is not None else None)


def _convert(
    x: Any, mesh: Any, layout: Placement | None, desired: Placement | None, use_local: bool
) -> Any:
    """One input or output of a Prepare* style: left alone when ``layout`` is None; else a
    DTensor (a Tensor taken as this rank's piece of ``layout``), moved to ``desired``."""
    if layout is None:
        return x
    if isinstance(x, np.ndarray):
        x = Tensor(x)
    if not isinstance(x, Tensor):
        raise AssertionError("expecting input to be a torch.Tensor!")
    d = x if isinstance(x, DTensor) else DTensor.from_local(x, mesh, (layout,), run_check=False)
    if desired is not None and desired != layout:
        d = d.redistribute(placements=(desired,))
    return d.to_local() if use_local else d


class PrepareModuleInput(ParallelStyle):
    """Convert a module's positional (``input_layouts`` -> ``desired_input_layouts``, one
    per input, ``None`` to leave one alone) and keyword inputs before its forward;
    ``use_local_output`` hands the module local pieces instead of DTensors."""

    def __init__(
        self,
        *,
        input_layouts: Placement | Layouts | None = None,
        desired_input_layouts: Placement | Layouts | None = None,
        input_kwarg_layouts: dict[str, Placement] | None = None,
        desired_input_kwarg_layouts: dict[str, Placement] | None = None,
        use_local_output: bool = False,
    ) -> None:
        self.input_layouts = _layouts(input_layouts)
        self.desired_input_layouts = _layouts(desired_input_layouts)
        self.use_local_output = use_local_output
        if self.input_layouts is not None:
            if self.desired_input_layouts is None:
                raise AssertionError("desired module inputs should not be None!")
            if len(self.input_layouts) != len(self.desired_input_layouts):
                raise AssertionError(
                    "input_layouts and desired_input_layouts should have same length!"
                )
        self.with_kwargs = input_kwarg_layouts is not None
        self.input_kwarg_layouts = dict(input_kwarg_layouts or {})
        self.desired_input_kwarg_layouts = dict(desired_input_kwarg_layouts or {})
        if self.with_kwargs and len(self.input_kwarg_layouts) != len(
            self.desired_input_kwarg_layouts
        ):
            raise AssertionError(
                "input_kwarg_layouts and desired_input_kwarg_layouts should have same length!"
            )

    def _positional(self, inputs: Any, mesh: Any) -> tuple[Any, ...]:
        if self.input_layouts is None:
            return inputs
        if not isinstance(inputs, tuple):
            inputs = (inputs,)
        if len(inputs) != len(self.input_layouts):
            raise ValueError("module inputs and input_layouts should have same length!")
        assert self.desired_input_layouts is not None
        return tuple(
            _convert(x, mesh, layout, want, self.use_local_output)
            for x, layout, want in zip(
                inputs, self.input_layouts, self.desired_input_layouts, strict=True
            )
        )

    def _apply(self, module: Module, device_mesh: Any) -> Module:
        if self.with_kwargs:

            def with_kwargs(_: Module, args: Any, kwargs: dict[str, Any]) -> Any:
                converted = {
                    k: _convert(
                        v,
                        device_mesh,
                        self.input_kwarg_layouts.get(k),
                        self.desired_input_kwarg_layouts.get(k),
                        self.use_local_output,
                    )
                    for k, v in kwargs.items()
                }
                return self._positional(args, device_mesh), converted

            module.register_forward_pre_hook(with_kwargs, with_kwargs=True)
        else:
            module.register_forward_pre_hook(lambda _, args: self._positional(args, device_mesh))
        return module

    def __repr__(self) -> str:
        return _describe(
            self,
            (
                "input_layouts",
                "desired_input_layouts",
                "input_kwarg_layouts",
                "desired_input_kwarg_layouts",
                "use_local_output",
            ),
        )


class PrepareModuleOutput(ParallelStyle):
    """Convert a module's outputs (``output_layouts`` -> ``desired_output_layouts``, one per
    output, ``None`` to leave one alone) after its forward; ``use_local_output`` (default
    True) hands on local pieces."""

    def __init__(
        self,
        *,
        output_layouts: Placement | Layouts,
        desired_output_layouts: Placement | Layouts,
        use_local_output: bool = True,
    ) -> None:
        outs, wants = _layouts(output_layouts), _layouts(desired_output_layouts)
        assert outs is not None and wants is not None
        self.output_layouts, self.desired_output_layouts = outs, wants
        self.use_local_output = use_local_output
        if len(outs) != len(wants):
            raise AssertionError(
                "output_layouts and desired_output_layouts should have same length!"
            )

    def _outputs(self, outputs: Any, mesh: Any) -> Any:
        outs = outputs if isinstance(outputs, tuple) else (outputs,)
        if len(outs) != len(self.output_layouts):
            raise ValueError("module outputs and output_layouts should have same length!")
        done = tuple(
            _convert(x, mesh, layout, want, self.use_local_output)
            for x, layout, want in zip(
                outs, self.output_layouts, self.desired_output_layouts, strict=True
            )
        )
        return done[0] if len(done) == 1 else done

    def _apply(self, module: Module, device_mesh: Any) -> Module:
        module.register_forward_hook(lambda _, args, out: self._outputs(out, device_mesh))
        return module

    def __repr__(self) -> str:
        return _describe(self, ("output_layouts", "desired_output_layouts", "use_local_output"))


class PrepareModuleInputOutput(ParallelStyle):
    """``PrepareModuleInput`` and ``PrepareModuleOutput`` on one module
    (``use_local_input`` is the input side's ``use_local_output``)."""

    def __init__(
        self,
        *,
        input_layouts: Placement | Layouts | None = None,
        desired_input_layouts: Placement | Layouts | None = None,
        input_kwarg_layouts: dict[str, Placement] | None = None,
        desired_input_kwarg_layouts: dict[str, Placement] | None = None,
        use_local_input: bool = False,
        output_layouts: Placement | Layouts,
        desired_output_layouts: Placement | Layouts,
        use_local_output: bool = True,
    ) -> None:
        self.prepare_module_input = PrepareModuleInput(
            input_layouts=input_layouts,
            desired_input_layouts=desired_input_layouts,
            input_kwarg_layouts=input_kwarg_layouts,
            desired_input_kwarg_layouts=desired_input_kwarg_layouts,
            use_local_output=use_local_input,
        )
        self.prepare_module_output = PrepareModuleOutput(
            output_layouts=output_layouts,
            desired_output_layouts=desired_output_layouts,
            use_local_output=use_local_output,
        )

    def _apply(self, module: Module, device_mesh: Any) -> Module:
        self.prepare_module_input._apply(module, device_mesh)
        self.prepare_module_output._apply(module, device_mesh)
        return module

    def __repr__(self) -> str:
        return f"PrepareModuleInputOutput({self.prepare_module_input!r}, {self.prepare_module_output!r})"
