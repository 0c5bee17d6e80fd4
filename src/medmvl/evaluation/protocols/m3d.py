"""M3D-Bench's VQA scoring (M3D-VQA closed and open questions).

Reference: BAAI-DCAI/M3D ``Bench/eval/eval_vqa.py`` at 63e72005a2304eda74579870239bfc7b04b0edae, which
scores each generated answer on its own:

- closed (multiple choice): correct when the text ``answer_choice + "."`` occurs anywhere in the output —
  case-sensitive, so "B." counts, "b." and a bare "B" do not, and an output listing "A. ... B. ..." counts
  for both. M3D-VQA writes its choice letters in capitals, so medmvl's (lowercased) option letter is
  upper-cased. A closed question without an option letter (a yes/no question) is not scored here;
- open: HF ``evaluate`` metrics on ``[prediction.strip()]`` against ``[[answer.strip()]]``:
  ``bleu`` with ``max_order=1`` (13a tokens, no lowercasing, no smoothing: clipped unigram precision x
  brevity penalty ``exp(1 - ref_len / pred_len)`` when the prediction is not longer than the reference;
  an empty prediction makes the reference divide by zero, medmvl gives it 0), ``rouge`` ``rouge1``
  (``rouge_score``: lowercase alphanumeric tokens, no stemming, F-measure), ``meteor`` (NLTK,
  ``word_tokenize``d, alpha 0.9, beta 3, gamma 0.5; needs NLTK's wordnet data) and ``bertscore`` (a
  model: not run here).
"""

from __future__ import annotations

import math
from collections import Counter
from typing import Any

from medmvl.evaluation.predictions import PredictionRow
from medmvl.evaluation.protocols.base import Protocol, Reference
from medmvl.evaluation.protocols.libs import (
    missing_module,
    nltk_meteor,
    nltk_meteor_missing,
    rouge_n_f,
    tokenize_13a,
)

COMMIT = "63e72005a2304eda74579870239bfc7b04b0edae"
BERT_SCORE = "BERTScore needs a RoBERTa model download (bert-score); not computed"


def unigram_bleu(prediction: str, reference: str) -> float:
    """HF ``evaluate`` ``bleu`` with ``max_order=1`` for one pair (module docstring)."""
    pred, ref = tokenize_13a(prediction), tokenize_13a(reference)
    if not pred or not ref:
        return 0.0
    matches = sum((Counter(pred) & Counter(ref)).values())
    precision = matches / len(pred)
    ratio = len(pred) / len(ref)
    penalty = 1.0 if ratio > 1.0 else math.exp(1 - 1 / ratio)
    return precision * penalty if precision > 0 else 0.0


class M3dProtocol(Protocol):
    """M3D-Bench: "<choice>." in the output; BLEU-1 / ROUGE-1 / METEOR per answer (module docstring)."""

    name = "m3d"
    references = (Reference("BAAI-DCAI/M3D", "Bench/eval/eval_vqa.py", COMMIT),)
    columns = (
        ("choice_accuracy", "choice acc"),
        ("bleu1", "BLEU-1"),
        ("rouge1", "ROUGE-1"),
        ("meteor", "METEOR"),
        ("bert_f1", "BERTScore F1"),
    )

    def unavailable(self) -> dict[str, str]:
        """METEOR without NLTK's data, BLEU / ROUGE without their packages, BERTScore always."""
        out = {"bert_f1": BERT_SCORE}
        if why := nltk_meteor_missing():
            out["meteor"] = why
        if why := missing_module("sacrebleu"):
            out["bleu1"] = why
        if why := missing_module("rouge_score"):
            out["rouge1"] = why
        return out

    def score(self, row: PredictionRow) -> dict[str, Any]:
        """``choice_accuracy`` for questions with an option letter, the text metrics for open ones."""
        if row.kind != "open":
            if row.letter is None:
                return {}
            return {"choice_accuracy": float(f"{row.letter.upper()}." in row.prediction)}
        pred, ref = row.prediction.strip(), row.reference.strip()
        missing = self.unavailable()
        scores: dict[str, Any] = {"bleu1": None, "rouge1": None, "meteor": None, "bert_f1": None}
        if "bleu1" not in missing:
            scores["bleu1"] = unigram_bleu(pred, ref)
        if "rouge1" not in missing:
            scores["rouge1"] = rouge_n_f(ref, pred, "rouge1")
        if "meteor" not in missing:
            scores["meteor"] = nltk_meteor(ref, pred)
        return scores
