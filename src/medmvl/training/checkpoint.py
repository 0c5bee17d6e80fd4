"""Lightning checkpoints that describe their model, so any ``.ckpt`` rebuilds a MedVLM offline.

Why: a checkpoint holds weights keyed by module path, not the architecture; rebuilding it from the run's
Hydra config would reload the pretrained encoder and LLM from the hub just to overwrite them. So
``MedVLMModule.on_save_checkpoint`` adds a ``medmvl`` entry: the architecture (the same dict as
``medmvl_config.json``), the tokenizer's files, and the run seed. Everything in it is a plain string,
number, list or uint8 tensor, so checkpoints load with ``torch.load(weights_only=True)``.
:func:`load_checkpoint` rebuilds the model, wraps the components that trained with LoRA exactly as the
stage did (``hyper_parameters.stage``) and loads the weights strictly.
"""

from __future__ import annotations

import tempfile
from pathlib import Path
from typing import Any

import torch
from torch import nn
from transformers import AutoTokenizer, PreTrainedTokenizerBase

from medmvl.interop.serialization import build_from_config, model_config
from medmvl.models.vlm import MedVLM

KEY = "medmvl"
"""The checkpoint entry written by ``MedVLMModule.on_save_checkpoint``."""

PROMPT_KEYS = ("format", "system_prompt", "max_length")


def describe(model: nn.Module) -> dict[str, Any]:
    """``{"config": <medmvl_config.json dict>, "tokenizer": {file name: text or uint8 tensor}}``."""
    config = model_config(model)
    config.pop("adapters", None)  # a checkpoint carries the LoRA layout in its stage instead
    return {"config": config, "tokenizer": tokenizer_files(model.tokenizer)}


def tokenizer_files(tokenizer: PreTrainedTokenizerBase) -> dict[str, Any]:
    """The files ``tokenizer.save_pretrained`` writes: text as ``str``, anything else as a uint8 tensor."""
    with tempfile.TemporaryDirectory() as tmp:
        tokenizer.save_pretrained(tmp)
        files: dict[str, Any] = {}
        for path in sorted(Path(tmp).iterdir()):
            data = path.read_bytes()
            try:
                files[path.name] = data.decode("utf-8")
            except UnicodeDecodeError:
                files[path.name] = torch.frombuffer(bytearray(data), dtype=torch.uint8)
    return files


def restore_tokenizer(files: dict[str, Any]) -> PreTrainedTokenizerBase:
    """A tokenizer from :func:`tokenizer_files` output."""
    with tempfile.TemporaryDirectory() as tmp:
        for name, content in files.items():
            target = Path(tmp) / Path(name).name
            if isinstance(content, str):
                target.write_text(content, encoding="utf-8")
            else:
                target.write_bytes(content.numpy().tobytes())
        return AutoTokenizer.from_pretrained(tmp)


def find_checkpoint(path: str | Path) -> Path:
    """``path`` itself for a ``.ckpt`` file; ``<run>/checkpoints/last.ckpt`` for a training run folder."""
    path = Path(path).expanduser()
    if path.is_file():
        return path
    if (path / "checkpoints" / "last.ckpt").is_file():
        return path / "checkpoints" / "last.ckpt"
    if (path / ".metadata").is_file():
        raise ValueError(
            f"{path} is a distributed (FSDP) checkpoint folder; consolidate it into one file first: "
            f"python -m lightning.fabric.utilities.consolidate_checkpoint {path}"
        )
    raise FileNotFoundError(f"{path}: neither a checkpoint file nor a run folder with checkpoints/last.ckpt")


def load_checkpoint(path: str | Path, *, dtype: str = "float32") -> tuple[MedVLM, dict[str, Any]]:
    """Rebuild the model of a medmvl Lightning checkpoint (weights as trained, LoRA adapters unmerged).

    Args:
        path: a ``.ckpt`` file or a training run folder (its ``checkpoints/last.ckpt``).
        dtype: parameter dtype.

    Returns:
        The model (eval mode) and the prompt settings its data module trained with.
    """
    from medmvl.training.stages import apply_stage

    file = find_checkpoint(path)
    ckpt = torch.load(file, map_location="cpu", weights_only=True, mmap=True)
    desc = ckpt.get(KEY)
    if not desc or "config" not in desc:
        raise ValueError(
            f"{file} has no '{KEY}' entry: not written by medmvl's MedVLMModule (or by an older version); "
            "export the saved model folder (<run>/model) instead"
        )
    model = build_from_config(desc["config"], restore_tokenizer(desc["tokenizer"]), dtype=dtype)
    stage = (ckpt.get("hyper_parameters") or {}).get("stage") or {}
    if any((spec or {}).get("mode") == "lora" for spec in stage.values()):
        apply_stage(model, stage)
    state = {k.removeprefix("model."): v for k, v in ckpt["state_dict"].items() if k.startswith("model.")}
    model.load_state_dict(state, strict=True)
    model.requires_grad_(False)
    data_hp = ckpt.get("datamodule_hyper_parameters") or {}
    prompt = {k: data_hp.get(k) for k in PROMPT_KEYS}
    return model.to(getattr(torch, dtype)).eval(), prompt
