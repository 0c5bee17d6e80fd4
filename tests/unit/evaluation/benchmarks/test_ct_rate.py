"""CT-RATE: .nii.gz volumes in the release's folders, the reports CSV and the abnormality labels."""

from __future__ import annotations

import pytest

from medmvl.evaluation.benchmarks import ConversionError, convert

from .helpers import gpt, human, split_records
from .releases import write_ct_rate

nib = pytest.importorskip("nibabel")


@pytest.fixture
def release(tmp_path):
    return write_ct_rate(tmp_path)


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
