"""A scoring protocol: one reference scorer's per-question definitions, aggregated like medmvl's report.

A protocol scores every ``PredictionRow`` (``score``: metric -> value, or ``None`` where the metric does
not apply to that question), and a group's value of a metric is the mean over the group's questions that
have it, as the reference scripts average sentence scores. ``corpus`` adds metrics that the reference
computes over a whole set at once (corpus BLEU, label precision/recall, the CRG score). Metrics a
protocol cannot compute here (a missing library or data file) are named in ``unavailable`` with the
reason, and their cells read ``n/a``: never a silent 0.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from typing import Any

from medmvl.evaluation.predictions import KINDS, PredictionRow

BREAKDOWNS = (("by_kind", "kind"), ("by_question_type", "question_type"), ("by_dataset", "dataset"))


@dataclass(frozen=True)
class Reference:
    """Where a protocol's definition comes from.

    Attributes:
        repo: ``owner/name`` of the reference repository (or a paper, for a published formula).
        file: The file (or section) holding the definition.
        commit: The commit the definition was read at.
    """

    repo: str
    file: str
    commit: str


class Protocol:
    """Base class: subclasses set ``name``, ``references`` and ``columns`` and implement ``score``."""

    name: str = ""
    references: tuple[Reference, ...] = ()
    columns: tuple[tuple[str, str], ...] = ()
    """(metric key, table header) in table order."""

    def score(self, row: PredictionRow) -> dict[str, Any]:
        """The metrics of one question (``None`` where a metric does not apply)."""
        raise NotImplementedError

    def corpus(self, rows: Sequence[PredictionRow], scores: Sequence[dict[str, Any]]) -> dict[str, Any]:
        """Metrics over a whole group at once; none by default."""
        return {}

    def unavailable(self) -> dict[str, str]:
        """Metric -> why it cannot be computed here (empty when everything is available)."""
        return {}

    def describe(self) -> dict[str, Any]:
        """Name, references and unavailable metrics, for ``metrics.json``."""
        return {
            "name": self.name,
            "references": [asdict(r) for r in self.references],
            "unavailable": self.unavailable(),
        }

    def aggregate(self, rows: Sequence[PredictionRow], scores: Sequence[dict[str, Any]]) -> dict[str, Any]:
        """A group's entry: ``n``, counts per kind, the mean of every metric and the corpus metrics."""
        entry: dict[str, Any] = {"n": len(rows)}
        for kind in KINDS:
            entry[f"n_{kind}"] = sum(1 for r in rows if r.kind == kind)
        keys = [k for k, _ in self.columns]
        keys += [k for s in scores for k in s if k not in keys]
        corpus = self.corpus(rows, scores)
        for key in keys:
            if key in corpus:
                continue
            values = [s[key] for s in scores if s.get(key) is not None]
            entry[key] = sum(values) / len(values) if values else None
        entry.update(corpus)
        return entry

    def evaluate(self, rows: Sequence[PredictionRow]) -> tuple[dict[str, Any], list[dict[str, Any]]]:
        """``(report, per-question scores)``; the report has ``overall`` and the three breakdowns."""
        scores = [self.score(row) for row in rows]
        report: dict[str, Any] = {"overall": self.aggregate(rows, scores)}
        for name, attr in BREAKDOWNS:
            groups: dict[str, list[int]] = defaultdict(list)
            for i, row in enumerate(rows):
                groups[getattr(row, attr)].append(i)
            order = [k for k in KINDS if k in groups] if attr == "kind" else sorted(groups)
            report[name] = {
                g: self.aggregate([rows[i] for i in groups[g]], [scores[i] for i in groups[g]]) for g in order
            }
        return report, scores
