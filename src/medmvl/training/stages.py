"""Training stages as data: each top-level module of a MedVLM is ``frozen``, ``full`` or ``lora``.

A stage config is a mapping ``{module_name: {mode, lr, weight_decay, lora}}`` over ``encoder``,
``connector`` and ``llm`` (and the optional 3D tower ``encoder3d`` / ``connector3d``, which trains like
``encoder`` / ``connector`` unless the stage names it); ``pretrain``, ``finetune`` and ``lora`` are just YAML files. ``lora`` wraps the
module with PEFT (``lora: {r, alpha, dropout, bias, target_modules, first_layer}``; target modules default to every
linear layer of an LLM but its output head, and to the linear layers a vision tower's forward uses) and trains only the adapters; :func:`merge_lora` folds them back in.
"""

from __future__ import annotations

import io
from collections.abc import Mapping
from typing import Any

import torch
from rich.console import Console
from rich.table import Table
from torch import nn

MODES = ("frozen", "full", "lora")
MODULES = ("encoder", "connector", "llm", "encoder3d", "connector3d")
# a module the stage does not name follows this one (the 3D tower trains like the 2D tower)
FOLLOWS = {"encoder3d": "encoder", "connector3d": "connector"}


def stage_modes(model: nn.Module, stage: Mapping[str, Mapping[str, Any]]) -> dict[str, str]:
    """``{module: mode}`` for every module ``model`` has (``encoder3d``/``connector3d`` may be absent)."""
    return {name: _spec(stage, name).get("mode", "frozen") for name in _present(model)}


def _present(model: nn.Module) -> list[str]:
    return [name for name in MODULES if getattr(model, name, None) is not None and not _shared(model, name)]


def _shared(model: nn.Module, name: str) -> bool:
    """A 3D part made of the 2D part's own modules (an imported MedM-VL-CT-Chest): it trains with it."""
    if name == "connector3d":
        return getattr(model, "connector3d_config", None) == "shared"
    if name == "encoder3d":
        inner = getattr(model.encoder3d, "slice_encoder", None)
        base = model.encoder.get_base_model() if hasattr(model.encoder, "get_base_model") else model.encoder
        return inner is not None and inner is base
    return False


def _spec(stage: Mapping[str, Mapping[str, Any]], name: str) -> dict[str, Any]:
    return dict(stage.get(name) or stage.get(FOLLOWS.get(name, name)) or {"mode": "frozen"})


def apply_stage(model: nn.Module, stage: Mapping[str, Mapping[str, Any]]) -> list[dict[str, Any]]:
    """Set ``requires_grad`` per module and return optimizer parameter groups.

    Args:
        model: a MedVLM (any module with ``encoder``, ``connector`` and ``llm`` children).
        stage: per-module settings; a module not named is frozen (``encoder3d`` / ``connector3d`` not
            named follow ``encoder`` / ``connector``).

    Returns:
        One param group per trainable module: ``{"name", "params", ["lr"], ["weight_decay"]}``; groups leave
        ``lr``/``weight_decay`` out when the stage does not set them, so the optimizer's defaults apply.
    """
    unknown = set(stage) - set(MODULES)
    if unknown:
        raise ValueError(f"stage names unknown modules {sorted(unknown)}; valid: {list(MODULES)}")
    groups: list[dict[str, Any]] = []
    for name in _present(model):
        spec = _spec(stage, name)
        mode = spec.get("mode", "frozen")
        if mode not in MODES:
            raise ValueError(f"stage.{name}.mode must be one of {MODES}, got {mode!r}")
        module: nn.Module = getattr(model, name)
        module.requires_grad_(mode == "full")
        if mode == "lora":
            module = _wrap_lora(module, name, dict(spec.get("lora") or {}))
            setattr(model, name, module)
        if mode != "frozen":
            group: dict[str, Any] = {
                "name": name,
                "params": [p for p in module.parameters() if p.requires_grad],
            }
            for key in ("lr", "weight_decay"):
                if spec.get(key) is not None:
                    group[key] = float(spec[key])
            groups.append(group)
    if not groups:
        raise ValueError("the stage trains nothing: set at least one module's mode to 'full'")
    return groups


# below this learning rate a part with random weights learns little in a short run (fine-tuning rates: 2e-5)
SCRATCH_LR = 1e-4


def random_weight_warnings(
    stage: Mapping[str, Mapping[str, Any]], random_parts: Mapping[str, str], default_lr: float | None = None
) -> list[str]:
    """What to warn about when a stage would leave a part with random weights unable to learn.

    Args:
        stage: the stage config (as for :func:`apply_stage`).
        random_parts: part -> why its weights are random (:func:`medmvl.models.build.random_weight_parts`).
        default_lr: the optimizer's learning rate, for parts whose stage sets none.

    Returns:
        One message per such part: frozen (the LLM then reads fixed noise from a random encoder), LoRA
        adapters on random base weights, or trained at a fine-tuning rate (< ``SCRATCH_LR``); each names
        the override that trains it and the one that loads weights instead.
    """
    messages = []
    for name, why in random_parts.items():
        spec = _spec(stage, name)
        mode, lr = spec.get("mode", "frozen"), spec.get("lr", default_lr)
        own = dict(stage.get(name) or {})  # a key the stage does not have is added with Hydra's +
        mode_key = ("" if "mode" in own else "+") + f"stage.{name}.mode"
        fix = f"train it with {mode_key}=full, or use stage=scratch (every part trained at 1e-2)"
        if mode == "frozen":
            effect = "the LLM reads fixed noise in place of the image" if name != "llm" else "it cannot learn"
            problem = f"stage.{name}.mode is frozen, which keeps it as it is: {effect}"
        elif mode == "lora":
            problem = f"stage.{name}.mode is lora, which trains adapters on random base weights"
        elif lr is not None and float(lr) < SCRATCH_LR:
            problem = f"it trains at lr {float(lr):g}, a fine-tuning rate: it learns little in a short run"
            lr_key = ("" if "lr" in own else "+") + f"stage.{name}.lr"
            fix = f"raise {lr_key} (e.g. 1e-3), or use stage=scratch (every part trained at 1e-2)"
        else:
            continue
        messages.append(
            f"{name} has random weights ({why}) and {problem}. To learn, {fix}; or load trained weights "
            f"with {name}.name_or_path=<folder>."
        )
    return messages


def _wrap_lora(module: nn.Module, name: str, lora: dict[str, Any]) -> nn.Module:
    """Wrap ``module`` in PEFT LoRA adapters (only the adapters are trainable)."""
    from peft import LoraConfig, get_peft_model

    unknown = set(lora) - {"r", "alpha", "dropout", "bias", "target_modules", "first_layer"}
    if unknown:
        raise ValueError(f"stage.{name}.lora has unknown keys {sorted(unknown)}")
    layers = _layers_from(module, name, lora.get("first_layer"))
    targets = lora.get("target_modules")
    if not targets:
        # an LLM: PEFT's every linear layer but the output head; a vision tower: the linear layers its
        # forward runs (not the pooling head nor blocks past select_layer), so every adapter gets a gradient
        targets = _used_linears(module) if hasattr(module, "preprocess") else "all-linear"
        if layers is not None:  # PEFT takes layer indices only with a list of names
            head = module.get_output_embeddings()
            names = {
                n.rsplit(".", 1)[-1]
                for n, m in module.named_modules()
                if isinstance(m, nn.Linear) and m is not head
            }
            targets = sorted(names)
    config = LoraConfig(
        r=int(lora.get("r", 16)),
        lora_alpha=int(lora.get("alpha", 32)),
        lora_dropout=float(lora.get("dropout", 0.0)),
        bias=lora.get("bias", "none"),
        target_modules=targets,
        layers_to_transform=layers,
    )
    return get_peft_model(module, config)


def _layers_from(module: nn.Module, name: str, first: int | None) -> list[int] | None:
    """Decoder layers ``first..`` of an LLM (``None``: every layer). Layers below ``first`` get no adapter;
    with frozen inputs below them they also run without autograd, so the backward pass stops at ``first``."""
    if first is None or first == 0:
        return None
    count = getattr(getattr(module, "config", None), "num_hidden_layers", None)
    if count is None:
        raise ValueError(f"stage.{name}.lora.first_layer needs an LLM with config.num_hidden_layers")
    if not 0 <= first < count:
        raise ValueError(f"stage.{name}.lora.first_layer must be in [0, {count - 1}], got {first}")
    return list(range(first, count))


def _used_linears(encoder: nn.Module) -> list[str]:
    """Names of the ``nn.Linear`` modules whose output reaches the encoder's output.

    Found by one forward and backward on a zero input: a layer that runs but does not feed the selected
    features (SigLIP's pooling head) has no gradient path and is left out, as are layers never run.
    """
    pre = encoder.preprocess
    size = pre.get("volume_size") or pre["image_size"]
    param = next(encoder.parameters())
    pixels = torch.zeros(
        1, pre["channels"], *size, dtype=param.dtype, device=param.device
    )  # [1, c, (d,) h, w]
    outputs: dict[str, torch.Tensor] = {}
    hooks = [
        m.register_forward_hook(lambda _m, _i, out, n=n: outputs.__setitem__(n, out))
        for n, m in encoder.named_modules()
        if isinstance(m, nn.Linear)
    ]
    try:
        with torch.enable_grad():
            feats = encoder(pixels.requires_grad_(True))  # [1, n, d_enc]
            names = [n for n, out in outputs.items() if out.requires_grad]
            grads = torch.autograd.grad(feats.sum(), [outputs[n] for n in names], allow_unused=True)
    finally:
        for hook in hooks:
            hook.remove()
    used = sorted(n for n, g in zip(names, grads) if g is not None)
    if not used:
        raise ValueError(f"{type(encoder).__name__} uses no nn.Linear: set its stage lora.target_modules")
    return used


def merge_lora(model: nn.Module) -> None:
    """Fold every PEFT LoRA adapter of ``model``'s components into its base weights, in place."""
    from peft import PeftModel

    for name in _present(model):
        module = getattr(model, name)
        if isinstance(module, PeftModel):
            setattr(model, name, module.merge_and_unload())


def trainable_table(model: nn.Module) -> tuple[Table, dict[str, dict[str, int]]]:
    """A rich table (and the numbers) of total and trainable parameters per component."""
    stats: dict[str, dict[str, int]] = {}
    for name in _present(model):
        params = list(getattr(model, name).parameters())
        seen: set[int] = set()
        total = trainable = 0
        for p in params:
            if id(p) in seen:
                continue
            seen.add(id(p))
            total += p.numel()
            trainable += p.numel() if p.requires_grad else 0
        stats[name] = {"total": total, "trainable": trainable}
    table = Table(title="parameters per component")
    for col in ("component", "total", "trainable", "%"):
        table.add_column(col, justify="right" if col != "component" else "left")
    for name, s in stats.items():
        pct = 100.0 * s["trainable"] / max(s["total"], 1)
        table.add_row(name, f"{s['total']:,}", f"{s['trainable']:,}", f"{pct:.1f}")
    return table, stats


def render(table: Table) -> str:
    """Plain-text rendering of a rich table (for logs)."""
    console = Console(width=100, file=io.StringIO())
    console.print(table)
    return console.file.getvalue()
