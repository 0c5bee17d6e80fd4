"""Prediction files -> rows (kinds, groups, multi-turn), aggregation golden values, the markdown table."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from medmvl.data.schema import AnnotationError
from medmvl.evaluation.predictions import answer_kind, load_predictions
from medmvl.evaluation.report import build_report, markdown_table


def _conv(question: str, prediction: str) -> list[dict]:
    return [{"from": "human", "value": question}, {"from": "gpt", "value": prediction}]


RECORDS = [
    {"id": "c1", "conversations": _conv("Is it a CT?", "Yes, it is."), "answer": "yes",
     "question_type": "presence", "dataset": "rad"},
    {"id": "c2", "conversations": _conv("Which side?", "the right side"), "answer": "left",
     "answer_type": "CLOSED", "choices": ["left", "right"], "question_type": "laterality", "dataset": "rad"},
    {"id": "m1", "conversations": _conv("Which? (a) .. (b) ..", "(b) Mild"), "answer": "(b) Mild recessions",
     "dataset": "ct"},
    {"id": "m2", "conversations": _conv("Organ? A. Spleen ... C. Liver", "A. Spleen"), "answer": "Liver",
     "answer_choice": "C", "type": "organ", "dataset": "ct"},
    {"id": "o1", "conversations": _conv("Finding?", "nodule in right lung"), "answer": "right lung nodule",
     "question_type": "abnormality"},
    {"id": "o2", "prediction": "Liver", "answer": "the liver.", "question_type": "organ", "dataset": "ct"},
]  # fmt: skip


@pytest.fixture
def pred_file(tmp_path: Path) -> Path:
    path = tmp_path / "preds.json"
    path.write_text(json.dumps(RECORDS))
    return path


def test_rows_kinds_and_groups(pred_file: Path) -> None:
    rows = load_predictions([pred_file])
    assert [r.id for r in rows] == ["c1", "c2", "m1", "m2", "o1", "o2"]
    assert [r.kind for r in rows] == ["closed", "closed", "choice", "choice", "open", "open"]
    assert [r.question_type for r in rows] == [
        "presence",
        "laterality",
        "(none)",
        "organ",
        "abnormality",
        "organ",
    ]
    assert [r.dataset for r in rows] == ["rad", "rad", "ct", "ct", "preds", "ct"]  # file stem as fallback
    assert [r.letter for r in rows[2:4]] == ["b", "c"] and rows[1].choices == ("left", "right")
    assert rows[0].prediction == "Yes, it is." and rows[5].prediction == "Liver"


def test_golden_aggregates(pred_file: Path) -> None:
    report, per_question = build_report(load_predictions([pred_file]))
    overall = report["overall"]
    assert (overall["n"], overall["n_closed"], overall["n_choice"], overall["n_open"]) == (6, 2, 2, 2)
    assert overall["closed_accuracy"] == 0.5  # c1 right (names yes), c2 wrong (names right)
    assert overall["chance_accuracy"] == 0.5  # c1 yes/no, c2 two choices
    assert overall["choice_accuracy"] == 0.5  # m1 marks (b), m2 marks A instead of C
    # open: o1 = "nodule in right lung" vs "right lung nodule"; o2 = "Liver" vs "the liver."
    assert overall["recall"] == 1.0 and overall["exact_match"] == 0.5
    assert overall["token_f1"] == pytest.approx((6 / 7 + 1) / 2)
    assert overall["bleu1"] == pytest.approx((3 / 4 + 1) / 2)
    assert overall["bleu2"] == pytest.approx((1 / 2 + 0) / 2)
    assert overall["bleu3"] == 0.0 and overall["bleu4"] == 0.0
    assert overall["rouge_l"] == pytest.approx((4 / 7 + 1) / 2)
    assert list(report["by_kind"]) == ["closed", "choice", "open"]
    assert (
        report["by_kind"]["closed"]["recall"] is None and report["by_kind"]["open"]["closed_accuracy"] is None
    )
    assert list(report["by_dataset"]) == ["ct", "preds", "rad"]
    ct = report["by_dataset"]["ct"]
    assert (ct["n"], ct["choice_accuracy"], ct["exact_match"], ct["closed_accuracy"]) == (3, 0.5, 1.0, None)
    organ = report["by_question_type"]["organ"]
    assert (organ["n_choice"], organ["n_open"], organ["choice_accuracy"], organ["recall"]) == (1, 1, 0.0, 1.0)
    assert set(report["by_question_type"]) == {"presence", "laterality", "(none)", "organ", "abnormality"}
    assert [q["correct"] for q in per_question[:4]] == [True, False, True, False]
    assert per_question[5]["exact_match"] == 1.0 and per_question[4]["kind"] == "open"


def test_markdown_table(pred_file: Path) -> None:
    table = markdown_table(build_report(load_predictions([pred_file]))[0])
    lines = table.splitlines()
    assert lines[0] == (
        "| group | n | closed acc | choice acc | open recall | exact match | token F1 | BLEU-1 | BLEU-2 "
        "| BLEU-3 | BLEU-4 | ROUGE-L | closed chance |"
    )
    assert lines[2] == (
        "| overall | 6 | 50.0 | 50.0 | 100.0 | 50.0 | 92.9 | 87.5 | 25.0 | 0.0 | 0.0 | 78.6 | 50.0 |"
    )
    assert "| kind: open | 2 | - | - | 100.0 |" in table and lines[5].endswith("| 78.6 | - |")
    assert "| dataset: rad | 2 | 50.0 | - | - |" in table and "| type: (none) | 1 |" in table
    assert len(lines) == 2 + 1 + 3 + 5 + 3


def test_chance_accuracy_worked_example(tmp_path: Path) -> None:
    """docs/metrics.md, "Chance accuracy": (1/2 + 1/4 + 1/2) / 3 = 5/12 over the closed questions with
    known options; a closed question without choices, a multiple-choice and an open question are left out."""
    records = [
        {"id": "ct", "prediction": "no", "answer": "yes"},
        {"id": "organ", "prediction": "liver", "answer": "liver", "choices": ["liver", "heart", "spleen", "lung"]},
        {"id": "side", "prediction": "left", "answer": "left", "choices": ["left", "right"]},
        {"id": "region", "prediction": "chest", "answer": "abdomen", "answer_type": "closed"},
        {"id": "mc", "prediction": "(a)", "answer": "(b) Mild recessions"},
        {"id": "finding", "prediction": "nodule", "answer": "a nodule"},
    ]  # fmt: skip
    path = tmp_path / "chance.json"
    path.write_text(json.dumps(records))
    report, _ = build_report(load_predictions([path]))
    assert report["overall"]["chance_accuracy"] == pytest.approx(5 / 12)
    assert report["by_kind"]["closed"]["chance_accuracy"] == pytest.approx(5 / 12)
    assert report["by_kind"]["choice"]["chance_accuracy"] is None
    assert report["by_kind"]["open"]["chance_accuracy"] is None
    assert report["overall"]["closed_accuracy"] == 0.5  # organ and side right, ct and region wrong
    lines = markdown_table(report).splitlines()
    assert lines[2].startswith("| overall | 6 | 50.0 |") and lines[2].endswith("| 41.7 |")


def test_multi_turn_records_score_each_turn(tmp_path: Path) -> None:
    record = {
        "id": "d",
        "conversations": [*_conv("<image>\nIs it a CT?", "yes"), *_conv("Which organ?", "the liver")],
        "reference_turns": ["yes", None],
        "answer": "liver",
    }
    path = tmp_path / "dialog.jsonl"
    path.write_text(json.dumps(record) + "\n\n")
    rows = load_predictions([path])
    assert [(r.id, r.prediction, r.reference, r.kind) for r in rows] == [
        ("d#1", "yes", "yes", "closed"),
        ("d#2", "the liver", "liver", "open"),
    ]


def test_kind_rules() -> None:
    assert answer_kind({"answer_type": "OPEN"}, "yes") == "open"  # explicit type wins
    assert answer_kind({"answer_type": "multiple_choice"}, "(a) x") == "choice"
    assert answer_kind({}, " (a) Normal") == "choice" and answer_kind({"answer_choice": "A"}, "x") == "choice"
    assert answer_kind({}, "No.") == "closed" and answer_kind({"choices": ["x", "y"]}, "x") == "closed"
    assert answer_kind({}, "normal (no findings)") == "open"  # an option mark only counts at the start
    with pytest.raises(ValueError, match="answer_type.*'yesno'"):
        answer_kind({"answer_type": "yesno"}, "yes")


def test_every_problem_is_reported_with_file_and_id(tmp_path: Path) -> None:
    bad = [
        {"id": "ok", "prediction": "yes", "answer": "yes"},
        {"id": "no_ref", "conversations": _conv("q", "p")},
        {"id": "no_pred", "conversations": [{"from": "human", "value": "q"}], "answer": "a"},
        {"id": "mc", "prediction": "(a)", "answer": "Liver", "answer_type": "choice"},
        {"id": "turns", "conversations": _conv("q", "p"), "reference_turns": ["a", "b"]},
    ]
    path = tmp_path / "bad.json"
    path.write_text(json.dumps(bad))
    with pytest.raises(AnnotationError) as info:
        load_predictions([path])
    lines = str(info.value).splitlines()  # every bad record on its own line, in file order
    assert lines[0] == f"4 problem(s) in {path}:" and len(lines) == 5
    assert re.search(r"bad.json: record 1 \(id 'no_ref'\): no reference", lines[1])
    for line, rid in zip(lines[2:], ["no_pred", "mc", "turns"]):
        assert f"(id '{rid}')" in line
    for rid, message in [
        ("no_pred", "no prediction"),
        ("mc", "without an option letter"),
        ("turns", "reference_turns"),
    ]:
        one = tmp_path / f"{rid}.json"
        one.write_text(json.dumps([r for r in bad if r["id"] == rid]))
        with pytest.raises(AnnotationError, match=message):
            load_predictions([one])
    with pytest.raises(AnnotationError, match="does not exist"):
        load_predictions([tmp_path / "nope.json"])
