"""SLAKE: the Slake1.0 layout, the English subset by default, q_lang kept."""

from __future__ import annotations

import pytest

from medmvl.evaluation.benchmarks import ConversionError, convert

from .helpers import gpt, human, split_records, write_json
from .releases import slake_entry as _entry
from .releases import write_slake


@pytest.fixture
def release(tmp_path):
    return write_slake(tmp_path)


def test_english_subset_by_default(release, tmp_path):
    report = convert("slake", release, tmp_path / "out")
    assert sorted(report["files"]) == ["test", "train", "validate"]
    train = split_records(report, "train")
    assert [r["id"] for r in train] == ["slake-0"]
    rec = train[0]
    assert human(rec) == "<image>\nWhich organ is abnormal?" and gpt(rec) == "Lung"
    assert rec["image"] == ["xmlab1/source.jpg"]
    assert (rec["q_lang"], rec["answer_type"], rec["question_type"], rec["modality"]) == (
        "en",
        "open",
        "Organ",
        "X-Ray",
    )
    assert split_records(report, "validate")[0]["answer_type"] == "closed"
    assert report["filtered_by_lang"] == {"lang": "en", "rows": {"train": 1}}
    assert (tmp_path / "out/images/xmlab2/source.jpg").is_file()


def test_all_languages(release, tmp_path):
    report = convert("slake", release, tmp_path / "out", lang="all")
    train = split_records(report, "train")
    assert [(r["id"], r["q_lang"], r["answer"]) for r in train] == [
        ("slake-0", "en", "Lung"),
        ("slake-1", "zh", "肺"),
    ]
    assert report["options"]["lang"] == "all"


def test_hf_copy_and_bad_rows(release, tmp_path):
    (release / "validate.json").rename(release / "validation.json")
    write_json(release / "test.json", [_entry(20, 3, "What is shown?", "", "en", "BOTH")])
    with pytest.raises(ConversionError) as err:
        convert("slake", release, tmp_path / "out")
    text = str(err.value)
    assert "test.json: row 0, field 'answer': missing or empty" in text
    assert "field 'answer_type': expected OPEN or CLOSED, got 'BOTH'" in text
    assert "field 'img_name': image" in text and "xmlab3/source.jpg not found" in text
    report = convert("slake", release, tmp_path / "out", skip_bad=True)
    assert sorted(report["files"]) == ["train", "validation"]
    assert report["counts"]["test"] == {"total": 0, "answer_type": {}}
    assert report["n_skipped"] == 3


def test_bad_lang_option(release, tmp_path):
    with pytest.raises(ValueError, match=r"lang='fr'; expected one of \['en', 'zh', 'all'\]"):
        convert("slake", release, tmp_path / "out", lang="fr")
