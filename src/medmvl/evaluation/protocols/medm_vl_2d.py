"""Uni-Med's VQA scoring, which MedM-VL's 2D tables follow: NLTK sentence BLEU on VQA-normalised words.

Reference: MSIIP/Uni-Med ``eval_vqa.py`` (``calculate_bleu``, ``calculate_acc``, ``calculate_f1``) and
``evaluate_metrics.py`` at 5c902a5fecbd1688cdabeb84e11fcf57eaddfa38. Per question, both texts pass
``vqa_words.normalize_word`` (no lowercasing first; the function lowercases its words):

- ``bleu1``: ``nltk.translate.bleu_score.sentence_bleu([gt.split()], pred.split(), weights=(1, 0, 0, 0))``
  with NLTK's default (no) smoothing: brevity penalty x clipped unigram precision, 0 without a shared
  word; ``bleu2``..``bleu4`` with uniform weights ``1/n`` (so 0 unless an ``n``-gram is shared, and
  effectively 0 for a prediction shorter than ``n`` words);
- ``f1``: ``calculate_f1score`` (``vqa_words.vqa_f1``, its F1);
- ``closed_accuracy`` (answer_type CLOSED; medmvl's closed and choice questions): the normalised
  reference is a substring of the normalised prediction.

Every question gets BLEU and F1 (Uni-Med reports them for the open subset, the closed subset and all);
the ``kind`` breakdown gives the open and closed values.
"""

from __future__ import annotations

from typing import Any

from medmvl.evaluation.predictions import PredictionRow
from medmvl.evaluation.protocols.base import Protocol, Reference
from medmvl.evaluation.protocols.libs import missing_module, sentence_bleu
from medmvl.evaluation.protocols.vqa_words import normalize_word, vqa_f1

COMMIT = "5c902a5fecbd1688cdabeb84e11fcf57eaddfa38"
WEIGHTS = {1: (1.0, 0.0, 0.0, 0.0), 2: (0.5, 0.5), 3: (1 / 3, 1 / 3, 1 / 3), 4: (0.25, 0.25, 0.25, 0.25)}


class MedmVl2dProtocol(Protocol):
    """Uni-Med / MedM-VL 2D: NLTK BLEU-1..4, F1, closed substring accuracy (module docstring)."""

    name = "medm_vl_2d"
    references = (
        Reference("MSIIP/Uni-Med", "eval_vqa.py", COMMIT),
        Reference("MSIIP/Uni-Med", "evaluate_metrics.py", COMMIT),
    )
    columns = (
        ("closed_accuracy", "closed acc"),
        ("bleu1", "BLEU-1"),
        ("bleu2", "BLEU-2"),
        ("bleu3", "BLEU-3"),
        ("bleu4", "BLEU-4"),
        ("f1", "F1"),
    )

    def unavailable(self) -> dict[str, str]:
        """BLEU needs NLTK."""
        why = missing_module("nltk")
        return {f"bleu{n}": why for n in WEIGHTS} if why else {}

    def score(self, row: PredictionRow) -> dict[str, Any]:
        """BLEU-1..4 and F1 for every question, ``closed_accuracy`` for closed and choice ones."""
        gt, pred = normalize_word(row.reference), normalize_word(row.prediction)
        scores: dict[str, Any] = {}
        if row.kind != "open":
            scores["closed_accuracy"] = float(gt in pred)
        no_nltk = bool(self.unavailable())
        for n, weights in WEIGHTS.items():
            scores[f"bleu{n}"] = None if no_nltk else sentence_bleu(gt.split(), pred.split(), weights)
        scores["f1"] = vqa_f1(row.prediction, row.reference)[0]
        return scores
