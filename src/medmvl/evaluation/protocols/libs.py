"""The text-metric libraries the reference scorers use, imported lazily, each with a check that says why
it cannot run here (so a protocol reports the metric as unavailable instead of 0).

- NLTK ``sentence_bleu`` (LLaVA-Med, Uni-Med, MedEvalKit) and ``meteor_score`` (M3D, through HF
  ``evaluate``'s ``meteor``, which needs NLTK's ``wordnet`` and ``punkt_tab`` data);
- ``rouge_score`` (M3D, through HF ``evaluate``'s ``rouge``);
- sacrebleu's 13a tokenizer (HF ``evaluate``'s ``bleu`` tokenises with a copy of it);
- ``pycocoevalcap`` BLEU / ROUGE-L / METEOR (CT2Rep; its METEOR runs ``meteor-1.5.jar`` with Java).

Install them with ``pip install medmvl[protocols]``.
"""

from __future__ import annotations

import importlib.util
import shutil
from functools import cache

INSTALL = "pip install 'medmvl[protocols]'"


def missing_module(module: str) -> str | None:
    """Why ``module`` cannot be imported (``None`` when it can)."""
    if importlib.util.find_spec(module) is None:
        return f"needs the Python package {module!r} ({INSTALL})"
    return None


@cache
def nltk_meteor_missing() -> str | None:
    """Why NLTK's METEOR cannot run (package or its wordnet / punkt_tab data missing), else ``None``."""
    if why := missing_module("nltk"):
        return why
    import nltk

    lacking = []
    for resource in ("corpora/wordnet", "tokenizers/punkt_tab"):
        try:
            nltk.data.find(resource)
        except LookupError:
            lacking.append(resource.split("/")[1])
    if lacking:
        return (
            f"needs NLTK data {', '.join(lacking)} (python -m nltk.downloader {' '.join(lacking)}; "
            "no PyPI package ships it)"
        )
    return None


@cache
def coco_meteor_missing() -> str | None:
    """Why pycocoevalcap's METEOR cannot run (package or ``java`` missing), else ``None``."""
    if why := missing_module("pycocoevalcap"):
        return why
    if shutil.which("java") is None:
        return "needs java on PATH (pycocoevalcap runs meteor-1.5.jar)"
    return None


def sentence_bleu(reference: list[str], hypothesis: list[str], weights: tuple[float, ...]) -> float:
    """NLTK ``sentence_bleu([reference], hypothesis, weights)``, default smoothing (none)."""
    import warnings

    from nltk.translate.bleu_score import sentence_bleu as bleu

    with warnings.catch_warnings():  # NLTK warns on every zero n-gram count
        warnings.simplefilter("ignore")
        return float(bleu([reference], hypothesis, weights=weights))


def tokenize_13a(text: str) -> list[str]:
    """sacrebleu's ``13a`` tokenisation (the one HF ``evaluate``'s ``bleu`` applies), split on spaces."""
    from sacrebleu.tokenizers.tokenizer_13a import Tokenizer13a

    return Tokenizer13a()(text).split()


def rouge_n_f(reference: str, prediction: str, kind: str = "rouge1") -> float:
    """``rouge_score`` F-measure of ``kind`` without stemming (HF ``evaluate``'s ``rouge`` defaults)."""
    from rouge_score import rouge_scorer

    return float(
        rouge_scorer.RougeScorer([kind], use_stemmer=False).score(reference, prediction)[kind].fmeasure
    )


def nltk_meteor(reference: str, prediction: str) -> float:
    """HF ``evaluate``'s ``meteor`` for one pair with a reference list: NLTK ``meteor_score`` of
    ``word_tokenize``d texts, alpha 0.9, beta 3, gamma 0.5."""
    from nltk import word_tokenize
    from nltk.translate.meteor_score import meteor_score

    return float(
        meteor_score([word_tokenize(reference)], word_tokenize(prediction), alpha=0.9, beta=3, gamma=0.5)
    )
