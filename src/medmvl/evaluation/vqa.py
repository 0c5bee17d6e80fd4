"""Read a held-out VQA annotation file with its references and score predictions per question type.

A record's reference answer is its ``answer`` field, else the text of its final ``gpt`` turn (which the
generator drops from the prompt). ``question_type`` (default ``"all"``), ``answer_type``
(``closed``/``open``; default: closed when the record has ``choices`` or a yes/no answer) and ``choices``
are optional extra keys, as written by ``medmvl.demo.build_2d``. Metric definitions: ``closed.py``.
"""

from __future__ import annotations

import json
import os
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from medmvl.data.schema import AnnotationError, Sample, raise_on_errors, validate_records
from medmvl.evaluation.metrics.closed import (
    YES_NO,
    closed_correct,
    is_closed,
    mean,
    normalise,
    open_exact_match,
    open_recall,
)


@dataclass(frozen=True)
class VQAItem:
    """A held-out question with its reference.

    Attributes:
        sample: The validated sample (its final ``gpt`` turn, if any, is the reference, not the prompt).
        answer: Reference answer.
        question_type: Group for per-type metrics.
        closed: Whether the question is scored as closed.
        choices: Offered choices of a closed question (``None``: free or yes/no).
        record: The raw JSON record, copied into prediction files.
    """

    sample: Sample
    answer: str
    question_type: str
    closed: bool
    choices: tuple[str, ...] | None
    record: dict[str, Any]


def load_vqa(path: str | os.PathLike) -> list[VQAItem]:
    """Read an annotation file (with or without final ``gpt`` turns) as scoring items.

    Raises:
        AnnotationError: Invalid samples, or a sample with neither ``answer`` nor a final ``gpt`` turn.
    """
    path = Path(path)
    if not path.is_file():
        raise AnnotationError(f"annotation file {str(path)!r} does not exist")
    records = json.loads(path.read_text(encoding="utf-8"))
    samples, problems = validate_records(records, source=str(path), require_answer=False)
    raise_on_errors(problems)
    items = []
    for sample in samples:
        record = records[sample.index]
        answer = sample.answer
        if answer is None and sample.turns[-1].role == "gpt":
            answer = sample.turns[-1].text
        if answer is None:
            raise AnnotationError(
                f"{sample.where()}: no reference answer (no 'answer' and no final gpt turn)"
            )
        choices = record.get("choices")
        closed = is_closed(answer, choices, record.get("answer_type"))
        qtype = str(record.get("question_type", "all"))
        items.append(VQAItem(sample, answer, qtype, closed, tuple(choices) if choices else None, record))
    return items


def score_item(item: VQAItem, prediction: str) -> dict[str, Any]:
    """Per-question scores: ``correct`` (closed) or ``exact_match`` and ``recall`` (open)."""
    if item.closed:
        return {"correct": closed_correct(prediction, item.answer, item.choices)}
    return {
        "exact_match": open_exact_match(prediction, item.answer),
        "recall": open_recall(prediction, item.answer),
    }


def score(items: Sequence[VQAItem], predictions: Sequence[str]) -> dict[str, Any]:
    """Aggregate scores of ``predictions`` (one per item, same order).

    Returns:
        ``closed_accuracy``, ``open_exact_match``, ``open_recall`` (``None`` when there are no such
        questions), ``n_closed``, ``n_open``, ``chance_accuracy`` (mean of 1 / number of choices over
        closed questions with choices or yes/no answers), and ``per_question_type``: for each type its
        ``answer_type`` (``closed``/``open``/``mixed``), ``n``, and ``accuracy`` (closed questions) and/or
        ``exact_match`` and ``recall`` (open questions).
    """
    if len(items) != len(predictions):
        raise ValueError(f"{len(predictions)} predictions for {len(items)} questions")
    closed: dict[str, list[float]] = defaultdict(list)
    exact: dict[str, list[float]] = defaultdict(list)
    recall: dict[str, list[float]] = defaultdict(list)
    chance: list[float] = []
    for item, pred in zip(items, predictions):
        scores = score_item(item, pred)
        if item.closed:
            closed[item.question_type].append(float(scores["correct"]))
            n_choices = len(item.choices) if item.choices else 2 if normalise(item.answer) in YES_NO else 0
            if n_choices:
                chance.append(1.0 / n_choices)
        else:
            exact[item.question_type].append(float(scores["exact_match"]))
            recall[item.question_type].append(scores["recall"])
    per_type: dict[str, dict[str, Any]] = {}
    for qtype in sorted(set(closed) | set(exact)):
        kinds = [k for k, group in (("closed", closed), ("open", exact)) if qtype in group]
        entry: dict[str, Any] = {
            "answer_type": kinds[0] if len(kinds) == 1 else "mixed",
            "n": len(closed.get(qtype, [])) + len(exact.get(qtype, [])),
        }
        if qtype in closed:
            entry["accuracy"] = mean(closed[qtype])
        if qtype in exact:
            entry.update(exact_match=mean(exact[qtype]), recall=mean(recall[qtype]))
        per_type[qtype] = entry
    all_closed = [v for vs in closed.values() for v in vs]
    return {
        "closed_accuracy": mean(all_closed),
        "open_exact_match": mean([v for vs in exact.values() for v in vs]),
        "open_recall": mean([v for vs in recall.values() for v in vs]),
        "n_closed": len(all_closed),
        "n_open": sum(len(vs) for vs in exact.values()),
        "chance_accuracy": mean(chance),
        "per_question_type": per_type,
    }
