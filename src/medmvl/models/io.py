"""Save and load a :class:`MedVLM` as a folder: architecture config, safetensors weights, tokenizer.

Layout::

    medmvl_config.json   encoder / connector / llm rebuild arguments (no hub access needed to rebuild)
    model.safetensors    every parameter and buffer of the MedVLM (shared tensors stored once)
    tokenizer/           the tokenizer with its chat template and image tokens
    preprocessor.json    what the data pipeline must feed the encoder (size, mean/std, channels)

Only safetensors are read or written; nothing is unpickled.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch
from hydra.utils import instantiate
from safetensors.torch import load_model, save_model
from transformers import AutoTokenizer

from medmvl.models.llm import export_llm_config, load_llm
from medmvl.models.vlm import MedVLM

CONFIG_NAME = "medmvl_config.json"
WEIGHTS_NAME = "model.safetensors"


def save_pretrained(model: MedVLM, out_dir: str | Path, *, prompt: dict[str, Any] | None = None) -> Path:
    """Write ``model`` to ``out_dir`` (created); returns the folder.

    Args:
        model: the model.
        out_dir: target folder.
        prompt: how prompts were built in training (``format``, ``system_prompt``, ``max_length``), so
            inference builds the same ones by default (see :func:`load_prompt_settings`).
    """
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    config = {
        "format_version": 1,
        "encoder": model.encoder.export_config(),
        "connector": model.connector_config,
        "llm": export_llm_config(model.llm),
        "image_token_counts": model.image_token_counts,
        "prompt": dict(prompt or {}),
    }
    (out / CONFIG_NAME).write_text(json.dumps(config, indent=2, default=_jsonable))
    (out / "preprocessor.json").write_text(json.dumps(model.encoder.preprocess, indent=2, default=_jsonable))
    save_model(model, str(out / WEIGHTS_NAME))
    model.tokenizer.save_pretrained(out / "tokenizer")
    return out


def from_pretrained(path: str | Path, *, dtype: str = "float32", map_location: str = "cpu") -> MedVLM:
    """Rebuild a saved MedVLM offline and load its weights (strict: every key must match)."""
    folder = Path(path)
    cfg_file = folder / CONFIG_NAME
    if not cfg_file.exists():
        raise FileNotFoundError(f"{folder} is not a saved medmvl model: {CONFIG_NAME} is missing")
    cfg = json.loads(cfg_file.read_text())
    tokenizer = AutoTokenizer.from_pretrained(folder / "tokenizer")
    encoder = instantiate(cfg["encoder"])
    connector = instantiate(cfg["connector"])
    llm = load_llm(tokenizer=tokenizer, dtype=dtype, **cfg["llm"])
    model = MedVLM(encoder=encoder, connector=connector, llm=llm)
    missing, unexpected = load_model(model, str(folder / WEIGHTS_NAME), strict=False, device=map_location)
    if missing or unexpected:
        raise RuntimeError(
            f"{folder / WEIGHTS_NAME} does not match the architecture in {CONFIG_NAME}: "
            f"missing {sorted(missing)[:5]}, unexpected {sorted(unexpected)[:5]}"
        )
    return model.to(getattr(torch, dtype)).eval()


def load_prompt_settings(path: str | Path) -> dict[str, Any]:
    """The prompt settings a saved model was trained with (empty for models saved without them)."""
    return dict(json.loads((Path(path) / CONFIG_NAME).read_text()).get("prompt") or {})


def _jsonable(obj: Any) -> Any:
    if isinstance(obj, tuple):
        return list(obj)
    if isinstance(obj, torch.dtype):
        return str(obj).removeprefix("torch.")
    raise TypeError(f"cannot store {type(obj).__name__} in {CONFIG_NAME}")
