"""FSDP2 for MedVLM: the sharding plan and the Lightning strategy that carries it (``trainer=fsdp``).

:class:`FSDP2Strategy` is Lightning's ``ModelParallelStrategy`` used for pure fully-sharded data parallelism
(every process in one data-parallel mesh, no tensor parallelism) plus the settings of the plan;
``MedVLMModule.configure_model`` calls :func:`shard_model` with them after the training stage (frozen /
full / PEFT LoRA) has been applied, so LoRA adapters exist and ``requires_grad`` is final when the
parameters are sharded. ``ModelParallelStrategy`` also runs on CPU with gloo (Lightning's older
``FSDPStrategy`` refuses CPU), which is how the 2-process tests run.

Units (one ``fully_shard`` call = one all-gather / reduce-scatter group):

1. every repeated block -- each child of an ``nn.ModuleList`` (LLM decoder layers, vision-tower blocks);
2. what is left of each top-level component (``encoder``, ``connector``, ``llm``, ...): its remaining
   parameter-owning modules, grouped into one unit of trainable and one of frozen modules;
3. the root (the MedVLM itself), which then owns no parameters and only drives FSDP's lazy
   initialisation and end-of-backward callback.

Uniform ``requires_grad`` per unit: before each ``fully_shard`` call the parameters that the unit would
take over (those not yet sharded) are checked; a block whose parameters are mixed -- a LoRA-wrapped
decoder layer: frozen base weights, trainable ``lora_A``/``lora_B`` -- is split into one unit for its
trainable parameter-owning modules and one for the frozen rest, and a single module owning both kinds
(e.g. a frozen weight with a trainable bias) raises. FSDP2 itself tolerates mixed units (it
reduce-scatters only the gradients that exist), but uniform units keep frozen units out of every
gradient collective and let them be all-gathered without a gradient buffer. :func:`shard_model`
returns the units it made, each with its ``requires_grad``.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

import torch
from lightning.fabric.plugins.collectives.torch_collective import default_pg_timeout
from lightning.pytorch.strategies import ModelParallelStrategy
from torch import nn

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Unit:
    """One FSDP2 unit made by :func:`shard_model`: its name, parameter count and ``requires_grad``."""

    name: str
    numel: int
    requires_grad: bool


class FSDP2Strategy(ModelParallelStrategy):
    """``ModelParallelStrategy`` as plain FSDP2 over all processes, carrying the sharding plan.

    Args:
        param_dtype: dtype parameters are all-gathered in and computed with (``bfloat16`` on GPUs;
            ``None`` keeps the stored dtype). FSDP2's ``MixedPrecisionPolicy``; keep the trainer's
            ``precision`` at ``32-true`` so Lightning does not autocast on top.
        reduce_dtype: dtype of the gradient reduce-scatter (``None``: ``param_dtype``).
        output_dtype: dtype of each unit's outputs (``None``: unchanged).
        reshard_after_forward: free gathered parameters after each unit's forward (re-gathered in
            backward): less memory, one more all-gather per unit.
        activation_checkpointing: recompute each LLM decoder layer in backward (non-reentrant
            ``torch.utils.checkpoint``) instead of storing its activations.
        save_distributed_checkpoint: each rank writes its shard (a checkpoint folder); ``False`` gathers
            one full checkpoint file on rank 0.
        process_group_backend: ``None`` picks ``nccl`` on CUDA and ``gloo`` on CPU.
        timeout: collective timeout.
    """

    def __init__(
        self,
        *,
        param_dtype: str | None = None,
        reduce_dtype: str | None = None,
        output_dtype: str | None = None,
        reshard_after_forward: bool = True,
        activation_checkpointing: bool = False,
        save_distributed_checkpoint: bool = True,
        process_group_backend: str | None = None,
        timeout: timedelta | None = default_pg_timeout,
    ) -> None:
        super().__init__(
            data_parallel_size="auto",
            tensor_parallel_size=1,
            save_distributed_checkpoint=save_distributed_checkpoint,
            process_group_backend=process_group_backend,
            timeout=timeout,
        )
        self.plan: dict[str, Any] = {
            "param_dtype": param_dtype,
            "reduce_dtype": reduce_dtype,
            "output_dtype": output_dtype,
            "reshard_after_forward": reshard_after_forward,
            "activation_checkpointing": activation_checkpointing,
        }

    def setup_environment(self) -> None:
        # one data-parallel dimension over the whole world (the parent's "auto" would make it num_nodes)
        self._data_parallel_size = self.num_nodes * self.num_processes
        self._tensor_parallel_size = 1
        super().setup_environment()


def is_sharded(model: nn.Module) -> bool:
    """Whether ``fully_shard`` was applied to ``model`` (its root)."""
    from torch.distributed.fsdp import FSDPModule

    return isinstance(model, FSDPModule)


def shard_model(
    model: nn.Module,
    mesh: Any,
    *,
    param_dtype: str | None = None,
    reduce_dtype: str | None = None,
    output_dtype: str | None = None,
    reshard_after_forward: bool = True,
    activation_checkpointing: bool = False,
    compile: bool = False,
) -> list[Unit]:
    """Apply FSDP2 to a MedVLM in place, bottom-up (see the module docstring for the units).

    Args:
        model: the MedVLM, with its stage applied (``requires_grad`` final, LoRA adapters in place).
        mesh: the 1-D data-parallel ``DeviceMesh``.
        param_dtype, reduce_dtype, output_dtype: ``MixedPrecisionPolicy`` dtypes by name (``None``: keep).
        reshard_after_forward: see :class:`FSDP2Strategy`.
        activation_checkpointing: wrap every LLM decoder layer in non-reentrant checkpointing first.
        compile: ``torch.compile`` every LLM decoder layer (after checkpointing, before sharding).

    Returns:
        The units made, in the order they were made (the root last).
    """
    from torch.distributed.fsdp import MixedPrecisionPolicy

    def dtype(name: str | None) -> torch.dtype | None:
        return getattr(torch, name) if name else None

    policy = MixedPrecisionPolicy(
        param_dtype=dtype(param_dtype), reduce_dtype=dtype(reduce_dtype), output_dtype=dtype(output_dtype)
    )
    shard = _Sharder(mesh=mesh, mp_policy=policy, reshard_after_forward=reshard_after_forward)
    if activation_checkpointing:
        n = _checkpoint_blocks(model.llm)
        log.info("activation checkpointing on %d LLM decoder layers", n)
    if compile:
        compile_blocks(model.llm)
    for name, block in list(_blocks(model)):
        shard.block(name, block)
    for name, child in model.named_children():
        shard.remainder(name, child)
    shard.root(model)
    log.info(
        "FSDP2: %d units (%d trainable) over %d processes",
        len(shard.units),
        sum(u.requires_grad for u in shard.units),
        mesh.size(),
    )
    return shard.units


class _Sharder:
    """Makes the ``fully_shard`` calls and records each unit; parameters already sharded are DTensors."""

    def __init__(self, **kwargs: Any) -> None:
        self.kwargs = kwargs
        self.units: list[Unit] = []

    def _fully_shard(
        self, name: str, modules: nn.Module | list[nn.Module], params: list[nn.Parameter]
    ) -> None:
        from torch.distributed.fsdp import fully_shard

        kinds = {p.requires_grad for p in params}
        if len(kinds) > 1:  # guarded by the callers; kept as the invariant every unit satisfies
            raise AssertionError(f"FSDP unit {name} would mix frozen and trainable parameters")
        fully_shard(modules, **self.kwargs)
        self.units.append(Unit(name, sum(p.numel() for p in params), kinds == {True}))

    def block(self, name: str, block: nn.Module) -> None:
        """One unit for a block; two (trainable modules, frozen rest) when its parameters are mixed."""
        params = _unsharded(block.parameters())
        if len({p.requires_grad for p in params}) > 1:
            trainable = [m for _, m in _owners(block, name) if _owned(m)[0].requires_grad]
            self._fully_shard(f"{name}[trainable]", trainable, _params_of(trainable))
            params = _unsharded(block.parameters())
            name = f"{name}[frozen]"
        if params:
            self._fully_shard(name, block, params)

    def remainder(self, name: str, component: nn.Module) -> None:
        """The component's parameter-owning modules not yet in a unit: one trainable and one frozen unit."""
        owners = [(m, _owned(m)[0].requires_grad) for _, m in _owners(component, name)]
        for grad in (True, False):
            group = [m for m, g in owners if g == grad]
            if group:
                self._fully_shard(f"{name}[{'trainable' if grad else 'frozen'}]", group, _params_of(group))

    def root(self, model: nn.Module) -> None:
        params = _unsharded(model.parameters())
        self._fully_shard("root", model, params)


def _unsharded(params: Iterator[nn.Parameter]) -> list[nn.Parameter]:
    from torch.distributed.tensor import DTensor

    seen: set[int] = set()
    out = []
    for p in params:
        if not isinstance(p, DTensor) and id(p) not in seen:
            seen.add(id(p))
            out.append(p)
    return out


def _owned(module: nn.Module) -> list[nn.Parameter]:
    """The module's own (non-recursive) parameters not yet sharded; raises when they mix frozen/trainable."""
    params = _unsharded(module.parameters(recurse=False))
    if len({p.requires_grad for p in params}) > 1:
        names = [n for n, _ in module.named_parameters(recurse=False)]
        raise ValueError(
            f"{type(module).__name__} owns both frozen and trainable parameters ({names}); FSDP units must "
            "not mix them: train or freeze the whole module"
        )
    return params


def _owners(module: nn.Module, prefix: str) -> Iterator[tuple[str, nn.Module]]:
    """Submodules (``module`` included) that own parameters not yet sharded."""
    for name, sub in module.named_modules(prefix=prefix):
        if _owned(sub):
            yield name, sub


def _params_of(modules: list[nn.Module]) -> list[nn.Parameter]:
    return _unsharded(p for m in modules for p in m.parameters(recurse=False))


def _blocks(root: nn.Module, prefix: str = "") -> Iterator[tuple[str, nn.Module]]:
    """The repeated blocks: children of the outermost ``nn.ModuleList`` s (decoder layers, ViT blocks)."""
    for name, child in root.named_children():
        path = f"{prefix}.{name}" if prefix else name
        if isinstance(child, nn.ModuleList):
            for i, block in enumerate(child):
                yield f"{path}.{i}", block
        else:
            yield from _blocks(child, path)


def _decoder_layers(llm: nn.Module) -> nn.ModuleList:
    """The LLM's decoder layers: its outermost ``nn.ModuleList``."""
    for module in llm.modules():
        if isinstance(module, nn.ModuleList):
            return module
    raise ValueError(f"{type(llm).__name__} has no nn.ModuleList of decoder layers")


def compile_blocks(llm: nn.Module) -> int:
    """``torch.compile`` each LLM decoder layer in place (``nn.Module.compile``: state-dict keys unchanged).

    Per layer rather than the whole model: the layers share one compiled graph, and the merge with image
    features (data-dependent shapes) stays eager. Returns the number of layers.
    """
    layers = _decoder_layers(llm)
    for layer in layers:
        layer.compile(dynamic=True)  # packed and padded batches change length every step
    log.info("torch.compile on %d LLM decoder layers", len(layers))
    return len(layers)


def _checkpoint_blocks(llm: nn.Module) -> int:
    """Wrap each LLM decoder layer in non-reentrant activation checkpointing (in place); returns the count.

    ``checkpoint_wrapper`` state-dict hooks strip its ``_checkpoint_wrapped_module`` prefix, so checkpoint
    and export keys do not change.
    """
    from torch.distributed.algorithms._checkpoint.checkpoint_wrapper import (
        CheckpointImpl,
        checkpoint_wrapper,
    )

    layers = _decoder_layers(llm)
    for i, layer in enumerate(layers):
        layers[i] = checkpoint_wrapper(layer, checkpoint_impl=CheckpointImpl.NO_REENTRANT)
    return len(layers)


def unsharded_copy(model: nn.Module, rebuild: Callable[[], nn.Module], *, rank: int) -> nn.Module | None:
    """A plain (unsharded) model with ``model``'s trained weights, for export and evaluation.

    An unsharded ``model`` is returned as is. A sharded one is gathered into one full state dict on rank 0
    (a collective: every rank must call this) and loaded, strictly, into ``rebuild()`` -- a fresh model
    with the same architecture and stage (LoRA wrappers included); other ranks get ``None``.
    """
    if not is_sharded(model):
        return model
    from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict

    options = StateDictOptions(full_state_dict=True, cpu_offload=True)
    state = get_model_state_dict(model, options=options)  # full on rank 0, empty elsewhere
    if rank != 0:
        return None
    plain = rebuild()
    plain.load_state_dict(state, strict=True)
    return plain
