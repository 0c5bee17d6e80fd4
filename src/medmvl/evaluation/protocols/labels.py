"""Multi-abnormality labels of reports: read from CSV files, and the label metrics computed from them.

A labels CSV has an id column (CT-RATE: ``VolumeName``) and one 0/1 column per abnormality, as CT-RATE's
``multi_abnormality_labels`` files and its text classifier's output. Label metrics compare a predicted
reports' file with a ground-truth file over the ids of the predicted file, each of which the ground
truth must have, and over the abnormality columns both files share:

- per abnormality precision, recall and F1 (0 where undefined), and their macro means;
- the CRG score (Hamamci et al., "CRG Score: A Distribution-Aware Clinical Metric for Radiology Report
  Generation", MIDL 2025 short paper, arXiv 2505.17167): over all ``T`` = reports x abnormalities
  entries, with ``A`` the positive ground-truth entries and TP / FN / FP counted over the entries,
  ``w_TP = w_FN = (T - A) / (2A)``, ``w_FP = 1``, ``s = TP w_TP - FN w_FN - FP w_FP``,
  ``S_max = A w_TP`` and ``CRG = S_max / (2 S_max - s)``; true negatives do not count. A perfect report
  set scores 1; all-negative and all-positive predictions both score 1/3. ``None`` when the ground truth
  has no positive entry (``A = 0``).
"""

from __future__ import annotations

import csv
import os
from pathlib import Path
from typing import Any

from medmvl.data.schema import AnnotationError

Labels = dict[str, dict[str, int]]


def read_labels(path: str | os.PathLike, id_column: str) -> Labels:
    """``{id: {abnormality: 0/1}}`` of a labels CSV; errors name the file, line and column."""
    path = Path(path)
    if not path.is_file():
        raise AnnotationError(f"labels file {str(path)!r} does not exist")
    with path.open(newline="", encoding="utf-8") as f:
        reader = csv.DictReader(f)
        if reader.fieldnames is None or id_column not in reader.fieldnames:
            raise AnnotationError(f"{path}: no id column {id_column!r} (columns: {reader.fieldnames})")
        out: Labels = {}
        for line, record in enumerate(reader, 2):
            labels = {}
            for name, value in record.items():
                if name == id_column:
                    continue
                try:
                    labels[name] = int(float(value))
                except (TypeError, ValueError):
                    raise AnnotationError(
                        f"{path}: line {line}, column {name!r}: not 0/1: {value!r}"
                    ) from None
            out[record[id_column]] = labels
    return out


def crg_score(tp: int, fn: int, fp: int, total: int) -> float | None:
    """The CRG score from entry counts (``total`` = all entries ``T``; module docstring)."""
    positives = tp + fn
    if positives == 0:
        return None
    weight = (total - positives) / (2 * positives)
    s_max = positives * weight
    s = tp * weight - fn * weight - fp
    return s_max / (2 * s_max - s) if s_max else None


def label_metrics(predicted: Labels, truth: Labels, where: str = "predicted labels") -> dict[str, Any]:
    """Macro precision / recall / F1, per-abnormality values and the CRG score (module docstring)."""
    missing = [i for i in predicted if i not in truth]
    if missing:
        raise AnnotationError(
            f"{where}: {len(missing)} id(s) not in the ground-truth labels, e.g. {missing[:3]}"
        )
    if not predicted:
        raise AnnotationError(f"{where}: no labelled reports")
    names = [n for n in next(iter(truth.values())) if all(n in p for p in predicted.values())]
    per: dict[str, dict[str, float]] = {}
    totals = {"tp": 0, "fn": 0, "fp": 0}
    for name in names:
        tp = sum(1 for i, p in predicted.items() if p[name] and truth[i][name])
        fp = sum(1 for i, p in predicted.items() if p[name] and not truth[i][name])
        fn = sum(1 for i, p in predicted.items() if not p[name] and truth[i][name])
        precision = tp / (tp + fp) if tp + fp else 0.0
        recall = tp / (tp + fn) if tp + fn else 0.0
        f1 = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
        per[name] = {"precision": precision, "recall": recall, "f1": f1}
        totals["tp"] += tp
        totals["fp"] += fp
        totals["fn"] += fn
    mean = {
        k: sum(v[k] for v in per.values()) / len(per) if per else None for k in ("precision", "recall", "f1")
    }
    return {
        "label_precision": mean["precision"],
        "label_recall": mean["recall"],
        "label_f1": mean["f1"],
        "crg": crg_score(totals["tp"], totals["fn"], totals["fp"], len(predicted) * len(names)),
        "labels_n": len(predicted),
        "per_abnormality": per,
    }
