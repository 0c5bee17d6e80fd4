"""M3D-VQA (closed + open per row) and M3D-Cap (volume + report text) in M3D's data-root layout."""

from __future__ import annotations

import pytest

from medmvl.evaluation.benchmarks import ConversionError, convert

from .helpers import gpt, human, split_records
from .releases import M3D_VOLUME as VOLUME
from .releases import write_m3d_cap, write_m3d_vqa


@pytest.fixture
def data_root(tmp_path):
    write_m3d_vqa(tmp_path)
    return write_m3d_cap(tmp_path)


def test_vqa_closed_and_open(data_root, tmp_path):
    report = convert("m3d_vqa", data_root, tmp_path / "out", skip_bad=True)
    closed, open_ = split_records(report, "test")
    assert (closed["id"], open_["id"]) == ("m3d_vqa-test-0-closed", "m3d_vqa-test-0-open")
    assert closed["image3d"] == open_["image3d"] == [VOLUME]
    assert "image" not in closed
    assert human(closed).startswith("<image3d>\nIn which plane is the image?\nA. Sagittal")
    assert (gpt(closed), closed["answer_choice"], closed["answer_type"]) == ("C. Axial", "C", "choice")
    assert closed["choices"] == ["Sagittal", "Coronal", "Axial", "Oblique"]
    assert (human(open_), gpt(open_), open_["answer_type"]) == (
        "<image3d>\nIn which plane is the image?",
        "Axial",
        "open",
    )
    assert closed["question_type"] == "Plane"
    assert report["image3d_dir"] == str(tmp_path / "out/volumes")
    assert (tmp_path / "out/volumes" / VOLUME).is_file()
    assert report["counts"]["test"] == {"total": 2, "answer_type": {"choice": 1, "open": 1}}
    assert [(s["row"], s["field"]) for s in report["skipped"]] == [(1, "Image Path")]


def test_vqa_one_task(data_root, tmp_path):
    report = convert("m3d_vqa", data_root, tmp_path / "out", skip_bad=True, task="open")
    assert [r["id"] for r in split_records(report, "test")] == ["m3d_vqa-test-0-open"]


def test_cap(data_root, tmp_path):
    with pytest.raises(ConversionError, match=r"M3D_Cap.json \[test\]: row 0, field 'text': file"):
        convert("m3d_cap", data_root, tmp_path / "out")
    report = convert("m3d_cap", data_root, tmp_path / "out", skip_bad=True, link=True)
    (rec,) = split_records(report, "train")
    assert rec["id"] == "m3d_cap-train-0"
    assert human(rec) == "<image3d>\nCan you provide a caption consists of findings for this medical image?"
    assert gpt(rec) == "Large liver cyst."
    assert (rec["answer_type"], rec["question_type"]) == ("open", "caption")
    assert (tmp_path / "out/volumes" / VOLUME).is_symlink()
    assert sorted(report["files"]) == ["train"]
