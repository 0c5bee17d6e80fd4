"""Open-answer text metrics and multiple-choice scoring on the hand-computed examples of docs/metrics.md."""

from __future__ import annotations

import math

import pytest

from medmvl.evaluation.metrics.choice import choice_correct, marked_options, reference_letter
from medmvl.evaluation.metrics.closed import open_exact_match, open_recall
from medmvl.evaluation.metrics.text import bleu, rouge_l, token_f1, words

BP = math.exp(1 - 5 / 4)  # brevity penalty of 4 prediction words against 5 reference words

# prediction, reference, recall, exact match, token F1, BLEU-1..4, ROUGE-L (docs/metrics.md's table)
WORKED = [
    (
        "Left lung, lower lobe",
        "the lower lobe of the left lung",
        4 / 5,
        False,
        8 / 9,
        (BP, BP * math.sqrt(2 / 3), 0.0, 0.0),
        4 / 9,
    ),
    ("nodule in right lung", "right lung nodule", 1.0, False, 6 / 7, (3 / 4, 1 / 2, 0.0, 0.0), 4 / 7),
    ("The liver and the spleen.", "liver", 1.0, False, 1 / 2, (1 / 3, 0.0, 0.0, 0.0), 1 / 2),
    ("Liver", "the liver.", 1.0, True, 1.0, (1.0, 0.0, 0.0, 0.0), 1.0),
    ("5.2 cm", "2.5 cm", 1 / 2, False, 1 / 2, (1 / 2, 0.0, 0.0, 0.0), 1 / 2),  # issue 16: all 1.0 before
    ("the cat sat on the mat", "a cat sat on the mat", 1.0, True, 1.0, (1.0, 1.0, 1.0, 1.0), 1.0),
]


@pytest.mark.parametrize(("pred", "ref", "recall", "exact", "f1", "bleus", "rouge"), WORKED)
def test_worked_examples(
    pred: str, ref: str, recall: float, exact: bool, f1: float, bleus: tuple, rouge: float
) -> None:
    assert open_recall(pred, ref) == pytest.approx(recall)
    assert open_exact_match(pred, ref) is exact
    assert token_f1(pred, ref) == pytest.approx(f1)
    assert [bleu(pred, ref, n) for n in range(1, 5)] == pytest.approx(list(bleus), abs=1e-6)
    assert rouge_l(pred, ref) == pytest.approx(rouge, abs=1e-6)


def test_words_are_normalised() -> None:
    assert words("Left lung, lower lobe") == ["left", "lung", "lower", "lobe"]
    assert words("the lower lobe of the left lung") == ["lower", "lobe", "of", "left", "lung"]


def test_token_f1_counts_repeats_as_a_multiset() -> None:
    # P = [lung, lung, nodule], R = [lung, nodule, nodule]: common = min(2,1) + min(1,2) = 2
    assert token_f1("lung lung nodule", "lung nodule nodule") == pytest.approx(2 / 3)
    assert open_recall("lung lung nodule", "lung nodule nodule") == 1.0  # distinct words


@pytest.mark.parametrize(
    ("pred", "ref", "f1", "bleu1", "rouge"),
    [
        ("", "", 1.0, 0.0, 0.0),  # both empty: F1 1 by the SQuAD convention, BLEU/ROUGE 0
        ("", "liver", 0.0, 0.0, 0.0),
        ("liver", "", 0.0, 0.0, 0.0),
        ("heart", "liver", 0.0, 0.0, 0.0),
        ("...", "?!", 1.0, 0.0, 0.0),  # punctuation only -> no words on either side
        ("...", "The.", 0.0, 0.0, 0.0),  # an article alone is kept: "the"
    ],
)
def test_empty_and_disjoint(pred: str, ref: str, f1: float, bleu1: float, rouge: float) -> None:
    assert token_f1(pred, ref) == f1
    assert bleu(pred, ref, 1) == bleu1
    assert rouge_l(pred, ref) == rouge


def test_bleu_order_must_be_positive() -> None:
    with pytest.raises(ValueError, match="BLEU order"):
        bleu("a", "b", 0)


@pytest.mark.parametrize(
    ("pred", "marks"),
    [
        ("(b) Mild recessions", {"b"}),
        ("I think (B)", {"b"}),
        ("(a) or (b)", {"a", "b"}),
        ("B. Liver", {"b"}),
        ("b)", {"b"}),
        ("  C", {"c"}),
        (" d: the aorta", {"d"}),
        ("a liver", set()),
        ("Vitamin D.", set()),
        ("(ab) no", set()),
    ],
)
def test_marked_options(pred: str, marks: set[str]) -> None:
    assert marked_options(pred) == marks


@pytest.mark.parametrize(
    ("pred", "ref", "answer_choice", "correct"),
    [
        ("(b) Mild recessions", "(b) Mild recessions", None, True),
        ("I think (B)", "(b) Mild recessions", None, True),
        ("(a) or (b)", "(b) Mild recessions", None, False),  # MedM-VL's substring rule says right
        ("Mild recessions", "(b) Mild recessions", None, False),  # no option mark
        ("B. Liver", "Liver", "B", True),
        ("B. Liver", "Liver", "(b)", True),
        ("C", "Liver", "B.", False),
        ("(c) Severe", "(b) Mild recessions", None, False),
    ],
)
def test_choice_correct(pred: str, ref: str, answer_choice: str | None, correct: bool) -> None:
    letter = reference_letter(ref, answer_choice)
    assert letter == "b"
    assert choice_correct(pred, letter) is correct


def test_reference_letter_forms() -> None:
    assert reference_letter("The answer is (c) Normal") == "c"  # the first (x) anywhere
    assert reference_letter("Normal aeration") is None
    with pytest.raises(ValueError, match="one option letter"):
        reference_letter("x", "BC")
