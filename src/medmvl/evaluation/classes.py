"""Closed questions by answer class: per-class accuracy and the confusion of references and predictions.

A closed score of 80 % can hide a model that always says "yes": the per-class view shows it. Each closed
question's class is its normalised reference; the predicted class is the one offered choice (or yes/no)
the prediction names (:func:`~medmvl.evaluation.metrics.closed.named_choices`), ``(none)`` when it names
none and ``(several)`` when it names more than one. ``single_word_open`` counts open questions whose
reference is one word: often closed questions written without ``choices`` or ``answer_type``, which are
then scored by recall (0 or 1) instead of accuracy.
"""

from __future__ import annotations

from collections import Counter, defaultdict
from collections.abc import Sequence
from typing import Any

from medmvl.evaluation.metrics.closed import YES_NO, closed_correct, named_choices, normalise
from medmvl.evaluation.predictions import PredictionRow


def predicted_class(row: PredictionRow) -> str:
    """The class a closed prediction names (normalised), ``(none)`` or ``(several)``."""
    choices = row.choices or (YES_NO if normalise(row.reference) in YES_NO else None)
    if not choices:
        return normalise(row.prediction) or "(none)"
    named = named_choices(row.prediction, choices)
    if len(named) > 1:
        return "(several)"
    return normalise(named[0]) if named else "(none)"


def closed_by_answer(rows: Sequence[PredictionRow]) -> dict[str, dict[str, Any]]:
    """Per reference class of the closed questions: ``n``, ``accuracy`` and ``predicted`` (class -> count),
    classes in sorted order."""
    groups: dict[str, list[PredictionRow]] = defaultdict(list)
    for row in rows:
        if row.kind == "closed":
            groups[normalise(row.reference)].append(row)
    return {
        cls: {
            "n": len(members),
            "accuracy": sum(closed_correct(r.prediction, r.reference, r.choices) for r in members)
            / len(members),
            "predicted": dict(sorted(Counter(predicted_class(r) for r in members).items())),
        }
        for cls, members in sorted(groups.items())
    }


def single_word_open(rows: Sequence[PredictionRow]) -> int:
    """How many open questions have a one-word reference."""
    return sum(1 for r in rows if r.kind == "open" and len(normalise(r.reference).split()) == 1)


def classes_table(by_answer: dict[str, dict[str, Any]]) -> str:
    """A markdown table: one row per reference class, its accuracy and what the model answered."""
    if not by_answer:
        return ""
    lines = ["| reference | n | accuracy | predicted |", "|---|---:|---:|---|"]
    for cls, entry in by_answer.items():
        predicted = ", ".join(f"{k}: {v}" for k, v in entry["predicted"].items())
        lines.append(f"| {cls} | {entry['n']} | {100 * entry['accuracy']:.1f} | {predicted} |")
    return "\n".join(lines) + "\n"
