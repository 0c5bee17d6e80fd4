"""Metrics with documented definitions (``closed``), held-out VQA scoring (``vqa``) and the demo report."""

from medmvl.evaluation.closed import closed_correct, normalise, open_exact_match, open_recall
from medmvl.evaluation.vqa import VQAItem, load_vqa, score

__all__ = ["VQAItem", "closed_correct", "load_vqa", "normalise", "open_exact_match", "open_recall", "score"]
