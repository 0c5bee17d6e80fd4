"""Score short VQA answers: closed questions (yes/no, pick one of the choices) and open answers.

Why hand-written: torchmetrics has BLEU/ROUGE/exact match over strings, but not the rule that matters for
generated closed answers — "Yes, it is." or "The liver." are right when the question offers "yes"/"no"
or "liver"/"heart" — and LLaVA-Med's open recall is a plain token-set ratio. Both definitions are below.

Definitions:
    normalise(text): the text's words joined by one space. Words: lowercase; ``−`` (U+2212) and ``–``
        (U+2013) read as ``-``, ``×`` as ``x``; then, left to right,
        - a *number* is one word: digits with an optional decimal part (``2.5``, ``.5``), thousands
          separators (a comma before each group of exactly three digits, ``1,200``), a sign ``-``/``+``
          at the start of the text, after whitespace or after ``([{=:`` (``-3``), and a range or ratio
          (two or more numbers joined by ``-`` or ``/`` with or without spaces, or by ``:`` without:
          ``3-5``, ``3 - 5``, ``120/80``, ``1:2``). It is written canonically: no thousands separators,
          no ``+``, no leading zeros, no trailing decimal zeros, ``0`` before a bare point, ``-0`` as
          ``0``, ranges without spaces (``"1,200"`` -> ``1200``, ``"2.50"`` -> ``2.5``, ``"3 - 5"`` ->
          ``3-5``);
        - ``%`` is a word of its own (``"45%"`` -> ``45 %``), and so are the comparisons ``<``, ``>``,
          ``≤`` (also ``<=``) and ``≥`` (also ``>=``);
        - a run of letters (and other characters that are neither whitespace nor ASCII punctuation)
          right after a number is a word of its own, the unit: ``"5mm"`` -> ``5 mm``;
        - any other word is a run of such characters that does not start with a digit, with digits inside
          it after a letter or digit (``t2``, ``b12``);
        - every other ASCII punctuation character (``string.punctuation``; a sentence's ``.``, ``,``, ``?``;
          a hyphen between letters) separates words and is dropped.
        The articles ``a``, ``an``, ``the`` are then dropped as whole words unless every word is an
        article (so an option ``"A"`` survives). ``"The Liver."`` -> ``"liver"``, ``"an X-ray"`` ->
        ``"x ray"``, ``"A"`` -> ``"a"``, ``"5.2 cm"`` -> ``"5.2 cm"``, ``"-3 HU"`` -> ``"-3 hu"``.
        docs/metrics.md has every definition with worked examples.
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

ARTICLES = frozenset({"a", "an", "the"})
YES_NO = ("yes", "no")

_UNICODE = str.maketrans({"\u2212": "-", "\u2013": "-", "\u00d7": "x"})
_P = re.escape(string.punctuation)  # for character classes
# an unsigned number: digits, thousands groups (exactly 3 digits, not followed by a 4th), decimals; or ".5"
_NUMBER = r"(?:\d+(?:,\d{3}(?!\d))*(?:\.\d+)?|(?<![\w.])\.\d+)"
_SIGN = r"(?:(?<![^\s(\[{=:])[+-])?"  # a sign only at the start, after whitespace or one of ([{=:
_TOKEN = re.compile(
    rf"(?P<number>{_SIGN}{_NUMBER}(?:(?:\s*[-/]\s*|:)[+-]?{_NUMBER})*)"
    r"|(?P<compare><=|>=|[<>%\u2264\u2265])"
    rf"|(?P<word>(?<=\d)[^\s{_P}\d]+|[^\s{_P}\d](?:[^\s{_P}\d]|(?<=[^\W_])\d)*)"
)
_FIRST = re.compile(rf"([+-]?)({_NUMBER})")
_NEXT = re.compile(rf"\s*([-/:])\s*([+-]?)({_NUMBER})")
_COMPARE = {"<=": "\u2264", ">=": "\u2265"}


def _canonical_number(text: str) -> str:
    """``"1,200"`` -> ``1200``, ``"+2.50"`` -> ``2.5``, ``"3 - -5"`` -> ``3--5`` (module docstring)."""
    first = _FIRST.match(text)
    parts = [("", first[1], first[2]), *_NEXT.findall(text, first.end())]
    out = []
    for joint, sign, digits in parts:
        whole, _, frac = digits.replace(",", "").partition(".")
        frac = frac.rstrip("0")
        value = (whole.lstrip("0") or "0") + ("." + frac if frac else "")
        out.append(joint + ("-" if sign == "-" and value != "0" else "") + value)
    return "".join(out)


def _words(text: str) -> list[str]:
    """The words of ``text`` before articles are dropped: numbers, ``%`` and comparisons, words."""
    found = []
    for match in _TOKEN.finditer(text.lower().translate(_UNICODE)):
        if match["number"] is not None:
            found.append(_canonical_number(match["number"]))
        elif match["compare"] is not None:
            found.append(_COMPARE.get(match["compare"], match["compare"]))
        else:
            found.append(match["word"])
    return found


def normalise(text: str) -> str:
    """The words of ``text`` (numbers whole), articles dropped, joined by one space (module docstring)."""
    words = _words(text)
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
