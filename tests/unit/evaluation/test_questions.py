"""Held-out questions of an annotation file (references, kinds, types) scored as prediction rows."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from medmvl.data.schema import AnnotationError
from medmvl.evaluation.predictions import Question, load_questions, question_rows
from medmvl.evaluation.report import build_report
from tests.helpers.records import record, write_records


def _questions(tmp_path: Path, **options: str) -> list[Question]:
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
        record("5", "Is it a CT?", None, None, answer="yes"),  # no types: closed (yes/no), no question type
    ]
    return load_questions(write_records(tmp_path / "val.json", records), **options)


def test_load_reads_references_kinds_and_types(tmp_path: Path) -> None:
    questions = _questions(tmp_path)
    rows = [q.row for q in questions]
    assert [r.reference for r in rows] == ["yes", "no", "liver", "fundus photography", "yes"]
    assert [r.kind for r in rows] == ["closed", "closed", "closed", "open", "closed"]
    assert [r.question_type for r in rows] == ["presence", "presence", "choice", "modality_open", "(none)"]
    assert rows[2].choices == ("liver", "heart", "spleen", "lung") and rows[4].choices is None
    assert [r.id for r in rows] == ["1", "2", "3", "4", "5"] and {r.dataset for r in rows} == {"val"}
    assert {r.prediction for r in rows} == {""}  # not answered yet
    # the prompt: the sample without its final gpt turn's answer; the raw record rides along
    assert questions[0].sample.turns[0].text == "<image>\nIs the liver visible?"
    assert questions[2].record["choices"] == ["liver", "heart", "spleen", "lung"]


def test_type_of_a_record_without_one_and_type_keys(tmp_path: Path) -> None:
    assert _questions(tmp_path, no_type="all")[4].row.question_type == "all"
    path = write_records(tmp_path / "t.json", [record("a", "Q?", answer="x", type="organ", dataset="rad")])
    assert load_questions(path)[0].row.question_type == "organ"  # `type` is the second default key
    only = load_questions(path, type_keys=("question_type",))[0].row
    assert (only.question_type, only.dataset) == ("(none)", "rad")


def test_score_golden_values(tmp_path: Path) -> None:
    rows = question_rows(_questions(tmp_path), ["Yes, it is.", "yes", "The liver.", "fundus", "no"])
    assert [r.prediction for r in rows][:2] == ["Yes, it is.", "yes"]
    report, per_question = build_report(rows)
    overall = report["overall"]
    assert overall["n_closed"] == 4 and overall["n_open"] == 1
    assert overall["closed_accuracy"] == pytest.approx(2 / 4)
    assert overall["exact_match"] == 0.0 and overall["recall"] == pytest.approx(0.5)
    assert overall["chance_accuracy"] == pytest.approx((0.5 + 0.5 + 0.25 + 0.5) / 4)
    per = report["by_question_type"]
    assert (per["presence"]["n"], per["presence"]["n_closed"], per["presence"]["closed_accuracy"]) == (
        2,
        2,
        0.5,
    )
    assert per["choice"]["closed_accuracy"] == 1.0 and per["(none)"]["closed_accuracy"] == 0.0
    modality = per["modality_open"]
    assert (modality["n_open"], modality["exact_match"], modality["recall"]) == (1, 0.0, 0.5)
    assert [q.get("correct") for q in per_question] == [True, False, True, None, False]


def test_kinds_follow_prediction_file_rules(tmp_path: Path) -> None:
    records = [
        record("caps", "Q?", answer="liver", answer_type="CLOSED"),  # case-insensitive answer_type
        record("mark", "Which? (a) .. (b) ..", gpt="(b) Mild"),  # an option mark: multiple choice
        record("letter", "Organ? A. .. C. Liver", answer="Liver", answer_choice="C"),
        record("free", "Finding?", answer="a nodule"),
    ]
    rows = [q.row for q in load_questions(write_records(tmp_path / "k.json", records))]
    assert [r.kind for r in rows] == ["closed", "choice", "choice", "open"]
    assert [r.letter for r in rows] == [None, "b", "c", None]


def test_missing_reference_names_the_sample(tmp_path: Path) -> None:
    path = write_records(tmp_path / "val.json", [record("q7", "Is it a CT?")])
    with pytest.raises(AnnotationError, match=r"val.json: sample 0 \(id 'q7'\): no reference answer"):
        load_questions(path)


def test_every_problem_is_collected_and_named(tmp_path: Path) -> None:
    records = [
        record("ok", "Q?", answer="yes"),
        record("type", "Q?", answer="yes", answer_type="yesno"),
        record("none", "Q?"),
        record("mc", "Q?", answer="Liver", answer_type="choice"),
    ]
    path = write_records(tmp_path / "bad.json", records)
    with pytest.raises(AnnotationError) as info:
        load_questions(path)
    lines = str(info.value).splitlines()  # every problem on its own line, in sample order
    assert lines[0] == f"3 problem(s) in {path}:"
    assert re.search(r"bad.json: sample 1 \(id 'type'\): field 'answer_type'.*'yesno'", lines[1])
    assert "sample 2 (id 'none'): no reference answer" in lines[2]
    assert "sample 3 (id 'mc'): multiple-choice question without an option letter" in lines[3]
    for rid, message in [("none", "no reference answer"), ("mc", "without an option letter")]:
        one = write_records(tmp_path / f"{rid}.json", [r for r in records if r["id"] == rid])
        with pytest.raises(AnnotationError, match=rf"{rid}.json: sample 0 \(id '{rid}'\): .*{message}"):
            load_questions(one)
    with pytest.raises(AnnotationError, match=r"sample 0 \(id 'x'\), field 'conversations'"):
        load_questions(write_records(tmp_path / "invalid.json", [{"id": "x", "conversations": []}]))
    with pytest.raises(AnnotationError, match="annotation file .* does not exist"):
        load_questions(tmp_path / "nope.json")


def test_prediction_count_must_match(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="4 predictions for 5 questions"):
        question_rows(_questions(tmp_path), ["yes"] * 4)
