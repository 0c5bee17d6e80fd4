"""CT-RATE: .nii.gz volumes in the release's folders, the reports CSV and the abnormality labels."""

from __future__ import annotations

import numpy as np
import pytest

from medmvl.evaluation.benchmarks import ConversionError, convert

from .helpers import gpt, human, split_records, write_csv

nib = pytest.importorskip("nibabel")
LABELS = ["Medical material", "Arterial wall calcification", "Cardiomegaly"]
REPORT_HEADER = ["VolumeName", "ClinicalInformation_EN", "Technique_EN", "Findings_EN", "Impressions_EN"]


def _nii(path):
    path.parent.mkdir(parents=True, exist_ok=True)
    nib.save(nib.Nifti1Image(np.zeros((4, 4, 2), np.int16), np.eye(4)), path)


@pytest.fixture
def release(tmp_path):
    src = tmp_path / "dataset"
    _nii(src / "train/train_1/train_1_a/train_1_a_1.nii.gz")
    _nii(src / "valid/valid_1/valid_1_a/valid_1_a_2.nii.gz")
    reports = src / "radiology_text_reports"
    write_csv(reports / "train_reports.csv", REPORT_HEADER,
              [["train_1_a_1.nii.gz", "Cough.", "Non-contrast.", "Heart size is increased.", "Cardiomegaly."]])  # fmt: skip
    write_csv(reports / "validation_reports.csv", REPORT_HEADER,
              [["valid_1_a_2.nii.gz", "Not given.", "Non-contrast.", "Not given.", "Normal study."],
               ["valid_2_a_1.nii.gz", "", "", "Lungs clear.", "Normal."]])  # fmt: skip
    labels = src / "multi_abnormality_labels"
    write_csv(
        labels / "train_predicted_labels.csv", ["VolumeName", *LABELS], [["train_1_a_1.nii.gz", 0, 1, 1]]
    )
    write_csv(
        labels / "valid_predicted_labels.csv", ["VolumeName", *LABELS], [["valid_1_a_2.nii.gz", 0, 0, 0]]
    )
    return src


def test_report_records(release, tmp_path):
    report = convert("ct_rate", release, tmp_path / "out", skip_bad=True)
    (rec,) = split_records(report, "train")
    assert rec["id"] == "ct_rate-train_1_a_1"
    assert rec["image3d"] == ["train/train_1/train_1_a/train_1_a_1.nii.gz"]
    assert human(rec) == "<image3d>\nWrite the findings section of the radiology report for this chest CT."
    assert gpt(rec) == "Heart size is increased."
    assert rec["labels"] == {"Medical material": 0, "Arterial wall calcification": 1, "Cardiomegaly": 1}
    assert (rec["answer_type"], rec["split"], rec["dataset"]) == ("open", "train", "ct_rate")
    assert (tmp_path / "out/volumes/train/train_1/train_1_a/train_1_a_1.nii.gz").is_file()
    skipped = [(s["file"].rsplit("/", 1)[1], s["row"], s["line"], s["field"]) for s in report["skipped"]]
    assert skipped == [
        ("validation_reports.csv", 0, 2, "Findings_EN"),
        ("validation_reports.csv", 1, 3, "VolumeName"),
        ("validation_reports.csv", 1, 3, "VolumeName"),
    ]
    messages = [s["message"] for s in report["skipped"]]
    assert messages[0] == "missing, empty or 'Not given.'"
    assert messages[1].startswith("volume ") and messages[1].endswith("valid_2_a_1.nii.gz not found")
    assert messages[2] == "'valid_2_a_1.nii.gz' has no row in the labels CSV"
    assert report["counts"]["valid"]["total"] == 0


def test_impressions_and_errors(release, tmp_path):
    with pytest.raises(
        ConversionError, match=r"validation_reports.csv: row 1 \(line 3\), field 'VolumeName'"
    ):
        convert("ct_rate", release, tmp_path / "out", report="impressions")
    report = convert("ct_rate", release, tmp_path / "out", report="impressions", skip_bad=True)
    assert gpt(split_records(report, "valid")[0]) == "Normal study."
    both = convert("ct_rate", release, tmp_path / "both", report="both", skip_bad=True)
    assert (
        gpt(split_records(both, "train")[0])
        == "Findings: Heart size is increased.\nImpression: Cardiomegaly."
    )
