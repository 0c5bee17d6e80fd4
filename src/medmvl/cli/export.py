"""``python export.py ckpt=... out=...`` / ``medmvl-export``: a model folder from any checkpoint.

Sources (``ckpt=``): a Lightning ``.ckpt`` written by ``train.py`` (it carries its architecture and
tokenizer, see :mod:`medmvl.training.checkpoint`), a training run folder (its ``checkpoints/last.ckpt``,
else its saved ``model/``), a saved medmvl model folder, or a MedM-VL checkpoint folder. Targets
(``format=``): a medmvl folder (``medmvl.interop.serialization``) with LoRA merged or kept as PEFT adapters
(``lora=``), or a transformers Llava folder (:mod:`medmvl.interop.llava`).
"""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Any

import hydra
from omegaconf import DictConfig, OmegaConf

from medmvl.interop.serialization import CONFIG_NAME, from_pretrained, load_prompt_settings, save_pretrained
from medmvl.models.vlm import MedVLM

log = logging.getLogger("medmvl.export")

FORMATS = ("medmvl", "llava")
LORA_MODES = ("merge", "adapter")


def load_source(
    path: str | os.PathLike, *, dtype: str = "float32", medmvl_sources: dict[str, str] | None = None
) -> tuple[MedVLM, dict[str, Any]]:
    """The model at ``path`` (LoRA adapters kept when it has them) and its prompt settings."""
    from medmvl.interop.medm_vl import is_medmvl_checkpoint, load_medmvl, medmvl_prompt_settings
    from medmvl.training.checkpoint import load_checkpoint

    folder = Path(path).expanduser()
    if folder.is_file() or (folder / "checkpoints" / "last.ckpt").is_file():
        return load_checkpoint(folder, dtype=dtype)
    for candidate in (folder, folder / "model"):
        if (candidate / CONFIG_NAME).is_file():
            return from_pretrained(candidate, dtype=dtype), load_prompt_settings(candidate)
    if is_medmvl_checkpoint(folder):
        return load_medmvl(folder, dtype=dtype, sources=medmvl_sources), medmvl_prompt_settings(folder)
    raise FileNotFoundError(
        f"ckpt={str(path)!r}: not a checkpoint file, a run folder (checkpoints/last.ckpt or model/), a saved "
        f"medmvl model ({CONFIG_NAME}) or a MedM-VL checkpoint (config.json + safetensors)"
    )


def export(cfg: DictConfig) -> Path:
    """Write the model of ``cfg.ckpt`` to ``cfg.out`` in ``cfg.format``; returns the folder."""
    from medmvl.interop.llava import LlavaExportError, export_llava, llava_refusal
    from medmvl.training.stages import merge_lora

    if cfg.format not in FORMATS:
        raise ValueError(f"format={cfg.format!r}; expected one of {FORMATS}")
    if cfg.lora not in LORA_MODES:
        raise ValueError(f"lora={cfg.lora!r}; expected one of {LORA_MODES}")
    if cfg.format == "llava" and cfg.lora == "adapter":
        raise ValueError("format=llava needs lora=merge: the Llava folder holds one set of plain weights")
    out = Path(cfg.out).expanduser()
    if out.exists() and any(out.iterdir()):
        raise FileExistsError(f"out={str(out)!r} exists and is not empty; choose a new folder")
    raw = cfg.get("medmvl_sources")
    sources = OmegaConf.to_container(raw, resolve=True) if OmegaConf.is_config(raw) else dict(raw or {})
    model, prompt = load_source(cfg.ckpt, dtype=cfg.dtype, medmvl_sources=sources)
    if cfg.lora == "merge":
        merge_lora(model)
    if cfg.format == "llava":
        reason = llava_refusal(model)
        if reason:
            raise LlavaExportError(f"cannot export {cfg.ckpt} to the HF Llava format: {reason}")
        folder = export_llava(model, out, prompt=prompt)
    else:
        folder = save_pretrained(model, out, prompt=prompt)
    log.info("exported %s -> %s (format=%s, lora=%s)", cfg.ckpt, folder, cfg.format, cfg.lora)
    print(folder)
    return folder


@hydra.main(version_base="1.3", config_path="../conf", config_name="export")
def main(cfg: DictConfig) -> None:
    """Hydra entry point (console script ``medmvl-export`` and ``export.py``)."""
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    export(cfg)


if __name__ == "__main__":
    main()
