"""Reading held-out files (references, types) and aggregating scores per question type."""

from __future__ import annotations

from pathlib import Path

import pytest

from medmvl.data.schema import AnnotationError
from medmvl.evaluation.vqa import load_vqa, score
from tests.inference.conftest import record, write_records


def _items(tmp_path: Path) -> list:
    records = [
        record(
            "1",
            "Is the liver visible?",
            "x.png",
            "yes",
            question_type="presence",
            answer_type="closed",
            choices=["yes", "no"],
        ),
        record(
            "2",
            "Is the heart visible?",
            "x.png",
            "no",
            question_type="presence",
            answer_type="closed",
            choices=["yes", "no"],
        ),
        record(
            "3",
            "Liver or heart?",
            "x.png",
            "liver",
            question_type="choice",
            answer_type="closed",
            choices=["liver", "heart", "spleen", "lung"],
        ),
        record(
            "4",
            "What type of image?",
            "x.png",
            "fundus photography",
            question_type="modality_open",
            answer_type="open",
        ),
        record("5", "Is it a CT?", None, None, answer="yes"),  # no types: closed (yes/no), type "all"
    ]
    return load_vqa(write_records(tmp_path / "val.json", records))


def test_load_reads_references_and_types(tmp_path: Path) -> None:
    items = _items(tmp_path)
    assert [it.answer for it in items] == ["yes", "no", "liver", "fundus photography", "yes"]
    assert [it.closed for it in items] == [True, True, True, False, True]
    assert [it.question_type for it in items] == ["presence", "presence", "choice", "modality_open", "all"]
    assert items[2].choices == ("liver", "heart", "spleen", "lung") and items[4].choices is None


def test_score_golden_values(tmp_path: Path) -> None:
    items = _items(tmp_path)
    result = score(items, ["Yes, it is.", "yes", "The liver.", "fundus", "no"])
    assert result["n_closed"] == 4 and result["n_open"] == 1
    assert result["closed_accuracy"] == pytest.approx(2 / 4)
    assert result["open_exact_match"] == 0.0 and result["open_recall"] == pytest.approx(0.5)
    assert result["chance_accuracy"] == pytest.approx((0.5 + 0.5 + 0.25 + 0.5) / 4)
    per = result["per_question_type"]
    assert per["presence"] == {"answer_type": "closed", "n": 2, "accuracy": 0.5}
    assert per["choice"]["accuracy"] == 1.0 and per["all"]["accuracy"] == 0.0
    assert per["modality_open"] == {"answer_type": "open", "n": 1, "exact_match": 0.0, "recall": 0.5}


def test_missing_reference_names_the_sample(tmp_path: Path) -> None:
    path = write_records(tmp_path / "val.json", [record("q7", "Is it a CT?")])
    with pytest.raises(AnnotationError, match=r"sample 0 \(id 'q7'\): no reference answer"):
        load_vqa(path)


def test_prediction_count_must_match(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="4 predictions for 5 questions"):
        score(_items(tmp_path), ["yes"] * 4)
