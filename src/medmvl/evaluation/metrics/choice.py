"""Multiple-choice accuracy by option letter, as MedM-VL scores CT-RATE and M3D-VQA closed questions.

MedM-VL's CT-RATE script takes the first ``(x)`` of the reference ("(b) Mild recessions" -> ``(b)``) and
counts a prediction right when that string occurs in it; its M3D script does the same with the record's
``answer_choice`` letter followed by a period (``"B."``). medmvl reads both reference forms and is stricter
in one respect, so a model cannot score by listing every option: the prediction must mark *exactly one*
option, and it must be the reference's. Definitions with worked examples: docs/metrics.md.

Definitions:
    reference letter: the record's ``answer_choice`` (one letter, optionally written ``"(b)"`` or
        ``"B."``), else the letter of the first ``(x)`` in the reference answer (``x`` one ASCII letter);
        lowercased.
    option marks of a prediction: every ``(x)`` in it, plus its leading letter when the prediction starts
        (after whitespace) with one letter followed by ``.``, ``)``, ``:`` or the end of the text
        (``"B. Liver"``, ``"b)"``, ``"C"``); letters lowercased.
    choice_correct: the set of marked letters is exactly ``{reference letter}``.
"""

from __future__ import annotations

import re

_MARK = re.compile(r"\(([A-Za-z])\)")
_LEADING = re.compile(r"^\s*([A-Za-z])(?:[.):]|\s*$)")
_CHOICE_FIELD = re.compile(r"^\(?([A-Za-z])[).]?$")


def reference_letter(reference: str, answer_choice: str | None = None) -> str | None:
    """The reference option letter (lowercase), or ``None`` when neither form gives one.

    Raises:
        ValueError: ``answer_choice`` is given but is not a single option letter.
    """
    if answer_choice is not None:
        match = _CHOICE_FIELD.match(str(answer_choice).strip())
        if not match:
            raise ValueError(
                f"answer_choice must be one option letter such as 'B' or '(b)', got {answer_choice!r}"
            )
        return match.group(1).lower()
    match = _MARK.search(reference)
    return match.group(1).lower() if match else None


def starts_with_option(reference: str) -> bool:
    """Whether ``reference`` begins (after whitespace) with an option mark ``(x)``: CT-RATE's form."""
    return bool(re.match(r"\s*\([A-Za-z]\)", reference))


def marked_options(prediction: str) -> set[str]:
    """The lowercase option letters a prediction marks (see module docstring)."""
    letters = {m.lower() for m in _MARK.findall(prediction)}
    leading = _LEADING.match(prediction)
    if leading:
        letters.add(leading.group(1).lower())
    return letters


def choice_correct(prediction: str, letter: str) -> bool:
    """Whether ``prediction`` marks exactly one option and it is ``letter``."""
    return marked_options(prediction) == {letter.lower()}
