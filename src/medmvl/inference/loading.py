"""The one resolver of model paths: every entry point that takes a trained model reads it through here.

``train.py init_from=``, ``infer.py model=``, ``evaluate.py model=``, ``demo.py model=`` and
``export.py ckpt=`` all accept the same four forms:

* a saved medmvl folder (``medmvl_config.json`` + ``model.safetensors`` + ``tokenizer/``,
  :mod:`medmvl.interop.serialization`);
* a Lightning ``.ckpt`` written by ``train.py`` (it carries its architecture and tokenizer,
  :mod:`medmvl.training.checkpoint`);
* a training run folder: its saved ``model/``, else its ``checkpoints/last.ckpt`` (a run stopped before it
  saved; ``prefer="checkpoint"`` reverses the order, for an export that keeps LoRA adapters unmerged);
* a MedM-VL checkpoint folder (:mod:`medmvl.interop.medm_vl`).

Each comes back with the prompt settings it was trained with (format, system prompt, max length), so a
prompt is built the way the model learned it.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from medmvl.interop.serialization import CONFIG_NAME
from medmvl.models.vlm import MedVLM

Kind = Literal["medmvl", "checkpoint", "medm_vl"]
LAST = Path("checkpoints") / "last.ckpt"


@dataclass
class LoadedModel:
    """A model read from a path, with what it was trained with.

    Attributes:
        model: The MedVLM (eval mode).
        prompt: Prompt settings it was trained with (``format``, ``system_prompt``, ``max_length``; empty
            when the source does not record them).
        kind: Which form the path had: ``medmvl`` folder, Lightning ``checkpoint`` or ``medm_vl`` folder.
        source: The folder or file actually read (a run folder resolves to its ``model/`` or ``last.ckpt``).
    """

    model: MedVLM
    prompt: dict[str, Any] = field(default_factory=dict)
    kind: Kind = "medmvl"
    source: Path = Path()


def resolve_model_path(path: str | os.PathLike, *, prefer: str = "model") -> tuple[Kind, Path]:
    """Which form ``path`` has and the file or folder to read, without loading anything.

    Args:
        path: Any of the forms in the module docstring.
        prefer: For a run folder holding both: ``model`` (its saved ``model/``) or ``checkpoint``
            (its ``checkpoints/last.ckpt``).

    Raises:
        FileNotFoundError: ``path`` is none of the forms (the message lists them).
        ValueError: ``path`` is a distributed (FSDP) checkpoint folder, or ``prefer`` is unknown.
    """
    if prefer not in ("model", "checkpoint"):
        raise ValueError(f"prefer={prefer!r}: expected 'model' or 'checkpoint'")
    folder = Path(path).expanduser()
    if folder.is_file():
        return "checkpoint", folder
    if (folder / CONFIG_NAME).is_file():
        return "medmvl", folder
    run = [("medmvl", folder / "model"), ("checkpoint", folder / LAST)]
    for kind, candidate in run if prefer == "model" else run[::-1]:
        if (candidate / CONFIG_NAME).is_file() if kind == "medmvl" else candidate.is_file():
            return kind, candidate
    if (folder / ".metadata").is_file():
        raise ValueError(
            f"{folder} is a distributed (FSDP) checkpoint folder; consolidate it into one file first: "
            f"python -m lightning.fabric.utilities.consolidate_checkpoint {folder}"
        )
    from medmvl.interop.medm_vl import is_medmvl_checkpoint

    if is_medmvl_checkpoint(folder):
        return "medm_vl", folder
    what = "does not exist" if not folder.exists() else "is none of them"
    raise FileNotFoundError(
        f"{str(path)!r} is not a saved medmvl model, a checkpoint file or a run folder: the path {what}. "
        f"Expected a saved model folder ({CONFIG_NAME} + model.safetensors + tokenizer/, e.g. "
        "outputs/train/runs/<run>/model), a Lightning .ckpt written by train.py, a training run folder "
        "(model/ or checkpoints/last.ckpt), or a MedM-VL checkpoint folder (config.json + safetensors)"
    )


def medmvl_sources(value: Any) -> dict[str, str]:
    """The ``medmvl_sources`` setting of a config (a DictConfig, dict or ``None``) without its unset parts."""
    from omegaconf import OmegaConf

    raw = OmegaConf.to_container(value, resolve=True) if OmegaConf.is_config(value) else dict(value or {})
    return {str(k): str(v) for k, v in raw.items() if v is not None}


def load_model(
    path: str | os.PathLike,
    *,
    dtype: str = "float32",
    device: str = "cpu",
    prefer: str = "model",
    merge_lora: bool = False,
    medmvl_sources: dict[str, str] | None = None,
) -> LoadedModel:
    """Load the model at ``path`` (any form of :func:`resolve_model_path`).

    Args:
        path: The model's folder or file.
        dtype: Parameter dtype (``float32``, ``bfloat16``, ...).
        device: Where the model ends up.
        prefer: Run folders: ``model`` or ``checkpoint`` first (see :func:`resolve_model_path`).
        merge_lora: Fold LoRA adapters (a checkpoint's, or a folder saved with ``lora=adapter``) into the
            base weights; by default they stay PEFT modules, which reproduces the trained logits exactly.
        medmvl_sources: MedM-VL folders only: where to read parts the checkpoint does not hold.
    """
    kind, source = resolve_model_path(path, prefer=prefer)
    if kind == "checkpoint":
        from medmvl.training.checkpoint import load_checkpoint

        model, prompt = load_checkpoint(source, dtype=dtype)
    elif kind == "medmvl":
        from medmvl.interop.serialization import from_pretrained, load_prompt_settings

        model, prompt = from_pretrained(source, dtype=dtype), load_prompt_settings(source)
    else:
        from medmvl.interop.medm_vl import load_medmvl, medmvl_prompt_settings

        model, prompt = (
            load_medmvl(source, dtype=dtype, sources=medmvl_sources),
            medmvl_prompt_settings(source),
        )
    if merge_lora:
        from medmvl.training.stages import merge_lora as merge

        merge(model)
    return LoadedModel(model.to(device), dict(prompt or {}), kind, source)
