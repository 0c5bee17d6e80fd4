"""Each protocol's quirks on the worked examples of docs/protocols.md."""

from __future__ import annotations

import pytest

from medmvl.evaluation.protocols.llava_med import LlavaMedProtocol
from medmvl.evaluation.protocols.m3d import M3dProtocol, unigram_bleu
from medmvl.evaluation.protocols.medevalkit import (
    MedEvalKitProtocol,
    boxed,
    judge_judgement,
    judge_multi_choice,
    parse_response,
)
from medmvl.evaluation.protocols.medm_vl_2d import MedmVl2dProtocol
from tests.unit.evaluation.protocols.conftest import row


def test_llava_med_closed_is_a_substring_test() -> None:
    score = LlavaMedProtocol().score
    assert score(row("There is a nodule.", "no", "closed")) == {"closed_accuracy": 1.0}  # "no" in "nodule"
    assert score(row("No.", "yes", "closed")) == {"closed_accuracy": 0.0}
    assert score(row("(b) Mild", "b", "choice", letter="b")) == {"closed_accuracy": 1.0}


def test_llava_med_open_recall_and_hit() -> None:
    scores = LlavaMedProtocol().score(row("The left lung, left side", "left lung"))
    assert scores == {"open_recall": 1.0, "open_hit": 1.0}  # tp = 2 (left) + 1 (lung), fn = 0
    scores = LlavaMedProtocol().score(row("lung", "left lung"))
    assert scores == {"open_recall": 0.5, "open_hit": 0.0}


def test_medm_vl_2d_bleu1_brevity_and_accuracy() -> None:
    scores = MedmVl2dProtocol().score(row("liver", "the liver and spleen", "closed"))
    # reference words [liver, and, spleen], prediction [liver]: p1 = 1, BP = exp(1 - 3/1)
    assert scores["bleu1"] == pytest.approx(0.1353352832)
    assert scores["closed_accuracy"] == 0.0 and scores["bleu2"] == pytest.approx(0.0, abs=1e-100)
    assert MedmVl2dProtocol().score(row("yes it is", "Yes", "closed"))["closed_accuracy"] == 1.0


def test_m3d_choice_needs_capital_letter_and_period() -> None:
    score = M3dProtocol().score
    assert score(row("B. Liver", "(b) Liver", "choice", letter="b")) == {"choice_accuracy": 1.0}
    assert score(row("b. Liver", "Liver", "choice", letter="b")) == {"choice_accuracy": 0.0}
    assert score(row("B", "Liver", "choice", letter="b")) == {"choice_accuracy": 0.0}
    assert score(row("A. Heart B. Liver", "Liver", "choice", letter="b")) == {"choice_accuracy": 1.0}
    assert score(row("yes", "yes", "closed")) == {}


def test_m3d_unigram_bleu_and_rouge1() -> None:
    # 13a tokens: [a, nodule] vs [a, small, nodule]: p1 = 2/2, BP = exp(1 - 3/2)
    assert unigram_bleu("a nodule", "a small nodule") == pytest.approx(0.6065306597)
    assert unigram_bleu("", "x") == 0.0
    scores = M3dProtocol().score(row("a nodule", "a small nodule"))
    assert scores["rouge1"] == pytest.approx(0.8)  # P 1, R 2/3
    assert scores["bert_f1"] is None and "bert_f1" in M3dProtocol().unavailable()


def test_medevalkit_yes_no_substrings() -> None:
    assert judge_judgement("no", "Nodule present.")  # "no" inside "nodule", no "yes"
    assert not judge_judgement("yes", "Not enlarged, yes")  # both "no" (in "not") and "yes"
    assert judge_judgement("yes", "The answer is: yes")


def test_medevalkit_options() -> None:
    assert judge_multi_choice(["Liver", "Heart"], "b", "B. Heart")
    assert judge_multi_choice(["Liver", "Heart"], "Heart", "b")  # letter of the reference option
    assert judge_multi_choice(["Liver", "Heart"], "a", "xyz")  # nothing similar: option A
    assert judge_multi_choice(["Liver", "Heart"], "b", "I think it is the heart")  # difflib
    assert boxed("so \\boxed{B} and \\boxed{C}") == "C" and boxed("none here") == "None"
    assert parse_response("Final answer: C").strip() == "c"


def test_medevalkit_reported_f1_is_recall() -> None:
    scores = MedEvalKitProtocol().score(row("left lung", "left lung base"))
    # set F1 = 0.8, precision 1, recall 2/3, reported as (precision, recall, f1) = (0.8, 1, 2/3)
    assert scores["reported_precision"] == pytest.approx(0.8) and scores["reported_recall"] == 1.0
    assert scores["reported_f1"] == pytest.approx(2 / 3) and scores["open_exact_match"] == 0.0
    assert MedEvalKitProtocol().score(row("It is not.", "no", "closed")) == {"yes_no_accuracy": 1.0}
