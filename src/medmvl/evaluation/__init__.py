"""Metrics with documented definitions (docs/metrics.md): ``closed`` (normalisation, closed questions,
open recall / exact match), ``choice`` (multiple-choice letters), ``text`` (token F1, BLEU, ROUGE-L); one
scoring stack for evaluate.py and the demo report: ``predictions`` (prediction files, and held-out
questions of an annotation file, as scoring rows) and ``report`` (per-question scores, aggregates with the
closed chance level, the markdown table; imported on use, as torchmetrics is slow to import)."""

from medmvl.evaluation.metrics.closed import closed_correct, normalise, open_exact_match, open_recall
from medmvl.evaluation.predictions import (
    PredictionRow,
    Question,
    answer_kind,
    load_predictions,
    load_questions,
    question_rows,
)

__all__ = [
    "PredictionRow",
    "Question",
    "answer_kind",
    "closed_correct",
    "load_predictions",
    "load_questions",
    "normalise",
    "open_exact_match",
    "open_recall",
    "question_rows",
]
