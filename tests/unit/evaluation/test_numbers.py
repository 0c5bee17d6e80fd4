"""Numbers in answers are single words: decimals, signs, thousands, ranges, ratios, percentages, units.

The table of docs/metrics.md ("Numbers") is read and checked here row by row, so the documentation is the
test; the cases below add the scores of issue 16 ("5.2 cm" against "2.5 cm" scored 1.0).
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from medmvl.evaluation.metrics.closed import closed_correct, normalise, open_exact_match, open_recall
from medmvl.evaluation.metrics.text import bleu, rouge_l, token_f1, words

DOC = Path(__file__).resolve().parents[3] / "docs" / "metrics.md"
_ROW = re.compile(r'^\| `"(?P<text>[^`]*)"` \| `\[(?P<words>[^`]*)\]` \|')


def _doc_rows() -> list[tuple[str, list[str]]]:
    """``(text, words)`` of each row of the table under docs/metrics.md's "### Numbers" heading."""
    section = DOC.read_text(encoding="utf-8").partition("### Numbers")[2].split("\n#", 1)[0]
    rows = []
    for line in section.splitlines():
        match = _ROW.match(line)
        if match:
            found = [w.strip() for w in match["words"].split(",")] if match["words"].strip() else []
            rows.append((match["text"], found))
    return rows


def test_docs_table_is_long_enough() -> None:
    assert len(_doc_rows()) >= 25


@pytest.mark.parametrize(("text", "expected"), _doc_rows() or [("", [])])
def test_docs_numbers_table(text: str, expected: list[str]) -> None:
    assert words(text) == expected


@pytest.mark.parametrize(
    ("left", "right"),
    [
        ("5mm", "5 mm"),
        ("2.5cm", "2.5 cm"),
        ("3-5 mm", "3 - 5 mm"),
        ("3–5 mm", "3-5 mm"),  # en dash
        ("45%", "45 %"),
        ("1,200 mL", "1200 ml"),
        ("2.50 cm", "2.5 cm"),
        ("+2", "2"),
        ("−3 HU", "-3 HU"),  # U+2212 minus sign
        ("3 × 4 cm", "3x4 cm"),
        ("120 / 80", "120/80"),
        ("Yes.", "yes"),
        ("The liver.", "liver"),
    ],
)
def test_same_answer(left: str, right: str) -> None:
    assert normalise(left) == normalise(right)
    assert open_exact_match(left, right)


@pytest.mark.parametrize(
    ("left", "right"),
    [
        ("5.2 cm", "2.5 cm"),
        ("-3", "3"),
        ("3-5 mm", "3 5 mm"),
        ("3-5 mm", "5 mm"),
        ("45%", "45"),
        ("120/80", "80/120"),
        ("0.5", "5"),
        ("<5 mm", ">5 mm"),
        ("1,2", "12"),  # a comma before fewer than 3 digits separates two numbers
    ],
)
def test_different_answer(left: str, right: str) -> None:
    assert normalise(left) != normalise(right)


def test_issue_16_decimal_scores() -> None:
    """Before: "5 2 cm" vs "2 5 cm", recall / F1 / BLEU-1 all 1.0. Now only "cm" is shared."""
    pred, ref = "5.2 cm", "2.5 cm"
    assert words(pred) == ["5.2", "cm"] and words(ref) == ["2.5", "cm"]
    assert open_recall(pred, ref) == pytest.approx(1 / 2)
    assert token_f1(pred, ref) == pytest.approx(1 / 2)
    assert bleu(pred, ref, 1) == pytest.approx(1 / 2)  # equal lengths: brevity penalty 1
    assert bleu(pred, ref, 2) == 0.0
    assert rouge_l(pred, ref) == pytest.approx(1 / 2)
    assert not open_exact_match(pred, ref)


@pytest.mark.parametrize(
    ("pred", "ref", "recall", "f1"),
    [
        ("2.5 cm", "2.5cm", 1.0, 1.0),  # before: 1/2 and 0.4 ("2 5 cm" vs "2 5cm")
        ("1,200 mg", "1200 mg", 1.0, 1.0),  # before: 1/2, 0.4
        ("5mm", "5 mm", 1.0, 1.0),  # before: 0, 0
        ("-3 HU", "3 HU", 1 / 2, 1 / 2),  # before: 1, 1
        ("3-5 mm", "5 mm", 1 / 2, 1 / 2),  # before: 1, 0.8
        ("45%", "54%", 1 / 2, 1 / 2),  # "%" is a word; before: 0, 0 (only the numbers)
    ],
)
def test_number_scores(pred: str, ref: str, recall: float, f1: float) -> None:
    assert open_recall(pred, ref) == pytest.approx(recall)
    assert token_f1(pred, ref) == pytest.approx(f1)


@pytest.mark.parametrize(
    ("prediction", "answer", "choices", "correct"),
    [
        ("about 2.5 cm", "5 cm", ["5 cm", "10 cm"], False),  # before: "2 5 cm" named "5 cm"
        ("It measures 2.5 cm", "2.5 cm", ["2.5 cm", "5 cm"], True),
        ("-3", "3", None, False),  # before: equal ("3")
        ("5mm", "5 mm", None, True),  # before: "5mm" != "5 mm"
        ("Yes, 2 lesions.", "yes", None, True),
        ("No.", "no", None, True),
    ],
)
def test_closed_with_numbers(prediction: str, answer: str, choices: list[str] | None, correct: bool) -> None:
    assert closed_correct(prediction, answer, choices) is correct
