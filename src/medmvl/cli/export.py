"""``python export.py ckpt=... out=...`` / ``medmvl-export``: a model folder from any checkpoint.

Sources (``ckpt=``): whatever :mod:`medmvl.inference.loading` reads -- a Lightning ``.ckpt`` written by
``train.py``, a training run folder (here its ``checkpoints/last.ckpt`` first, else its saved ``model/``), a
saved medmvl model folder, or a MedM-VL checkpoint folder. Targets
(``format=``): a medmvl folder (``medmvl.interop.serialization``) with LoRA merged or kept as PEFT adapters
(``lora=``), or a transformers Llava folder (:mod:`medmvl.interop.llava`).
"""

from __future__ import annotations

import logging
import os
from pathlib import Path

import hydra
from omegaconf import DictConfig

from medmvl.inference.loading import load_model, medmvl_sources
from medmvl.interop.serialization import save_pretrained

log = logging.getLogger("medmvl.export")

FORMATS = ("medmvl", "llava")
LORA_MODES = ("merge", "adapter")


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
    sources = medmvl_sources(cfg.get("medmvl_sources"))
    # a run folder: its last.ckpt first, so lora=adapter keeps the adapters the saved model/ has merged
    loaded = load_model(cfg.ckpt, dtype=cfg.dtype, prefer="checkpoint", medmvl_sources=sources)
    model, prompt = loaded.model, loaded.prompt
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
