"""The demo's verdict after training: held-out accuracy with the image versus the same model without it.

Used as the training ``post_train`` hook (``conf/experiment/demo.yaml``)::

    post_train: {_target_: medmvl.demo.report.demo_report, _partial_: true,
                 batch_size: 16, max_new_tokens: 8}

It answers every question of the held-out file twice — with its image, and text-only (images and
``<image>`` placeholders removed) — scores both with evaluate.py's code (``evaluation.predictions`` and
``evaluation.report``; definitions in docs/metrics.md), prints a Rich table, and writes
``demo_results.json`` and ``demo_predictions.json`` into the run folder. The last line on stdout is the
path of ``demo_results.json``, so scripts can ``tail -n1`` it.

Held-out questions are closed or open: ``heldout_accuracy`` / ``text_only_accuracy`` are the closed
accuracy, ``chance_accuracy`` the closed chance level, ``open_*`` the open recall and exact match; a
question without a type is of type ``all``; a multiple-choice (``choice``) question is refused before
generating (evaluate.py scores those). With a ``protocol`` (an ``evaluation.protocols`` scorer, e.g.
``ct_rate`` for the 3D demo's reports, ``conf/experiment/demo_3d_report.yaml``) both answer sets are also
scored by it: ``protocol`` in ``demo_results.json`` holds its overall metrics with the volume and text-only.
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

from medmvl.evaluation.predictions import Question, load_questions, question_rows
from medmvl.evaluation.protocols.base import Protocol
from medmvl.evaluation.report import build_report
from medmvl.inference.generator import Generator
from medmvl.models.vlm import MedVLM

_IMPORTED_AT = time.time()
RESULTS_NAME = "demo_results.json"
PREDICTIONS_NAME = "demo_predictions.json"


RETURNED = (
    "heldout_accuracy",
    "text_only_accuracy",
    "chance_accuracy",
    "n_closed",
    "open_recall",
    "text_only_open_recall",
    "minutes",
)
"""The numbers of ``demo_results.json`` that ``demo_report`` also returns (they join the training metrics)."""

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
    protocol: Protocol | None = None,
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
        protocol: Also score both answer sets by this protocol (``protocol`` in the results).

    Returns:
        ``heldout_accuracy``, ``text_only_accuracy``, ``chance_accuracy``, ``n_closed``, ``open_recall``,
        ``text_only_open_recall``, ``minutes`` and ``demo_results`` (the file's path).
    """
    hp = getattr(datamodule, "hparams", None) or {}
    annotations, image_dir, image3d_dir = _heldout(hp, annotations, image_dir)
    questions = heldout_questions(annotations)
    options = {"image_dir": image_dir, "image3d_dir": image3d_dir, "batch_size": batch_size}
    with_image, text_only = _generate(model, hp, questions, device, max_new_tokens=max_new_tokens, **options)
    results, predictions = demo_results(questions, with_image, text_only, annotations)
    if protocol is not None:
        results["protocol"] = protocol_results(protocol, questions, with_image, text_only)
    # a -m sweep runs its jobs one after another in this process: a later job counts from the previous report
    start = started_at if started_at is not None else (_LAST_REPORT["at"] or process_start_time())
    results["minutes"] = round((time.time() - start) / 60.0, 2)
    path = _write(Path(output_dir), results, predictions)
    _LAST_REPORT["at"] = time.time()
    Console().print(_table(results))
    if "protocol" in results:
        Console().print(_protocol_table(protocol, results["protocol"]))
    print(path, flush=True)
    return {**{k: results[k] for k in RETURNED}, "demo_results": str(path)}


def _heldout(hp: Any, annotations: str | None, image_dir: str | None) -> tuple[str, str | None, str | None]:
    """``(held-out file, image_dir, image3d_dir)``; the datamodule's folders serve its val_annotations."""
    annotations = annotations or hp.get("val_annotations")
    if not annotations:
        raise ValueError(
            "demo_report needs a held-out file: set data.val_annotations or post_train.annotations"
        )
    image3d_dir = None
    if annotations == hp.get("val_annotations"):
        image_dir = hp.get("image_dir") if image_dir is None else image_dir
        image3d_dir = hp.get("image3d_dir")
    return annotations, image_dir, image3d_dir


def heldout_questions(annotations: str | os.PathLike) -> list[Question]:
    """The held-out file's questions (type ``all`` where a record has no ``question_type``).

    Raises:
        AnnotationError: As ``load_questions``.
        ValueError: A multiple-choice question: the demo report scores closed and open questions.
    """
    questions = load_questions(annotations, type_keys=("question_type",), no_type="all")
    choice = [q.sample.where() for q in questions if q.row.kind == "choice"]
    if choice:
        raise ValueError(
            f"{choice[0]}: a multiple-choice question ({len(choice)} in all); demo_report scores closed "
            "and open questions: set their answer_type, or score them with evaluate.py"
        )
    return questions


def _generate(
    model: MedVLM, hp: Any, questions: list[Question], device: str | None, **options: Any
) -> tuple[list[str], list[str]]:
    """Answers to every question with its images and text-only, generated on ``device``."""
    generator = Generator(
        model,
        max_length=hp.get("max_length", 8192),
        format=hp.get("format", "chat"),
        system_prompt=hp.get("system_prompt"),
        volume_options=hp.get("volume"),  # read volumes as training did (data.volume)
    )
    home = next(model.parameters()).device
    target = torch.device(device or ("cuda" if torch.cuda.is_available() else home))
    samples = [q.sample for q in questions]
    model.to(target)
    try:
        return generator.generate(samples, **options), generator.generate(samples, text_only=True, **options)
    finally:
        model.to(home)


def demo_results(
    questions: list[Question], with_image: list[str], text_only: list[str], source: str | os.PathLike
) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """``(demo_results.json without minutes and predictions, demo_predictions.json rows)``, scored by
    ``evaluation.report.build_report`` on the rows of both answer lists."""
    img, img_scores = build_report(question_rows(questions, with_image))
    txt, txt_scores = build_report(question_rows(questions, text_only))
    per_type = {}
    for qtype, entry in img["by_question_type"].items():
        other = _type_entry(txt["by_question_type"][qtype])
        per_type[qtype] = {
            **_type_entry(entry),
            **{f"text_only_{k}": v for k, v in other.items() if k not in ("n", "answer_type")},
        }
    overall, overall_txt = img["overall"], txt["overall"]
    results = {
        "annotations": str(source),
        "heldout_accuracy": overall["closed_accuracy"],
        "text_only_accuracy": overall_txt["closed_accuracy"],
        "chance_accuracy": overall["chance_accuracy"],
        "n_closed": overall["n_closed"],
        "n_open": overall["n_open"],
        "open_exact_match": overall["exact_match"],
        "open_recall": overall["recall"],
        "text_only_open_exact_match": overall_txt["exact_match"],
        "text_only_open_recall": overall_txt["recall"],
        "per_question_type": per_type,
    }
    return results, _predictions(questions, img_scores, txt_scores)


def protocol_results(
    protocol: Protocol, questions: list[Question], with_image: list[str], text_only: list[str]
) -> dict[str, Any]:
    """Both answer sets' overall metrics by ``protocol``, with its name and what it cannot compute here."""
    img, _ = protocol.evaluate(question_rows(questions, with_image))
    txt, _ = protocol.evaluate(question_rows(questions, text_only))
    return {**protocol.describe(), "with_image": img["overall"], "text_only": txt["overall"]}


def _protocol_table(protocol: Protocol, entry: dict[str, Any]) -> Table:
    table = Table(title=f"held-out answers scored by protocol {entry['name']}")
    for name in ("metric", "with image", "text only"):
        table.add_column(name, justify="left" if name == "metric" else "right")
    for key, title in protocol.columns:
        if key in entry["unavailable"]:
            table.add_row(title, "n/a", "n/a")
        else:
            table.add_row(title, *(_num(entry[side].get(key)) for side in ("with_image", "text_only")))
    return table


def _num(value: float | None) -> str:
    return "-" if value is None else f"{value:.3f}"


def _type_entry(entry: dict[str, Any]) -> dict[str, Any]:
    """A question type's ``answer_type`` (closed / open / mixed), ``n`` and its closed and open metrics."""
    kinds = [kind for kind in ("closed", "open") if entry[f"n_{kind}"]]
    out: dict[str, Any] = {"answer_type": kinds[0] if len(kinds) == 1 else "mixed", "n": entry["n"]}
    if entry["n_closed"]:
        out["accuracy"] = entry["closed_accuracy"]
    if entry["n_open"]:
        out.update(exact_match=entry["exact_match"], recall=entry["recall"])
    return out


def _question_scores(score: dict[str, Any]) -> dict[str, Any]:
    """A question's ``correct`` (closed), or ``exact_match`` (a boolean) and ``recall`` (open)."""
    if score["kind"] == "closed":
        return {"correct": score["correct"]}
    return {"exact_match": bool(score["exact_match"]), "recall": score["recall"]}


def _predictions(
    questions: list[Question], img_scores: list[dict[str, Any]], txt_scores: list[dict[str, Any]]
) -> list[dict[str, Any]]:
    rows = []
    for q, img, txt in zip(questions, img_scores, txt_scores):
        rows.append(
            {
                "id": q.sample.id,
                "question_type": q.row.question_type,
                "answer_type": q.row.kind,
                "question": q.sample.turns[0].text,
                "answer": q.row.reference,
                "choices": list(q.row.choices) if q.row.choices else None,
                "prediction": img["prediction"],
                "text_only_prediction": txt["prediction"],
                **_question_scores(img),
                **{f"text_only_{k}": v for k, v in _question_scores(txt).items()},
            }
        )
    return rows


def _write(out: Path, results: dict[str, Any], predictions: list[dict[str, Any]]) -> Path:
    """Write ``demo_predictions.json`` and ``demo_results.json`` (with the former's path) into ``out``."""
    out.mkdir(parents=True, exist_ok=True)
    (out / PREDICTIONS_NAME).write_text(json.dumps(predictions, indent=1))
    results["predictions"] = str(out / PREDICTIONS_NAME)
    path = out / RESULTS_NAME
    path.write_text(json.dumps(results, indent=2))
    return path


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
