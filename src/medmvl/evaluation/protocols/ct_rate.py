"""CT report generation as CT-RATE's baselines score it: corpus NLG metrics, abnormality labels, CRG.

References: ibrahimethemhamamci/CT2Rep ``CT2Rep/modules/metrics.py`` (``compute_scores``: pycocoevalcap
``Bleu(4)``, with ``Meteor`` and ``Rouge`` run the same way separately) and
``CT2Rep/modules/tokenizers.py`` (``clean_report_mimic_cxr``) at 9e8508245fa7b7f28c991fb660afbeffe51efc33;
the CRG score of arXiv 2505.17167 (``labels.crg_score``).

- Text: every report (prediction and reference) is cleaned as CT2Rep's tokenizer does: newlines to
  spaces, runs of ``_``, spaces and periods shortened, the list marks "1. " .. "5. " removed, lowercase,
  split into sentences at ". ", from each sentence ``"/\\'`` and every character of the class
  ``[.,?;*!%^&_+():-\\[\\]{}]`` removed — where ``:-\\[`` is a *range* (``:`` to ``[``, so also
  ``< = > @``) — and the sentences joined with " . " plus a final " .". (CT2Rep also maps words outside
  its training vocabulary to ``<unk>`` and truncates; that is not reproduced.)
- BLEU-1..4: pycocoevalcap ``Bleu(4)`` over the group as one corpus (not a mean of sentence scores),
  METEOR: pycocoevalcap ``Meteor`` (Java), ROUGE-L: pycocoevalcap ``Rouge`` (mean of per-report
  LCS F-scores, beta 1.2).
- Labels: precision / recall / F1 and CRG from ``predicted_labels`` and ``reference_labels`` CSVs
  (``labels``), or from a ``labeller`` (``_target_`` of a callable mapping a list of reports to a list of
  ``{abnormality: 0/1}``, such as CT-RATE's RadBERT classifier where its weights are at hand). Without
  either, the label metrics say "labeller not available".
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from typing import Any

from medmvl.evaluation.predictions import PredictionRow
from medmvl.evaluation.protocols.base import Protocol, Reference
from medmvl.evaluation.protocols.labels import label_metrics, read_labels
from medmvl.evaluation.protocols.libs import coco_meteor_missing, missing_module

COMMIT = "9e8508245fa7b7f28c991fb660afbeffe51efc33"
LABEL_KEYS = ("label_precision", "label_recall", "label_f1", "crg")
NO_LABELLER = (
    "labeller not available: give protocol.predicted_labels and protocol.reference_labels (CSV files) "
    "or protocol.labeller (a _target_)"
)
_SENTENCE_CHARS = re.compile(r"[.,?;*!%^&_+():-\[\]{}]")


def clean_report(report: str) -> str:
    """CT2Rep's ``clean_report_mimic_cxr`` (module docstring)."""
    text = report.replace("\n", " ")
    for old, new, times in (("__", "_", 7), ("  ", " ", 6), ("..", ".", 8)):
        for _ in range(times):
            text = text.replace(old, new)
    text = text.replace("1. ", "")
    for mark in ("2", "3", "4", "5"):
        text = text.replace(f". {mark}. ", ". ")
    for mark in ("2", "3", "4", "5"):
        text = text.replace(f" {mark}. ", ". ")
    sentences = text.strip().lower().split(". ")

    def clean(sentence: str) -> str:
        for char in ('"', "/", "\\", "'"):
            sentence = sentence.replace(char, "")
        return _SENTENCE_CHARS.sub("", sentence.strip().lower())

    return " . ".join(clean(s) for s in sentences) + " ."


class CtRateProtocol(Protocol):
    """CT-RATE report generation: BLEU-1..4, METEOR, ROUGE-L, label P/R/F1 and CRG (module docstring).

    Args:
        predicted_labels: CSV of the generated reports' abnormality labels.
        reference_labels: CSV of the ground-truth reports' labels.
        id_column: The id column of both CSVs.
        labeller: Config of a report labeller (``_target_``), used when the CSVs are not given.
    """

    name = "ct_rate"
    references = (
        Reference("ibrahimethemhamamci/CT2Rep", "CT2Rep/modules/metrics.py", COMMIT),
        Reference("ibrahimethemhamamci/CT2Rep", "CT2Rep/modules/tokenizers.py", COMMIT),
        Reference("arXiv 2505.17167 (CRG score, Hamamci et al., MIDL 2025)", "section 2, CRG formula", "v1"),
    )
    columns = (
        ("bleu1", "BLEU-1"),
        ("bleu2", "BLEU-2"),
        ("bleu3", "BLEU-3"),
        ("bleu4", "BLEU-4"),
        ("meteor", "METEOR"),
        ("rouge_l", "ROUGE-L"),
        ("label_precision", "precision"),
        ("label_recall", "recall"),
        ("label_f1", "F1"),
        ("crg", "CRG"),
    )

    def __init__(
        self,
        predicted_labels: str | None = None,
        reference_labels: str | None = None,
        id_column: str = "VolumeName",
        labeller: Any = None,
    ) -> None:
        self.predicted_labels = predicted_labels
        self.reference_labels = reference_labels
        self.id_column = id_column
        self.labeller = labeller
        self._labeller_error: str | None = None
        self._meteor: Any = None

    def unavailable(self) -> dict[str, str]:
        """NLG metrics without pycocoevalcap / Java; label metrics without labels."""
        out: dict[str, str] = {}
        if why := missing_module("pycocoevalcap"):
            out.update({k: why for k in ("bleu1", "bleu2", "bleu3", "bleu4", "rouge_l")})
        if why := coco_meteor_missing():
            out["meteor"] = why
        if not (self.predicted_labels and self.reference_labels) and (
            self.labeller is None or self._labeller_error
        ):
            out.update({k: self._labeller_error or NO_LABELLER for k in LABEL_KEYS})
        return out

    def score(self, row: PredictionRow) -> dict[str, Any]:
        """No per-report metrics: every CT-RATE metric is a corpus one."""
        return {}

    def corpus(self, rows: Sequence[PredictionRow], scores: Sequence[dict[str, Any]]) -> dict[str, Any]:
        """Corpus BLEU-1..4, METEOR and ROUGE-L over the group's open questions (reports)."""
        out: dict[str, Any] = {k: None for k in ("bleu1", "bleu2", "bleu3", "bleu4", "meteor", "rouge_l")}
        reports = [r for r in rows if r.kind == "open"]
        missing = self.unavailable()
        if not reports or "bleu1" in missing:
            return out
        from pycocoevalcap.bleu.bleu import Bleu
        from pycocoevalcap.rouge.rouge import Rouge

        gts = {i: [clean_report(r.reference)] for i, r in enumerate(reports)}
        res = {i: [clean_report(r.prediction)] for i, r in enumerate(reports)}
        bleu, _ = Bleu(4).compute_score(gts, res, verbose=0)
        out.update({f"bleu{n + 1}": float(b) for n, b in enumerate(bleu)})
        out["rouge_l"] = float(Rouge().compute_score(gts, res)[0])
        if "meteor" not in missing:
            if self._meteor is None:
                from pycocoevalcap.meteor.meteor import Meteor

                self._meteor = Meteor()
            out["meteor"] = float(self._meteor.compute_score(gts, res)[0])
        return out

    def evaluate(self, rows: Sequence[PredictionRow]) -> tuple[dict[str, Any], list[dict[str, Any]]]:
        """The NLG report, with the label metrics (whole set only) in ``overall``."""
        labels = self._labels(rows)
        report, scores = super().evaluate(rows)
        if labels is not None:
            report["per_abnormality"] = labels.pop("per_abnormality")
            report["overall"].update(labels)
        return report, scores

    def _labels(self, rows: Sequence[PredictionRow]) -> dict[str, Any] | None:
        if self.predicted_labels and self.reference_labels:
            predicted = read_labels(self.predicted_labels, self.id_column)
            truth = read_labels(self.reference_labels, self.id_column)
            return label_metrics(predicted, truth, where=str(self.predicted_labels))
        if self.labeller is None:
            return None
        reports = [r for r in rows if r.kind == "open"]
        try:
            from hydra.utils import instantiate

            # a config, or already built (a protocol nested in an instantiated config gets a callable)
            labeller = self.labeller if callable(self.labeller) else instantiate(self.labeller)
            predicted = dict(zip((r.id for r in reports), labeller([r.prediction for r in reports])))
            truth = dict(zip((r.id for r in reports), labeller([r.reference for r in reports])))
        except Exception as err:  # a labeller whose weights or package are absent
            self._labeller_error = f"labeller not available: {type(err).__name__}: {err}"
            return None
        return label_metrics(predicted, truth, where="labeller output")
