"""medmvl's own definitions (docs/metrics.md): the default protocol, which adds nothing to the report."""

from __future__ import annotations

from typing import Any

from medmvl.evaluation.predictions import PredictionRow
from medmvl.evaluation.protocols.base import Protocol, Reference
from medmvl.evaluation.report import COLUMNS, score_row


class MedmvlProtocol(Protocol):
    """Strict normalised scoring (``evaluation.report``); ``evaluate.py`` prints only its own table for it."""

    name = "medmvl"
    references = (Reference("medmvl", "docs/metrics.md", "this version"),)
    columns = tuple(c for c in COLUMNS if c[0] != "chance_accuracy")

    def score(self, row: PredictionRow) -> dict[str, Any]:
        """``report.score_row``, with ``correct`` named ``closed_accuracy`` / ``choice_accuracy``."""
        scores = score_row(row)
        if "correct" in scores:
            return {f"{row.kind}_accuracy": float(scores.pop("correct"))}
        return scores
