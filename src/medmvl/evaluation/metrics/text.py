"""Free-text answer metrics: token F1 (SQuAD), BLEU-1..4 and ROUGE-L (torchmetrics) on normalised words.

Every metric here compares ``normalise(prediction).split()`` with ``normalise(reference).split()``
(``closed.normalise``: lowercase, numbers as single words — ``2.5``, ``-3``, ``1200``, ``3-5`` —, ``%``
and glued units as words of their own, other punctuation dropped, articles dropped), so "The liver." and
"liver", "5mm" and "5 mm" are the same answer for all of them and "5.2 cm" and "2.5 cm" are not. BLEU and ROUGE-L are torchmetrics' implementations fed those words
(identity normaliser, whitespace tokenizer), one question at a time: MedM-VL and LLaVA-Med both average
sentence scores over questions, and so does ``evaluation.report``. Definitions with worked examples:
docs/metrics.md.
"""

from __future__ import annotations

from collections import Counter

from medmvl.evaluation.metrics.closed import normalise


def words(text: str) -> list[str]:
    """The normalised words of ``text``."""
    return normalise(text).split()


def token_f1(prediction: str, reference: str) -> float:
    """SQuAD token F1 over the bags of normalised words.

    ``common`` = size of the multiset intersection; precision = common / len(prediction words), recall =
    common / len(reference words), F1 their harmonic mean; 0 when nothing is shared. When either side has
    no words, F1 is 1 if both are empty and 0 otherwise.
    """
    pred, ref = words(prediction), words(reference)
    if not pred or not ref:
        return float(pred == ref)
    common = sum((Counter(pred) & Counter(ref)).values())
    if common == 0:
        return 0.0
    precision, recall = common / len(pred), common / len(ref)
    return 2 * precision * recall / (precision + recall)


def bleu(prediction: str, reference: str, n: int) -> float:
    """Sentence BLEU-``n``: brevity penalty x geometric mean of the clipped 1..n-gram precisions.

    Uniform weights ``1/n``, no smoothing (torchmetrics ``bleu_score`` with ``n_gram=n``), so a prediction
    with fewer than ``n`` words, or without a shared ``k``-gram for some ``k <= n``, scores 0; an empty
    prediction or reference scores 0.
    """
    if n < 1:
        raise ValueError(f"BLEU order must be >= 1, got {n}")
    pred, ref = " ".join(words(prediction)), " ".join(words(reference))
    if not pred or not ref:
        return 0.0
    from torchmetrics.functional.text import bleu_score  # imports torch: only when open answers are scored

    return float(bleu_score([pred], [[ref]], n_gram=n))


def rouge_l(prediction: str, reference: str) -> float:
    """ROUGE-L F-measure: from the longest common subsequence of the word lists (torchmetrics ``rouge_score``).

    ``P = LCS / len(prediction)``, ``R = LCS / len(reference)``, ``F = 2PR / (P + R)``; 0 when either side
    is empty or nothing is shared.
    """
    pred, ref = " ".join(words(prediction)), " ".join(words(reference))
    if not pred or not ref:
        return 0.0
    from torchmetrics.functional.text import rouge_score

    scores = rouge_score(pred, ref, rouge_keys="rougeL", normalizer=_identity, tokenizer=str.split)
    return float(scores["rougeL_fmeasure"])


def _identity(text: str) -> str:
    return text
