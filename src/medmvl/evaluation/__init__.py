"""Metrics with documented definitions (docs/metrics.md): ``closed`` (normalisation, closed questions,
open recall / exact match), ``choice`` (multiple-choice letters), ``text`` (token F1, BLEU, ROUGE-L);
prediction files and score tables (``predictions``, ``report``; imported on use, as torchmetrics is slow
to import); held-out VQA scoring (``vqa``) and the demo report."""

from medmvl.evaluation.metrics.closed import closed_correct, normalise, open_exact_match, open_recall
from medmvl.evaluation.vqa import VQAItem, load_vqa, score

__all__ = ["VQAItem", "closed_correct", "load_vqa", "normalise", "open_exact_match", "open_recall", "score"]
