"""The VQA normalisation of LLaVA-Med and Uni-Med: the worked examples of docs/protocols.md."""

from __future__ import annotations

import pytest

from medmvl.evaluation.protocols.vqa_words import normalize_word, vqa_f1


@pytest.mark.parametrize(
    ("text", "normalised"),
    [
        ("X-ray of the chest.", "x ray of chest"),  # "-" to a space, period and article dropped
        ("x-ray - chest", "xray chest"),  # " -" in the text: every "-" deleted
        ("None, dont 1,200 2.5 cm.", "0 don't 1200 2.5 cm"),  # digit,digit: every punctuation deleted
        ("5. 2.5", "5 2.5"),  # a period before a digit stays
        ("Two kidneys", "2 kidneys"),
    ],
)
def test_normalize_word(text: str, normalised: str) -> None:
    assert normalize_word(text) == normalised


def test_periods_past_32_stay() -> None:
    """``re.UNICODE`` passed as ``count``: only the first 32 periods are removed."""
    assert normalize_word("a." * 40).count(".") == 8


def test_recall_counts_prediction_repeats() -> None:
    """tp adds the prediction's count of a shared word: recall 3 / (3 + 1)."""
    f1, precision, recall = vqa_f1("liver liver liver", "liver kidney")
    assert (precision, recall) == (1.0, 0.75) and f1 == pytest.approx(6 / 7)
    assert vqa_f1("", "liver") == (0.0, 0.0, 0.0)
