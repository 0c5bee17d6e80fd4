"""Score short VQA answers: closed questions (yes/no, pick one of the choices) and open answers.

Why hand-written: torchmetrics has BLEU/ROUGE/exact match over strings, but not the rule that matters for
generated closed answers — "Yes, it is." or "The liver." are right when the question offers "yes"/"no"
or "liver"/"heart" — and LLaVA-Med's open recall is a plain token-set ratio. Both definitions are below.

Definitions:
    normalise(text): lowercase; every punctuation character (``string.punctuation``, so also a trailing
        period) becomes a space; the text is split on whitespace; the articles ``a``, ``an``, ``the`` are
        dropped as whole words unless every word is an article (so an option ``"A"`` survives); the words
        are joined by one space. ``"The Liver."`` -> ``"liver"``, ``"an X-ray"`` -> ``"x ray"``,
        ``"A"`` -> ``"a"``. docs/metrics.md has every definition with worked examples.
    closed_correct(prediction, answer, choices): true when ``normalise(prediction) ==
        normalise(answer)``, or when ``choices`` are given and the prediction *names exactly one* choice
        and that choice is the answer. A choice is named when its normalised words occur in the normalised
        prediction as whole words; longer choices are matched first and a shorter choice inside an
        already matched longer one does not count again. Without ``choices``, a yes/no answer uses
        ``("yes", "no")`` as its choices. Naming two choices ("not the liver but the heart") is wrong.
    open exact match: ``normalise(prediction) == normalise(answer)``.
    open recall (LLaVA-Med): the fraction of the answer's distinct normalised words that occur among the
        prediction's words; 0 for an empty answer.
"""

from __future__ import annotations

import re
import string
from collections.abc import Sequence

_PUNCT = re.compile(f"[{re.escape(string.punctuation)}]")
ARTICLES = frozenset({"a", "an", "the"})
YES_NO = ("yes", "no")


def normalise(text: str) -> str:
    """Lowercase, punctuation to spaces, articles dropped, whitespace collapsed (see module docstring)."""
    words = _PUNCT.sub(" ", text.lower()).split()
    kept = [w for w in words if w not in ARTICLES]
    return " ".join(kept if kept else words)


def named_choices(prediction: str, choices: Sequence[str]) -> list[str]:
    """The choices (as given) that ``prediction`` names as whole words, longest first, without overlaps."""
    words = normalise(prediction).split()
    taken = [False] * len(words)
    named: list[str] = []
    for choice in sorted(choices, key=lambda c: -len(normalise(c).split())):
        target = normalise(choice).split()
        if not target:
            continue
        for start in range(len(words) - len(target) + 1):
            span = range(start, start + len(target))
            if words[start : start + len(target)] == target and not any(taken[k] for k in span):
                for k in span:
                    taken[k] = True
                if choice not in named:
                    named.append(choice)
    return named


def closed_correct(prediction: str, answer: str, choices: Sequence[str] | None = None) -> bool:
    """Whether a closed-question prediction is right (definition in the module docstring)."""
    pred, gold = normalise(prediction), normalise(answer)
    if pred == gold:
        return True
    if not choices and gold in YES_NO:
        choices = YES_NO
    if not choices:
        return False
    named = named_choices(prediction, choices)
    return len(named) == 1 and normalise(named[0]) == gold


def open_exact_match(prediction: str, answer: str) -> bool:
    """``normalise(prediction) == normalise(answer)``."""
    return normalise(prediction) == normalise(answer)


def open_recall(prediction: str, answer: str) -> float:
    """Fraction of the answer's distinct normalised words present in the prediction (LLaVA-Med recall)."""
    gold = set(normalise(answer).split())
    if not gold:
        return 0.0
    return len(gold & set(normalise(prediction).split())) / len(gold)


def mean(values: Sequence[float]) -> float | None:
    """Arithmetic mean, ``None`` for no values (so a missing metric is not reported as 0)."""
    return sum(values) / len(values) if values else None
