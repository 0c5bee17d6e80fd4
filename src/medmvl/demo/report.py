"""The demo's verdict after training: held-out accuracy with the image versus the same model without it.

Used as the training ``post_train`` hook (``conf/experiment/demo.yaml``)::

    post_train: {_target_: medmvl.demo.report.demo_report, _partial_: true,
                 batch_size: 16, max_new_tokens: 8}

It answers every question of the held-out file twice — with its image, and text-only (images and
``<image>`` placeholders removed) — scores both (``closed.py`` definitions), prints a Rich table, and
writes ``demo_results.json`` and ``demo_predictions.json`` into the run folder. The last line on stdout is
the path of ``demo_results.json``, so scripts can ``tail -n1`` it.
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path
from typing import Any

import torch
from rich.console import Console
from rich.table import Table

from medmvl.evaluation.vqa import VQAItem, load_vqa, score, score_item
from medmvl.inference.generator import Generator
from medmvl.models.vlm import MedVLM

_IMPORTED_AT = time.time()
RESULTS_NAME = "demo_results.json"
PREDICTIONS_NAME = "demo_predictions.json"


_LAST_REPORT: dict[str, float | None] = {"at": None}
"""When this process last finished a report (the next sweep job's minutes count from there)."""


def process_start_time() -> float:
    """Wall-clock start of this process (Linux ``/proc``), else the time this module was imported."""
    try:
        fields = Path("/proc/self/stat").read_text().rsplit(")", 1)[1].split()
        ticks = int(fields[19])  # field 22 of stat(5): start time in clock ticks since boot
        boot = next(
            float(ln.split()[1])
            for ln in Path("/proc/stat").read_text().splitlines()
            if ln.startswith("btime")
        )
        return boot + ticks / os.sysconf("SC_CLK_TCK")
    except (OSError, ValueError, IndexError, StopIteration):
        return _IMPORTED_AT


def demo_report(
    *,
    model: MedVLM,
    datamodule: Any,
    output_dir: str | os.PathLike,
    annotations: str | None = None,
    image_dir: str | None = None,
    batch_size: int = 16,
    max_new_tokens: int = 8,
    started_at: float | None = None,
    device: str | None = None,
) -> dict[str, Any]:
    """Evaluate ``model`` on held-out questions with and without images; write and print the report.

    Args:
        model: The trained model (moved to ``device`` for generation, then back).
        datamodule: The training ``MedVLDataModule``: its ``val_annotations``, ``image_dir``,
            ``image3d_dir``, ``volume`` (how volumes are read), ``max_length``, ``format`` and
            ``system_prompt`` are the defaults here.
        output_dir: Run folder for ``demo_results.json`` and ``demo_predictions.json``.
        annotations: Held-out annotation file (default: the datamodule's ``val_annotations``).
        image_dir: Folder of relative image paths (default: the datamodule's, else the file's folder).
        batch_size: Prompts per ``generate`` call.
        max_new_tokens: Longest answer; closed answers are a few tokens.
        started_at: ``time.time()`` when the run started (default: this process's start, or the end of
            its previous report: the jobs of a -m sweep run one after another in one process).
        device: Where to generate (default: CUDA when available, else where the model is).

    Returns:
        ``heldout_accuracy``, ``text_only_accuracy``, ``chance_accuracy``, ``n_closed``, ``open_recall``,
        ``text_only_open_recall``, ``minutes`` and ``demo_results`` (the file's path).
    """
    hp = getattr(datamodule, "hparams", None) or {}
    annotations = annotations or hp.get("val_annotations")
    if not annotations:
        raise ValueError(
            "demo_report needs a held-out file: set data.val_annotations or post_train.annotations"
        )
    image3d_dir = None
    if annotations == hp.get("val_annotations"):
        image_dir = hp.get("image_dir") if image_dir is None else image_dir
        image3d_dir = hp.get("image3d_dir")
    items = load_vqa(annotations)
    generator = Generator(
        model,
        max_length=hp.get("max_length", 8192),
        format=hp.get("format", "chat"),
        system_prompt=hp.get("system_prompt"),
        volume_options=hp.get("volume"),  # read volumes as training did (data.volume)
    )
    home = next(model.parameters()).device
    target = torch.device(device or ("cuda" if torch.cuda.is_available() else home))
    model.to(target)
    try:
        kwargs = {"image_dir": image_dir, "image3d_dir": image3d_dir, "batch_size": batch_size}
        kwargs["max_new_tokens"] = max_new_tokens
        with_image = generator.generate([it.sample for it in items], **kwargs)
        text_only = generator.generate([it.sample for it in items], text_only=True, **kwargs)
    finally:
        model.to(home)
    results = _results(items, with_image, text_only, annotations)
    # a -m sweep runs its jobs one after another in this process: a later job counts from the previous report
    start = started_at if started_at is not None else (_LAST_REPORT["at"] or process_start_time())
    results["minutes"] = round((time.time() - start) / 60.0, 2)
    out = Path(output_dir)
    out.mkdir(parents=True, exist_ok=True)
    (out / PREDICTIONS_NAME).write_text(json.dumps(_predictions(items, with_image, text_only), indent=1))
    results["predictions"] = str(out / PREDICTIONS_NAME)
    path = out / RESULTS_NAME
    path.write_text(json.dumps(results, indent=2))
    _LAST_REPORT["at"] = time.time()
    console = Console()
    console.print(_table(results))
    print(path, flush=True)
    keys = (
        "heldout_accuracy",
        "text_only_accuracy",
        "chance_accuracy",
        "n_closed",
        "open_recall",
        "text_only_open_recall",
        "minutes",
    )
    return {**{k: results[k] for k in keys}, "demo_results": str(path)}


def _results(
    items: list[VQAItem], with_image: list[str], text_only: list[str], source: str
) -> dict[str, Any]:
    img, txt = score(items, with_image), score(items, text_only)
    per_type = {}
    for qtype, entry in img["per_question_type"].items():
        other = txt["per_question_type"][qtype]
        per_type[qtype] = {
            **entry,
            **{f"text_only_{k}": v for k, v in other.items() if k not in ("n", "answer_type")},
        }
    return {
        "annotations": str(source),
        "heldout_accuracy": img["closed_accuracy"],
        "text_only_accuracy": txt["closed_accuracy"],
        "chance_accuracy": img["chance_accuracy"],
        "n_closed": img["n_closed"],
        "n_open": img["n_open"],
        "open_exact_match": img["open_exact_match"],
        "open_recall": img["open_recall"],
        "text_only_open_exact_match": txt["open_exact_match"],
        "text_only_open_recall": txt["open_recall"],
        "per_question_type": per_type,
    }


def _predictions(items: list[VQAItem], with_image: list[str], text_only: list[str]) -> list[dict[str, Any]]:
    rows = []
    for item, pred, pred_txt in zip(items, with_image, text_only):
        rows.append(
            {
                "id": item.sample.id,
                "question_type": item.question_type,
                "answer_type": "closed" if item.closed else "open",
                "question": item.sample.turns[0].text,
                "answer": item.answer,
                "choices": list(item.choices) if item.choices else None,
                "prediction": pred,
                "text_only_prediction": pred_txt,
                **score_item(item, pred),
                **{f"text_only_{k}": v for k, v in score_item(item, pred_txt).items()},
            }
        )
    return rows


def _pct(value: float | None) -> str:
    return "-" if value is None else f"{100 * value:.1f}"


def _table(results: dict[str, Any]) -> Table:
    table = Table(title=f"held-out questions: {results['annotations']}")
    for name in ("question type", "n", "with image %", "text only %", "metric"):
        table.add_column(name, justify="left" if name in ("question type", "metric") else "right")
    for qtype, entry in results["per_question_type"].items():
        key = "accuracy" if "accuracy" in entry else "recall"
        table.add_row(qtype, str(entry["n"]), _pct(entry[key]), _pct(entry[f"text_only_{key}"]), key)
    table.add_section()
    table.add_row(
        "closed (all)",
        str(results["n_closed"]),
        _pct(results["heldout_accuracy"]),
        _pct(results["text_only_accuracy"]),
        f"accuracy (chance {_pct(results['chance_accuracy'])})",
    )
    if results["n_open"]:
        table.add_row(
            "open (all)",
            str(results["n_open"]),
            _pct(results["open_recall"]),
            _pct(results["text_only_open_recall"]),
            "recall",
        )
    return table
