"""VQA-RAD: the OSF release layout, train/test from phrase_type, bad rows, caching, scorer fields."""

from __future__ import annotations

import json

import pytest

from medmvl.evaluation.benchmarks import ConversionError, convert
from medmvl.evaluation.predictions import load_questions

from .helpers import gpt, human, split_records, write_json
from .releases import VQA_RAD_IMAGES as IMAGES
from .releases import write_vqa_rad


@pytest.fixture
def release(tmp_path):
    return write_vqa_rad(tmp_path)


def test_records_field_by_field(release, tmp_path):
    report = convert("vqa_rad", release, tmp_path / "out")
    train, test = split_records(report, "train"), split_records(report, "test")
    assert [r["id"] for r in train] == ["vqa_rad-1", "vqa_rad-2"]
    assert [r["id"] for r in test] == ["vqa_rad-3", "vqa_rad-4"]
    first = train[0]
    assert human(first) == "<image>\nIs there a pneumothorax?"
    assert gpt(first) == first["answer"] == "Yes"
    assert first["image"] == ["synpic100.jpg"]
    assert (first["answer_type"], first["question_type"], first["split"], first["dataset"]) == (
        "closed",
        "PRES",
        "train",
        "vqa_rad",
    )
    assert test[0]["answer"] == "2"  # a numeric answer becomes its text
    assert (tmp_path / "out/images/synpic100.jpg").is_file()
    assert not (tmp_path / "out/images/synpic100.jpg").is_symlink()
    assert (release / IMAGES / "synpic100.jpg").is_file()  # copied, not moved
    assert report["counts"] == {
        "train": {"total": 2, "answer_type": {"closed": 1, "open": 1}},
        "test": {"total": 2, "answer_type": {"open": 1, "closed": 1}},
    }
    assert report["image_dir"] == str(tmp_path / "out/images")
    assert "image3d_dir" not in report


def test_scorer_reads_the_kinds(release, tmp_path):
    report = convert("vqa_rad", release, tmp_path / "out")
    rows = [q.row for q in load_questions(report["files"]["test"])]
    assert [(r.id, r.kind, r.reference) for r in rows] == [
        ("vqa_rad-3", "open", "2"),
        ("vqa_rad-4", "closed", "no"),
    ]


def test_bad_rows_raise_with_file_and_row(release, tmp_path):
    path = release / "VQA_RAD Dataset Public.json"
    entries = json.loads(path.read_text())
    entries[0]["answer_type"] = "MAYBE"
    entries[1]["image_name"] = "synpic999.jpg"
    del entries[2]["question"]
    write_json(path, entries)
    with pytest.raises(ConversionError) as err:
        convert("vqa_rad", release, tmp_path / "out")
    message = str(err.value)
    assert "3 row(s)" in message
    assert f"{path}: row 0, field 'answer_type': expected OPEN or CLOSED, got 'MAYBE'" in message
    assert "row 1, field 'image_name': image" in message and "synpic999.jpg not found" in message
    assert "row 2, field 'question': missing or empty" in message
    assert not (tmp_path / "out/convert_report.json").exists()
    report = convert("vqa_rad", release, tmp_path / "out", skip_bad=True)
    assert report["n_skipped"] == 3
    assert [(s["file"], s["row"], s["field"]) for s in report["skipped"]] == [
        (str(path), 0, "answer_type"),
        (str(path), 1, "image_name"),
        (str(path), 2, "question"),
    ]
    assert report["counts"]["test"]["total"] == 1 and "train" not in report["files"]


def test_cached_and_redone_on_other_options(release, tmp_path, monkeypatch):
    out = tmp_path / "out"
    first = convert("vqa_rad", release, out)
    from medmvl.evaluation.benchmarks import vqa_rad

    monkeypatch.setattr(vqa_rad, "read", lambda *a, **k: pytest.fail("converted again"))
    assert convert("vqa_rad", release, out) == first
    monkeypatch.undo()
    linked = convert("vqa_rad", release, out, link=True)
    assert linked["options"]["link"] is True
    assert (out / "images/synpic100.jpg").is_symlink()
    assert (out / "images/synpic100.jpg").resolve() == (release / IMAGES / "synpic100.jpg").resolve()


def test_missing_release_and_unknown_option(tmp_path):
    with pytest.raises(ConversionError, match="VQA_RAD Dataset Public.json"):
        convert("vqa_rad", tmp_path, tmp_path / "out")
    with pytest.raises(ValueError, match="unknown option"):
        convert("vqa_rad", tmp_path, tmp_path / "out", lang="en")
    with pytest.raises(ValueError, match="unknown benchmark"):
        convert("vqa-rad", tmp_path, tmp_path / "out")
