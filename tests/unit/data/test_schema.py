"""Annotation validation: every error names file, sample index and id, field, and what was expected."""

from __future__ import annotations

import re

import pytest

from medmvl.data.schema import (
    AnnotationError,
    Sample,
    Turn,
    check_annotations,
    load_annotations,
    parse_sample,
)
from tests.helpers.files import vqa


def _turns(*values: str) -> list[dict]:
    return [{"from": "human" if i % 2 == 0 else "gpt", "value": v} for i, v in enumerate(values)]


def test_valid_file_becomes_samples(write_json):
    path = write_json(
        [
            vqa("a", "What modality?", "Chest X-ray.", ["x/0.png"]),
            {"id": 7, "image": "x/1.png", "conversations": _turns("<image>\nQ1", "A1", "Q2", "A2")},
            {"id": "v", "image3d": ["ct.nii.gz"], "conversations": _turns("<image3d>\nOrgan?", "Liver.")},
            {"id": "t", "conversations": _turns("Text only?", "Yes.")},
        ]
    )
    a, b, c, d = load_annotations(path)
    assert a == Sample(
        "a",
        (Turn("human", "<image>\nWhat modality?"), Turn("gpt", "Chest X-ray.")),
        ("x/0.png",),
        (),
        0,
        str(path),
    )
    assert (b.id, b.images, b.index, len(b.turns)) == ("7", ("x/1.png",), 1, 4)
    assert (c.images, c.images3d) == ((), ("ct.nii.gz",))
    assert (d.images, d.images3d) == ((), ())


def human(value: object) -> dict:
    return {"from": "human", "value": value}


def gpt(value: object) -> dict:
    return {"from": "gpt", "value": value}


BAD = {  # name: (record with id "s", field named in the error, expected text)
    "starts_with_gpt": (
        {"conversations": [gpt("A"), human("Q")]},
        "conversations[0].from",
        "expected 'human'",
    ),
    "two_humans": ({"conversations": [human("Q"), human("Q")]}, "conversations[1].from", "expected 'gpt'"),
    "blank_value": ({"conversations": _turns("Q", "  ")}, "conversations[1].value", "non-empty string"),
    "int_value": ({"conversations": [human(3), gpt("A")]}, "conversations[0].value", "non-empty string"),
    "no_turns": ({"conversations": []}, "conversations", "non-empty list"),
    "too_few_paths": (
        {"image": ["a.png"], "conversations": _turns("<image><image>Q", "A")},
        "image",
        "1 path(s) but 2 <image> placeholder(s) in the text; expected equal",
    ),
    "no_paths": ({"image": [], "conversations": _turns("<image>Q", "A")}, "image", "0 path(s) but 1 <image>"),
    "volume_without_placeholder": (
        {"image3d": ["v.nii"], "conversations": _turns("Q", "A")},
        "image3d",
        "1 path(s) but 0 <image3d>",
    ),
    "empty_path": ({"image": [""], "conversations": _turns("<image>Q", "A")}, "image", "non-empty path"),
    "placeholder_in_answer": (
        {"image": ["a.png"], "conversations": _turns("<image>Q", "A <image>")},
        "conversations[1].value",
        "only appear in human turns",
    ),
    "no_answer": ({"conversations": _turns("Q", "A", "Q2")}, "conversations", "last turn to be 'gpt'"),
    "answer_not_text": ({"answer": 3, "conversations": _turns("Q", "A")}, "answer", "expected a string"),
}


@pytest.mark.parametrize(("record", "field", "expected"), list(BAD.values()), ids=list(BAD))
def test_sample_errors_name_file_index_id_field(write_json, record, field, expected):
    path = write_json([vqa("ok", "Q", "A"), {"id": "s", **record}])
    with pytest.raises(AnnotationError) as info:
        load_annotations(path)
    message = str(info.value)
    assert message.startswith(f"{path}: sample 1 (id 's'), field {field!r}: ")
    assert expected in message


def test_missing_id_and_non_object():
    sample, problems = parse_sample({"conversations": _turns("Q", "A")}, 4, source="f.json")
    assert sample is None
    assert (
        str(problems[0]) == "f.json: sample 4, field 'id': expected a non-empty string or integer, got None"
    )
    _, problems = parse_sample(["not", "an", "object"], 0)
    assert problems[0].code == "not_object"


def test_inference_files_may_lack_the_answer(write_json):
    path = write_json([{"id": "q", "answer": "Left.", "conversations": _turns("Which side?")}])
    (sample,) = load_annotations(path, require_answer=False)
    assert sample.answer == "Left." and sample.turns == (Turn("human", "Which side?"),)


def test_duplicate_ids_are_errors(write_json):
    path = write_json([vqa("a", "Q", "A"), vqa("b", "Q", "A"), {**vqa("a", "Q2", "A2")}])
    with pytest.raises(
        AnnotationError,
        match=re.escape("sample 2 (id 'a'), field 'id': duplicate id (first used by sample 0)"),
    ):
        load_annotations(path)


def test_unknown_keys_are_warnings_not_errors(write_json):
    path = write_json([vqa("a", "Q", "A", modalty="CT", question_type="modality")])
    assert [s.id for s in load_annotations(path)] == ["a"]
    (problem,) = check_annotations(path)  # the known metadata key question_type is not reported
    assert (problem.severity, problem.field, problem.code) == ("warning", "modalty", "unknown_key")


def test_check_reports_every_problem_at_once(write_json):
    path = write_json(
        [
            vqa("a", "Q", "A"),
            {"id": "b", "image": ["x.png", "y.png"], "conversations": _turns("<image>Q", "A", "Q2")},
            vqa("a", "Q", "A"),
            {"id": "c", "conversations": _turns("Q", ""), "extra": 1},
        ]
    )
    problems = check_annotations(path)
    assert [(p.index, p.code, p.severity) for p in problems] == [
        (1, "no_answer", "error"),
        (1, "image_count", "error"),
        (2, "duplicate_id", "error"),
        (3, "unknown_key", "warning"),
        (3, "turns", "error"),
    ]
    with pytest.raises(AnnotationError, match=r"\(3 more problem\(s\) in this file\)") as info:
        load_annotations(path)
    assert len(info.value.problems) == 4


@pytest.mark.parametrize(("content", "expected"), [("{}", "expected a JSON list"), ("[", "not valid JSON")])
def test_file_level_errors(tmp_path, content, expected):
    path = tmp_path / "bad.json"
    path.write_text(content)
    with pytest.raises(AnnotationError, match=expected):
        check_annotations(path)
    with pytest.raises(AnnotationError, match="does not exist"):
        load_annotations(tmp_path / "missing.json")
