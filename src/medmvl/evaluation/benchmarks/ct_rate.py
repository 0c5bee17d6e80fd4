"""CT-RATE (Hamamci et al., 2024): chest CT report generation from ``.nii.gz`` volumes, train/valid.

Expected download (the ``dataset/`` folder of https://huggingface.co/datasets/ibrahimhamamci/CT-RATE)::

    <src>/train/train_1/train_1_a/train_1_a_1.nii.gz ...
    <src>/valid/valid_1/valid_1_a/valid_1_a_1.nii.gz ...
    <src>/radiology_text_reports/train_reports.csv  validation_reports.csv
    <src>/multi_abnormality_labels/train_predicted_labels.csv  valid_predicted_labels.csv

Columns read (as CT-CLIP reads them, https://github.com/ibrahimethemhamamci/CT-CLIP
``scripts/data_inference_nii.py``): reports ``VolumeName``, ``Findings_EN``, ``Impressions_EN``; labels
``VolumeName`` and one 0/1 column per abnormality (18: ``Medical material`` ..
``Interlobular septal thickening``), kept per sample as ``labels`` (``{abnormality: 0|1}``). The volume
of ``VolumeName`` ``train_1_a_1.nii.gz`` is ``train/train_1/train_1_a/train_1_a_1.nii.gz``. ``report``
picks the reference: ``findings`` (default), ``impressions`` or ``both`` (``"Findings: ...\\nImpression:
..."``); a report text ``Not given.`` counts as missing, as in CT-CLIP. Splits ``train`` / ``valid``
follow the release's folders; ids are ``ct_rate-<VolumeName without .nii.gz>``.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

from medmvl.evaluation.benchmarks.common import Context, ConversionError, read_csv, record, text

NAME = "ct_rate"
VERSION = 1
SOURCE = "CT-RATE https://huggingface.co/datasets/ibrahimhamamci/CT-RATE; columns per ibrahimethemhamamci/CT-CLIP scripts/data_inference_nii.py"
OPTIONS: dict[str, tuple[str, ...]] = {"report": ("findings", "impressions", "both")}
SPLITS = (
    ("train", "train_reports.csv", "train_predicted_labels.csv"),
    ("valid", "validation_reports.csv", "valid_predicted_labels.csv"),
)
PROMPTS = {
    "findings": "Write the findings section of the radiology report for this chest CT.",
    "impressions": "Write the impression section of the radiology report for this chest CT.",
    "both": "Write the findings and impression of the radiology report for this chest CT.",
}
_VOLUME = re.compile(r"^(train|valid)_(\d+)_([a-z]+)_(\d+)\.nii\.gz$")


def volume_path(src: Path, name: str) -> Path | None:
    """Where the release stores volume ``name`` (``None`` for a name outside its naming scheme)."""
    match = _VOLUME.match(name)
    if not match:
        return None
    split, patient, scan, _ = match.groups()
    return src / split / f"{split}_{patient}" / f"{split}_{patient}_{scan}" / name


def _labels(path: Path, ctx: Context) -> dict[str, dict[str, int]] | None:
    if not path.is_file():
        ctx.notes.setdefault("labels_missing", []).append(str(path))
        return None
    labels = {}
    for row, line, cells in read_csv(path, ("VolumeName",)):
        values = {}
        for column, cell in cells.items():
            if column == "VolumeName":
                continue
            if (cell or "").strip() not in ("0", "1", "0.0", "1.0"):
                ctx.problem(path, row, column, f"expected 0 or 1, got {cell!r}", line)
                continue
            values[column] = int(float(cell))
        labels[cells["VolumeName"]] = values
    return labels


def _reference(cells: dict[str, str], report: str) -> tuple[str | None, list[str]]:
    parts = {k: text(cells.get(k)) for k in ("Findings_EN", "Impressions_EN")}
    parts = {k: (None if v == "Not given." else v) for k, v in parts.items()}
    if report == "findings":
        return parts["Findings_EN"], ["Findings_EN"]
    if report == "impressions":
        return parts["Impressions_EN"], ["Impressions_EN"]
    if parts["Findings_EN"] is None or parts["Impressions_EN"] is None:
        return None, [k for k, v in parts.items() if v is None]
    return f"Findings: {parts['Findings_EN']}\nImpression: {parts['Impressions_EN']}", []


def read(src: Path, ctx: Context, report: str = "findings") -> dict[str, list[dict[str, Any]]]:
    """The report-generation records of the train and valid splits present in ``src``."""
    present = [s for s in SPLITS if (src / "radiology_text_reports" / s[1]).is_file()]
    if not present:
        raise ConversionError(
            f"ct_rate: no radiology_text_reports/train_reports.csv or validation_reports.csv in {src}"
        )
    splits: dict[str, list[dict[str, Any]]] = {}
    for split, reports_name, labels_name in present:
        reports = src / "radiology_text_reports" / reports_name
        labels = _labels(src / "multi_abnormality_labels" / labels_name, ctx)
        records = splits.setdefault(split, [])
        for row, line, cells in read_csv(reports, ("VolumeName", "Findings_EN", "Impressions_EN")):
            rec = _record(src, reports, row, line, cells, split, report, labels, ctx)
            if rec is not None:
                records.append(rec)
    return splits


def _record(
    src: Path,
    path: Path,
    row: int,
    line: int,
    cells: dict[str, str],
    split: str,
    report: str,
    labels: dict[str, dict[str, int]] | None,
    ctx: Context,
) -> dict[str, Any] | None:
    name = text(cells.get("VolumeName"))
    answer, missing = _reference(cells, report)
    for column in missing if answer is None else []:
        ctx.problem(path, row, column, "missing, empty or 'Not given.'", line)
    volume = volume_path(src, name) if name else None
    if name is None:
        ctx.problem(path, row, "VolumeName", "missing or empty", line)
    elif volume is None:
        ctx.problem(path, row, "VolumeName", f"{name!r} is not <split>_<n>_<letter>_<n>.nii.gz", line)
    elif not volume.is_file():
        ctx.problem(path, row, "VolumeName", f"volume {volume} not found", line)
        volume = None
    if labels is not None and name is not None and name not in labels:
        ctx.problem(path, row, "VolumeName", f"{name!r} has no row in the labels CSV", line)
        return None
    if answer is None or volume is None:
        return None
    return record(
        f"ct_rate-{name.removesuffix('.nii.gz')}",
        "image3d",
        ctx.place(volume, volume.relative_to(src).as_posix(), "image3d"),
        PROMPTS[report],
        answer,
        split=split,
        dataset=NAME,
        answer_type="open",
        question_type=f"report_{report}",
        labels=None if labels is None else labels[name],
    )
