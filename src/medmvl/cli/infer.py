"""``python infer.py ...`` / ``medmvl-infer ...``: answer one question, or every question of a file.

One question prints the answer as the last line on stdout. A file (MedM-VL / LLaVA inference format) is
written back record by record with the generated ``gpt`` turn appended and in a ``prediction`` field
(``medmvl.inference.batch``: ``multi_turn=true`` answers every human turn; finished batches go to
``<output>.partial.jsonl`` at once and the JSON output is written at the end, also when interrupted; ids
already answered are skipped, so a rerun resumes). ``<output>.origin`` records the model (path and
weights' sha256), prompt and generation settings; a rerun with others is refused, naming the difference,
unless ``overwrite=true``.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import hydra
import torch
from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig, OmegaConf
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

from medmvl.inference import loading
from medmvl.inference.batch import answer_file, check_resume, generation_settings, model_origin
from medmvl.inference.generator import Generator, as_sample
from medmvl.inference.loading import LoadedModel

log = logging.getLogger("medmvl.infer")


def load_model(cfg: DictConfig) -> LoadedModel:
    """Load ``cfg.model`` (any form :mod:`medmvl.inference.loading` reads) with ``cfg.dtype`` onto
    ``cfg.device`` (``auto`` picks CUDA when available, and bfloat16 on a GPU that supports it)."""
    device = cfg.device if cfg.device != "auto" else ("cuda" if torch.cuda.is_available() else "cpu")
    dtype = cfg.dtype
    if dtype == "auto":
        dtype = "bfloat16" if device.startswith("cuda") and torch.cuda.is_bf16_supported() else "float32"
    sources = loading.medmvl_sources(cfg.get("medmvl_sources"))
    return loading.load_model(cfg.model, dtype=dtype, device=device, medmvl_sources=sources)


def generation_kwargs(cfg: DictConfig) -> dict[str, Any]:
    """The decoding options of an ``infer.yaml``-shaped config."""
    keys = ("batch_size", "max_new_tokens", "temperature", "top_p", "num_beams")
    return {k: cfg[k] for k in keys}


def build_generator(cfg: DictConfig) -> Generator:
    """Load ``cfg.model`` and build prompts the way it was trained (overridable in the config)."""
    loaded = load_model(cfg)
    trained = loaded.prompt
    return Generator(
        loaded.model,
        max_length=cfg.max_length or trained.get("max_length") or 8192,
        format=cfg.format or trained.get("format") or "chat",
        system_prompt=cfg.system_prompt if cfg.system_prompt is not None else trained.get("system_prompt"),
        volume_options=_container(cfg.data.get("volume")),
    )


def infer_file(
    generator: Generator, cfg: DictConfig, output: Path, *, model: Mapping[str, Any] | None = None
) -> Path:
    """Answer every not-yet-answered record of ``cfg.data.annotations`` into ``output`` (with a progress bar).

    ``generator`` answers with the model of ``cfg.model``; the output records that model (resolved path,
    weights' sha256; ``model``: a :func:`~medmvl.inference.batch.model_origin` already computed), the prompt
    and the generation settings, and a rerun with others is refused unless ``cfg.overwrite`` (a config
    without the key: false) starts afresh (:mod:`medmvl.inference.batch`).
    """
    columns = (TextColumn("infer"), BarColumn(), MofNCompleteColumn(), TimeRemainingColumn())
    with Progress(*columns, console=Console(stderr=True)) as progress:
        task = progress.add_task("infer", total=None)

        def on_progress(done: int, total: int) -> None:
            progress.update(task, completed=done, total=total)

        return answer_file(
            generator,
            cfg.data.annotations,
            output,
            model=model if model is not None else loading.resolve_model_path(cfg.model)[1],
            overwrite=bool(cfg.get("overwrite", False)),
            multi_turn=cfg.multi_turn,
            text_only=cfg.text_only,
            image_dir=cfg.data.image_dir,
            image3d_dir=cfg.data.image3d_dir,
            on_progress=on_progress,
            **generation_kwargs(cfg),
        )


def infer(cfg: DictConfig) -> str:
    """Run the job described by a composed ``infer.yaml``; returns the answer or the output file path."""
    single = cfg.get("question") is not None
    batch = cfg.data.get("annotations") is not None
    if single == batch:
        raise ValueError(
            "give either question=... (with image=<path> or image3d=<path>) for one question, or "
            f"data.annotations=<file> for a file; got question={cfg.get('question')!r}, "
            f"data.annotations={cfg.data.get('annotations')!r}"
        )
    if (cfg.get("image") is not None or cfg.get("image3d") is not None) and not single:
        raise ValueError(
            "image=... / image3d=... need question=...; for a file use data.annotations and data.image_dir"
        )
    if single:
        sample = as_sample((_paths(cfg.get("image")), cfg.question), images3d=_paths(cfg.get("image3d")))
        kwargs = generation_kwargs(cfg) | {"text_only": cfg.text_only}
        return build_generator(cfg).generate([sample], **kwargs)[0]
    output = (
        Path(cfg.output)
        if cfg.get("output")
        else Path(HydraConfig.get().runtime.output_dir) / "predictions.json"
    )
    model = check_output_before_loading(cfg, output)
    return str(infer_file(build_generator(cfg), cfg, output, model=model))


def check_output_before_loading(cfg: DictConfig, output: Path) -> dict[str, Any]:
    """Refuse, before any weights load, to resume into an ``output`` made with other weights or generation
    settings (the prompt settings are checked once the model is loaded); returns the model's recorded
    origin (path, weights' sha256), hashed once for the run."""
    model = model_origin(loading.resolve_model_path(cfg.model)[1])
    if not cfg.get("overwrite", False):
        kwargs = generation_kwargs(cfg) | {"text_only": cfg.text_only}
        generation = generation_settings(multi_turn=cfg.multi_turn, **kwargs)
        check_resume(output, {"model": model, "generation": generation})
    return model


def _container(node: Any) -> Any:
    return OmegaConf.to_container(node, resolve=True) if OmegaConf.is_config(node) else node


def _paths(value: Any) -> list[str] | str | None:
    return OmegaConf.to_container(value) if OmegaConf.is_list(value) else value


@hydra.main(version_base="1.3", config_path="../conf", config_name="infer")
def main(cfg: DictConfig) -> None:
    """Hydra entry point (console script ``medmvl-infer`` and ``infer.py``); prints the result last."""
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    print(infer(cfg), flush=True)


if __name__ == "__main__":
    main()
