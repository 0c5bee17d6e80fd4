"""Score prediction rows and aggregate them overall, per kind, per question type and per dataset.

Per question (``score_row``): a ``closed`` question gets ``correct`` (``closed.closed_correct`` with its
choices), a ``choice`` question ``correct`` (``choice.choice_correct``), an ``open`` question ``recall``,
``exact_match``, ``token_f1``, ``bleu1``..``bleu4`` and ``rouge_l``. A group's value of a metric is the
mean over the group's questions that have it (``None`` when none do): accuracies over closed / choice
questions, text metrics over open questions, as LLaVA-Med reports them. A group's ``chance_accuracy`` is
the accuracy of guessing uniformly among the options of its closed questions (``chance_level``).
Definitions: docs/metrics.md.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Sequence
from typing import Any

from medmvl.evaluation.metrics.choice import choice_correct
from medmvl.evaluation.metrics.closed import (
    YES_NO,
    closed_correct,
    mean,
    normalise,
    open_exact_match,
    open_recall,
)
from medmvl.evaluation.metrics.text import bleu, rouge_l, token_f1
from medmvl.evaluation.predictions import KINDS, PredictionRow

OPEN_METRICS = ("recall", "exact_match", "token_f1", "bleu1", "bleu2", "bleu3", "bleu4", "rouge_l")
COLUMNS = (  # (metric key in a group entry, markdown header)
    ("closed_accuracy", "closed acc"),
    ("choice_accuracy", "choice acc"),
    ("recall", "open recall"),
    ("exact_match", "exact match"),
    ("token_f1", "token F1"),
    ("bleu1", "BLEU-1"),
    ("bleu2", "BLEU-2"),
    ("bleu3", "BLEU-3"),
    ("bleu4", "BLEU-4"),
    ("rouge_l", "ROUGE-L"),
    ("chance_accuracy", "closed chance"),  # last, so the columns before it keep their places
)
# (report key, PredictionRow attribute, label in the markdown table)
BREAKDOWNS = (
    ("by_kind", "kind", "kind"),
    ("by_question_type", "question_type", "type"),
    ("by_dataset", "dataset", "dataset"),
)


def score_row(row: PredictionRow) -> dict[str, Any]:
    """The metrics of one question (which ones depends on ``row.kind``)."""
    if row.kind == "closed":
        return {"correct": closed_correct(row.prediction, row.reference, row.choices)}
    if row.kind == "choice":
        return {"correct": choice_correct(row.prediction, row.letter or "")}
    scores: dict[str, Any] = {
        "recall": open_recall(row.prediction, row.reference),
        "exact_match": float(open_exact_match(row.prediction, row.reference)),
        "token_f1": token_f1(row.prediction, row.reference),
    }
    for n in range(1, 5):
        scores[f"bleu{n}"] = bleu(row.prediction, row.reference, n)
    scores["rouge_l"] = rouge_l(row.prediction, row.reference)
    return scores


def chance_level(row: PredictionRow) -> float | None:
    """Accuracy of a uniform guess at a closed question: 1 / its number of choices, 1/2 for a yes/no
    reference without choices; ``None`` for other questions (no known options, or not ``closed``)."""
    if row.kind != "closed":
        return None
    if row.choices:
        return 1.0 / len(row.choices)
    return 1.0 / len(YES_NO) if normalise(row.reference) in YES_NO else None


def aggregate(rows: Sequence[PredictionRow], scores: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """One group's entry: counts per kind, accuracies, the closed questions' chance accuracy (mean
    ``chance_level`` over those that have one) and the mean open-question metrics."""
    by_kind: dict[str, list[dict[str, Any]]] = defaultdict(list)
    for row, score in zip(rows, scores):
        by_kind[row.kind].append(score)
    entry: dict[str, Any] = {"n": len(rows)}
    for kind in KINDS:
        entry[f"n_{kind}"] = len(by_kind[kind])
    for kind in ("closed", "choice"):
        entry[f"{kind}_accuracy"] = mean([float(s["correct"]) for s in by_kind[kind]])
    levels = [chance_level(row) for row in rows]
    entry["chance_accuracy"] = mean([level for level in levels if level is not None])
    for key in OPEN_METRICS:
        entry[key] = mean([s[key] for s in by_kind["open"]])
    return entry


def build_report(rows: Sequence[PredictionRow]) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """Score every row; returns ``(report, per-question scores)``.

    The report has ``overall`` and, per breakdown (``by_kind``, ``by_question_type``, ``by_dataset``), one
    entry per group in sorted order (kinds in the order closed, choice, open).
    """
    scores = [score_row(row) for row in rows]
    report: dict[str, Any] = {"overall": aggregate(rows, scores)}
    for name, attr, _ in BREAKDOWNS:
        groups: dict[str, list[int]] = defaultdict(list)
        for i, row in enumerate(rows):
            groups[getattr(row, attr)].append(i)
        order = [k for k in KINDS if k in groups] if attr == "kind" else sorted(groups)
        report[name] = {
            g: aggregate([rows[i] for i in groups[g]], [scores[i] for i in groups[g]]) for g in order
        }
    per_question = [
        {
            "id": row.id,
            "dataset": row.dataset,
            "question_type": row.question_type,
            "kind": row.kind,
            "prediction": row.prediction,
            "reference": row.reference,
            **score,
        }
        for row, score in zip(rows, scores)
    ]
    return report, per_question


def _pct(value: float | None) -> str:
    return "-" if value is None else f"{100 * value:.1f}"


def markdown_table(report: dict[str, Any]) -> str:
    """A markdown table: one row per group (overall first), metrics in percent, ``-`` where undefined."""
    header = ["group", "n", *(title for _, title in COLUMNS)]
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join(["---"] + ["---:"] * (len(header) - 1)) + "|"]
    entries = [("overall", report["overall"])]
    for name, _, label in BREAKDOWNS:
        entries += [(f"{label}: {group}", entry) for group, entry in report.get(name, {}).items()]
    for label, entry in entries:
        cells = [label.replace("|", "\\|"), str(entry["n"]), *(_pct(entry[key]) for key, _ in COLUMNS)]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"
