"""Rows for the protocol worked examples (docs/protocols.md)."""

from __future__ import annotations

from medmvl.evaluation.predictions import PredictionRow


def row(prediction: str, reference: str, kind: str = "open", **extra) -> PredictionRow:
    """A scoring row of ``kind`` (question type and dataset fixed)."""
    return PredictionRow("q", prediction, reference, kind, "(none)", "d", **extra)
