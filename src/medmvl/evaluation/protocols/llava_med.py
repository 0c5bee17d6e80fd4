"""LLaVA-Med's batch evaluation of VQA-RAD, SLAKE and PathVQA (the numbers of the LLaVA-Med paper).

Reference: microsoft/LLaVA-Med ``llava/eval/run_eval_batch.py`` (``evaluate``) with
``llava/eval/eval_metrics/{evaluate_metrics,glossary}.py`` at b9a98a736d2ef05bcf5ff345be6403fb3a664eaf
(the last commit carrying them; LLaVA-Med v1.5 removed them). Per question, with
``gt = normalize_word(reference.lower())`` and ``pred = normalize_word(prediction.lower())``
(``vqa_words.normalize_word``):

- closed (answer_type CLOSED; medmvl's closed and choice questions): correct when ``gt`` is a
  *substring* of ``pred`` — "no" is found inside "nodule" and "not", "yes" inside "eyes";
- open: ``recall`` of ``calculate_f1score(pred, gt)`` (``vqa_words.vqa_f1``: normalises once more, and
  counts the prediction's repeats of a shared word as hits), the paper's "Open" column; ``open_hit`` the
  same substring test as closed questions ("open accuracy" in the script's table).

Groups average per question; the script prints 0 for a set without closed questions, medmvl ``-``.
"""

from __future__ import annotations

from typing import Any

from medmvl.evaluation.predictions import PredictionRow
from medmvl.evaluation.protocols.base import Protocol, Reference
from medmvl.evaluation.protocols.vqa_words import normalize_word, vqa_f1

COMMIT = "b9a98a736d2ef05bcf5ff345be6403fb3a664eaf"


class LlavaMedProtocol(Protocol):
    """LLaVA-Med: closed accuracy by substring, open recall (module docstring)."""

    name = "llava_med"
    references = (
        Reference("microsoft/LLaVA-Med", "llava/eval/run_eval_batch.py", COMMIT),
        Reference("microsoft/LLaVA-Med", "llava/eval/eval_metrics/evaluate_metrics.py", COMMIT),
        Reference("microsoft/LLaVA-Med", "llava/eval/eval_metrics/glossary.py", COMMIT),
    )
    columns = (("closed_accuracy", "closed acc"), ("open_recall", "open recall"), ("open_hit", "open hit"))

    def score(self, row: PredictionRow) -> dict[str, Any]:
        """``closed_accuracy`` for closed / choice questions, ``open_recall`` and ``open_hit`` for open."""
        gt = normalize_word(row.reference.lower())
        pred = normalize_word(row.prediction.lower())
        if row.kind != "open":
            return {"closed_accuracy": float(gt in pred)}
        return {"open_recall": vqa_f1(pred, gt)[2], "open_hit": float(gt in pred)}
