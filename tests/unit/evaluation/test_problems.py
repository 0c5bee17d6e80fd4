"""Every bad record of every prediction (or held-out question) file is named in one error, not the first.

Issue 16: ``evaluate.py`` said "<first problem> (N more problem(s))"; ``medmvl-data check`` lists all.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from medmvl.data.schema import AnnotationError
from medmvl.evaluation.predictions import MAX_LISTED, load_predictions, load_questions
from tests.helpers.records import record, write_records


def _conv(question: str, prediction: str) -> list[dict]:
    return [{"from": "human", "value": question}, {"from": "gpt", "value": prediction}]


BAD = [
    {"id": "ok", "prediction": "yes", "answer": "yes"},
    {"id": "no_ref", "conversations": _conv("q", "p")},
    {"id": "no_pred", "conversations": [{"from": "human", "value": "q"}], "answer": "a"},
    {"id": "mc", "prediction": "(a)", "answer": "Liver", "answer_type": "choice"},
    {"id": "turns", "conversations": _conv("q", "p"), "reference_turns": ["a", "b"]},
    {"prediction": "x", "answer": "y"},
    "not a record",
]


def _write(path: Path, records: list) -> Path:
    path.write_text(json.dumps(records))
    return path


def test_every_bad_record_of_every_file_is_listed(tmp_path: Path) -> None:
    first = _write(tmp_path / "bad.json", BAD)
    second = _write(tmp_path / "also.json", [{"id": "t", "prediction": 3, "answer": "x"}])
    with pytest.raises(AnnotationError) as info:
        load_predictions([first, second, tmp_path / "nope.json"])
    message = str(info.value)
    assert "more problem" not in message
    lines = message.splitlines()
    assert lines[0] == "8 problem(s) in prediction files:"
    expected = [
        f"{first}: record 1 (id 'no_ref'): no reference answer",
        f"{first}: record 2 (id 'no_pred'): no prediction",
        f"{first}: record 3 (id 'mc'): multiple-choice question without an option letter",
        f"{first}: record 4 (id 'turns'): field 'reference_turns'",
        f"{first}: record 5: field 'id': missing",
        f"{first}: record 6: expected a JSON object, got str",
        f"{second}: record 0 (id 't'): field 'prediction': expected a string",
    ]
    for want in expected:
        assert any(want in line for line in lines[1:]), (want, message)
    assert "nope.json" in message and "does not exist" in message


def test_each_bad_field_of_a_record_is_named(tmp_path: Path) -> None:
    bad = {"id": "two", "prediction": "x", "answer": "y", "answer_type": "yesno", "choices": "yes or no"}
    with pytest.raises(AnnotationError) as info:
        load_predictions([_write(tmp_path / "p.json", [bad])])
    message = str(info.value)
    assert "record 0 (id 'two'): field 'answer_type'" in message
    assert "record 0 (id 'two'): field 'choices'" in message
    assert message.startswith("2 problem(s)")


def test_a_huge_file_lists_the_first_problems_and_counts_the_rest(tmp_path: Path) -> None:
    n = MAX_LISTED + 150
    path = _write(tmp_path / "huge.json", [{"id": str(k), "prediction": "x"} for k in range(n)])
    with pytest.raises(AnnotationError) as info:
        load_predictions([path])
    lines = str(info.value).splitlines()
    assert lines[0].startswith(f"{n} problem(s)")
    assert len(lines) == 1 + MAX_LISTED + 1
    assert f"record {MAX_LISTED - 1} (id '{MAX_LISTED - 1}')" in lines[-2]
    assert lines[-1] == f"  ... and 150 more problem(s) not listed ({n} in all)"


def test_a_single_problem_is_one_line(tmp_path: Path) -> None:
    path = _write(tmp_path / "one.json", [{"id": "q", "prediction": "x"}])
    with pytest.raises(AnnotationError) as info:
        load_predictions([path])
    assert str(info.value) == f"{path}: record 0 (id 'q'): no reference answer: field 'answer' is missing"


def test_held_out_questions_list_schema_and_reference_problems_together(tmp_path: Path) -> None:
    records = [
        record("ok", "Q?", answer="yes"),
        record("type", "Q?", answer="yes", answer_type="yesno"),
        record("none", "Q?"),
        {"id": "x", "conversations": []},
        record("mc", "Q?", answer="Liver", answer_type="choice"),
    ]
    path = write_records(tmp_path / "bad.json", records)
    with pytest.raises(AnnotationError) as info:
        load_questions(path)
    message = str(info.value)
    assert message.startswith("4 problem(s) in ") and "more problem" not in message
    for want in [
        "sample 1 (id 'type'): field 'answer_type'",
        "sample 2 (id 'none'): no reference answer",
        "sample 3 (id 'x'), field 'conversations'",
        "sample 4 (id 'mc'): multiple-choice question without an option letter",
    ]:
        assert want in message, (want, message)
