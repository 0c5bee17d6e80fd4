"""``python infer.py ...`` / ``medmvl-infer ...``: answer one question, or every question of a file.

One question prints the answer as the last line on stdout. A file (MedM-VL / LLaVA inference format) is
written back record by record with the generated ``gpt`` turn appended (a final ``gpt`` turn already in
the input is taken as the reference ``answer`` and replaced). The output is rewritten atomically every
``SAVE_EVERY_S`` seconds and at the end, also when interrupted; ids already in it are skipped, so a rerun
resumes.
"""

from __future__ import annotations

import json
import logging
import os
import time
from pathlib import Path
from typing import Any

import hydra
import torch
from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig, OmegaConf
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

from medmvl.data.schema import AnnotationError, Sample, raise_on_errors, validate_records
from medmvl.inference.generate import Generator
from medmvl.models.io import CONFIG_NAME, from_pretrained, load_prompt_settings
from medmvl.models.vlm import MedVLM

log = logging.getLogger("medmvl.infer")
SAVE_EVERY_S = 30.0


def resolve_model_dir(path: str | os.PathLike) -> Path:
    """The saved model folder: ``path`` itself, or ``path/model`` for a training run folder."""
    folder = Path(path).expanduser()
    for candidate in (folder, folder / "model"):
        if (candidate / CONFIG_NAME).is_file():
            return candidate
    what = "does not exist" if not folder.exists() else f"has no {CONFIG_NAME} (nor model/{CONFIG_NAME})"
    raise FileNotFoundError(
        f"model={str(path)!r} is not a saved medmvl model: the folder {what}. Expected a folder written by "
        "medmvl.models.io.save_pretrained (medmvl_config.json, model.safetensors, tokenizer/), e.g. "
        "outputs/train/runs/<run>/model"
    )


def load_model(cfg: DictConfig) -> MedVLM:
    """Load ``cfg.model`` with ``cfg.dtype`` onto ``cfg.device`` (``auto`` picks CUDA when available)."""
    device = cfg.device if cfg.device != "auto" else ("cuda" if torch.cuda.is_available() else "cpu")
    dtype = cfg.dtype
    if dtype == "auto":
        dtype = "bfloat16" if device.startswith("cuda") and torch.cuda.is_bf16_supported() else "float32"
    return from_pretrained(resolve_model_dir(cfg.model), dtype=dtype).to(device)


def _gen_kwargs(cfg: DictConfig) -> dict[str, Any]:
    keys = ("batch_size", "max_new_tokens", "temperature", "top_p", "num_beams")
    return {k: cfg[k] for k in keys}


def _with_prediction(record: dict[str, Any], prediction: str) -> dict[str, Any]:
    """``record`` with the generated gpt turn appended (a final gpt turn moves to ``answer``)."""
    out = dict(record)
    turns = list(out["conversations"])
    if turns and turns[-1].get("from") == "gpt":
        out.setdefault("answer", turns.pop()["value"])
    out["conversations"] = [*turns, {"from": "gpt", "value": prediction}]
    return out


def _read_done(output: Path) -> dict[str, dict[str, Any]]:
    if not output.exists():
        return {}
    try:
        records = json.loads(output.read_text(encoding="utf-8"))
    except json.JSONDecodeError as err:
        raise AnnotationError(f"output {output} exists but is not valid JSON ({err}); move it away") from err
    if not isinstance(records, list):
        raise AnnotationError(f"output {output} exists but is not a JSON list of records")
    return {str(r["id"]): r for r in records if isinstance(r, dict) and "id" in r}


def _write(output: Path, records: list[dict[str, Any]], done: dict[str, dict[str, Any]]) -> None:
    ids = [str(r["id"]) for r in records if isinstance(r, dict) and "id" in r]
    rows = [done[i] for i in ids if i in done] + [r for i, r in done.items() if i not in set(ids)]
    tmp = output.with_name(output.name + ".tmp")
    tmp.write_text(json.dumps(rows, indent=1, ensure_ascii=False), encoding="utf-8")
    os.replace(tmp, output)


def infer_file(generator: Generator, cfg: DictConfig, output: Path) -> Path:
    """Answer every not-yet-answered record of ``cfg.data.annotations``; returns the output file."""
    source = Path(cfg.data.annotations)
    if not source.is_file():
        raise AnnotationError(f"annotation file {str(source)!r} does not exist")
    records = json.loads(source.read_text(encoding="utf-8"))
    samples, problems = validate_records(records, source=str(source), require_answer=False)
    raise_on_errors(problems)
    done = _read_done(output)
    todo = [s for s in samples if s.id not in done]
    log.info(
        "%s: %d records, %d already in %s, %d to answer",
        source,
        len(samples),
        len(samples) - len(todo),
        output,
        len(todo),
    )
    output.parent.mkdir(parents=True, exist_ok=True)
    last_save = time.monotonic()
    columns = (TextColumn("infer"), BarColumn(), MofNCompleteColumn(), TimeRemainingColumn())
    with Progress(*columns, console=Console(stderr=True)) as progress:
        task = progress.add_task("infer", total=len(todo))

        def on_batch(batch: list[Sample], answers: list[str]) -> None:
            nonlocal last_save
            for sample, answer in zip(batch, answers):
                done[sample.id] = _with_prediction(records[sample.index], answer)
            progress.advance(task, len(batch))
            if time.monotonic() - last_save > SAVE_EVERY_S:
                _write(output, records, done)
                last_save = time.monotonic()

        try:
            generator.generate(todo, image_dir=cfg.data.image_dir, on_batch=on_batch, **_gen_kwargs(cfg))
        finally:
            _write(output, records, done)
    return output


def infer(cfg: DictConfig) -> str:
    """Run the job described by a composed ``infer.yaml``; returns the answer or the output file path."""
    single = cfg.get("question") is not None
    batch = cfg.data.get("annotations") is not None
    if single == batch:
        raise ValueError(
            "give either question=... (with image=<path>) for one question, or data.annotations=<file> "
            f"for a file; got question={cfg.get('question')!r}, data.annotations={cfg.data.get('annotations')!r}"
        )
    if cfg.get("image") is not None and not single:
        raise ValueError("image=... needs question=...; for a file use data.annotations and data.image_dir")
    model = load_model(cfg)
    trained = load_prompt_settings(resolve_model_dir(cfg.model))
    generator = Generator(
        model,
        max_length=cfg.max_length or trained.get("max_length") or 8192,
        format=cfg.format or trained.get("format") or "chat",
        system_prompt=cfg.system_prompt if cfg.system_prompt is not None else trained.get("system_prompt"),
    )
    if single:
        image = cfg.image
        images = OmegaConf.to_container(image) if OmegaConf.is_list(image) else image
        return generator.generate([(images, cfg.question)], **_gen_kwargs(cfg))[0]
    output = (
        Path(cfg.output)
        if cfg.get("output")
        else Path(HydraConfig.get().runtime.output_dir) / "predictions.json"
    )
    return str(infer_file(generator, cfg, output))


@hydra.main(version_base="1.3", config_path="../conf", config_name="infer")
def main(cfg: DictConfig) -> None:
    """Hydra entry point (console script ``medmvl-infer`` and ``infer.py``); prints the result last."""
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    print(infer(cfg), flush=True)


if __name__ == "__main__":
    main()
