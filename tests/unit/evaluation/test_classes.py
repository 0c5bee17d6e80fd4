"""Closed questions by answer class (per-class accuracy, confusion) and the one-word open reference count."""

from __future__ import annotations

from medmvl.evaluation.classes import classes_table, closed_by_answer, predicted_class, single_word_open
from medmvl.evaluation.predictions import PredictionRow


def _row(pred: str, ref: str, kind: str = "closed", choices: tuple[str, ...] | None = None) -> PredictionRow:
    return PredictionRow("x", pred, ref, kind, "t", "d", choices)


def test_a_model_that_always_says_yes_shows_in_the_classes() -> None:
    rows = [_row("Yes.", "yes"), _row("yes", "yes"), _row("yes", "no"), _row("Yes, it is.", "no")]
    by_answer = closed_by_answer(rows)
    assert by_answer == {
        "no": {"n": 2, "accuracy": 0.0, "predicted": {"yes": 2}},
        "yes": {"n": 2, "accuracy": 1.0, "predicted": {"yes": 2}},
    }
    assert "| no | 2 | 0.0 | yes: 2 |" in classes_table(by_answer)


def test_predicted_class_names_the_offered_choice() -> None:
    choices = ("CT", "MRI", "X-ray")
    assert predicted_class(_row("It is an MRI scan.", "CT", choices=choices)) == "mri"
    assert predicted_class(_row("CT or MRI", "CT", choices=choices)) == "(several)"
    assert predicted_class(_row("ultrasound", "CT", choices=choices)) == "(none)"
    assert predicted_class(_row("maybe", "yes")) == "(none)"  # yes/no references offer yes and no


def test_one_word_open_references_are_counted() -> None:
    rows = [_row("CT", "CT", "open"), _row("a CT of the chest", "CT of the chest", "open"), _row("no", "no")]
    assert single_word_open(rows) == 1  # only "CT": the closed yes/no and the phrase do not count
