"""Closed and open answer scoring on hand-made examples (definitions in medmvl.evaluation.metrics.closed)."""

from __future__ import annotations

import pytest

from medmvl.evaluation.metrics.closed import (
    closed_correct,
    named_choices,
    normalise,
    open_exact_match,
    open_recall,
)


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("Yes.", "yes"),
        ("  The Liver. ", "liver"),  # articles are dropped
        ("X-ray", "x ray"),
        ("yes,  it is!", "yes it is"),
        ("An X-ray of the chest", "x ray of chest"),
        ("A", "a"),  # an answer of articles only is kept (option "A")
        ("the a", "the a"),
        ("theatre, Another", "theatre another"),  # whole words only
        ("", ""),
    ],
)
def test_normalise(text: str, expected: str) -> None:
    assert normalise(text) == expected


@pytest.mark.parametrize(
    ("prediction", "answer", "choices", "correct"),
    [
        ("Yes.", "yes", None, True),  # trailing period and case
        ("yes, it is", "yes", None, True),  # yes/no answers use (yes, no) as choices
        ("yes, it is", "yes", ["yes", "no"], True),
        ("No", "yes", ["yes", "no"], False),
        ("yes or no", "yes", ["yes", "no"], False),  # names both choices
        ("nope", "no", ["yes", "no"], False),  # whole words only
        ("The liver.", "liver", ["liver", "heart"], True),
        ("The liver.", "heart", ["liver", "heart"], False),
        ("not the liver but the heart", "heart", ["liver", "heart"], False),  # two choices named
        ("the livers", "liver", ["liver", "heart"], False),
        ("It is on the patient's right", "right", ["left", "right"], True),
        ("CT scan", "CT", ["MRI", "CT"], True),
        ("an x-ray", "X-ray", ["X-ray", "CT"], True),
        ("the liver", "liver", None, True),  # no choices, not yes/no: normalised equality (articles dropped)
        ("liver tissue", "liver", None, False),
        ("Liver!", "liver", None, True),
    ],
)
def test_closed_correct(prediction: str, answer: str, choices: list[str] | None, correct: bool) -> None:
    assert closed_correct(prediction, answer, choices) is correct


def test_longer_choice_wins_over_a_choice_inside_it() -> None:
    choices = ["heart", "heart valve"]
    assert named_choices("the heart valve", choices) == ["heart valve"]
    assert closed_correct("the heart valve", "heart valve", choices)
    assert not closed_correct("the heart valve", "heart", choices)
    assert named_choices("heart valve and heart", choices) == ["heart valve", "heart"]


@pytest.mark.parametrize(
    ("prediction", "answer", "exact", "recall"),
    [
        ("CT.", "CT", True, 1.0),
        ("a CT scan", "CT", False, 1.0),
        ("fundus", "fundus photography", False, 0.5),
        ("photography of the fundus", "Fundus photography", False, 1.0),
        ("chest", "abdomen", False, 0.0),
        ("the the chest", "chest chest", False, 1.0),  # distinct words
        ("anything", "", False, 0.0),
    ],
)
def test_open_metrics(prediction: str, answer: str, exact: bool, recall: float) -> None:
    assert open_exact_match(prediction, answer) is exact
    assert open_recall(prediction, answer) == pytest.approx(recall)
