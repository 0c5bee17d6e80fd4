"""MedEvalKit's rule-based answer parsing: yes/no judgement and option letters.

Reference: alibaba-damo-academy/MedEvalKit ``utils/utils.py`` (``parse_response``, ``judge_judgement``,
``judge_multi_choice``, ``judge_open_end_vqa``, ``calculate_f1``) and ``utils/VQA_RAD/VQA_RAD.py``
(``cal_metrics``) at 9b12e3b34232a8779cc1275417bf4f72f03d28e0; ``extract_boxed_content`` from mathruler
0.1.0 (the last ``\\boxed{...}``, braces balanced, stripped; the string ``"None"`` when there is none).

- parse: lowercase; the boxed content if any, else the text inside ``<answer>...</answer>``; then, for
  each marker "**answer**:", "**answer**", "*answer*:", "**answer:**", "answer is", "answer:",
  "答案:", "final answer", "final answer is" in turn, the text after its last occurrence.
- yes/no (reference "yes" or "no"): after parsing and deleting newlines and periods, right when exactly
  one of the *substrings* "yes" / "no" occurs and the reference occurs in it — "nodule" and "not" contain
  "no", so "not enlarged, yes" is wrong and "nodule present" answers "no";
- multiple choice (options given): the answer part (first paragraph when it is a letter, else the last
  paragraph's text before its first period when that is one; parsed; up to the first period; after the
  last colon) right when it equals the reference (letter or option text), is the letter of the
  reference option, or is the option text of the reference letter. Anything else falls back to the
  option most similar to the whole answer (``difflib`` ratio; the first on ties, and option A when no
  option shares a character);
- open: exact match of the parsed answer; BLEU-1..4 (NLTK, tokens of ``lower().replace(".", " .")``
  split on single spaces, so double spaces give empty tokens); ``calculate_f1`` over word sets, whose
  ``(f1, precision, recall)`` the caller unpacks as ``(precision, recall, f1)``: the "precision" it
  reports is the F1, "recall" the precision and "f1" the recall. ROUGE (the ``rouge`` package) is not
  computed.
"""

from __future__ import annotations

import difflib
from collections.abc import Sequence
from typing import Any

from medmvl.evaluation.predictions import PredictionRow
from medmvl.evaluation.protocols.base import Protocol, Reference
from medmvl.evaluation.protocols.libs import missing_module, sentence_bleu

COMMIT = "9b12e3b34232a8779cc1275417bf4f72f03d28e0"
MARKERS = (
    "**answer**:", "**answer**", "*answer*:", "**answer:**", "answer is", "answer:", "答案:",
    "final answer", "final answer is",
)  # fmt: skip


def boxed(text: str) -> str:
    """mathruler's ``extract_boxed_content``: the last ``\\boxed{...}``'s content, else ``"None"``."""
    start = text.rfind("\\boxed{")
    if start == -1:
        return "None"
    content = text[start + len("\\boxed{") :]
    depth = 0
    for i, char in enumerate(content):
        depth += {"{": 1, "}": -1}.get(char, 0)
        if depth == -1:
            return content[:i].strip()
    return "None"


def tagged(text: str, tag: str) -> str:
    """The reference's ``extract(text, tag)``: the text of every ``<tag>...</tag>`` joined, else ``text``."""
    parts, start = [], text.find(f"<{tag}>")
    while start != -1:
        end = text.find(f"</{tag}>", start + len(tag) + 2)
        if end == -1:
            break
        parts.append(text[start + len(tag) + 2 : end])
        start = text.find(f"<{tag}>", end + len(tag) + 3)
    joined = " ".join(parts).strip()
    return joined or text


def parse_response(response: str) -> str:
    """``parse_response`` (module docstring)."""
    response = response.lower()
    if "boxed" in response:
        response = boxed(response)
    elif "<answer>" in response:
        response = tagged(response, "answer")
    for marker in MARKERS:
        if marker in response:
            response = response.split(marker)[-1]
    return response


def judge_judgement(answer: str, response: str) -> bool:
    """The yes/no rule: exactly one of the substrings "yes"/"no", and the answer inside."""
    response = parse_response(response).replace("\n", "").replace(".", "")
    return (("yes" in response) ^ ("no" in response)) and answer.lower() in response


def judge_multi_choice(choices: Sequence[str], answer: str, response: str) -> bool:
    """The option rule (module docstring); ``answer`` is a letter or an option's text."""
    alphas = [chr(ord("a") + i) for i in range(len(choices))]
    response = response.lower()
    paragraphs = response.split("\n\n")
    if paragraphs[0] in alphas:
        response = paragraphs[0]
    elif paragraphs[-1].split(".")[0] in alphas:
        response = paragraphs[-1].split(".")[0]
    response = parse_response(response).strip().lower().replace("\n", "")
    options = [c.lower() for c in choices]
    part = response.split(".")[0].split(":")[-1]
    answer = answer.strip().lower()
    if part == answer:
        return True
    if part in alphas:
        return options[ord(part) - ord("a")] == answer
    if part in options:
        return answer in alphas and part == options[ord(answer) - ord("a")]
    best, best_ratio = 0, 0.0
    for i, option in enumerate(options):
        ratio = difflib.SequenceMatcher(None, option, response).ratio()
        if ratio > best_ratio:
            best, best_ratio = i, ratio
    return alphas[best] == answer or options[best] == answer


def _tokens(text: str) -> list[str]:
    return text.lower().replace(".", " .").split(" ")


def set_f1(prediction: str, reference: str) -> tuple[float, float, float]:
    """``calculate_f1``: ``(f1, precision, recall)`` over lowercase word sets (0s when nothing is shared).

    When either side has no words the reference returns a bare 0 that the caller cannot unpack (the run
    stops); medmvl gives ``(0, 0, 0)``.
    """
    pred, ref = set(prediction.lower().split()), set(reference.lower().split())
    if not pred or not ref:
        return 0.0, 0.0, 0.0
    common = len(pred & ref)
    precision, recall = common / len(pred), common / len(ref)
    if precision + recall == 0:
        return 0.0, 0.0, 0.0
    return 2 * precision * recall / (precision + recall), precision, recall


class MedEvalKitProtocol(Protocol):
    """MedEvalKit: yes/no and option-letter parsing, open exact match / BLEU / set F1 (module docstring)."""

    name = "medevalkit"
    references = (
        Reference("alibaba-damo-academy/MedEvalKit", "utils/utils.py", COMMIT),
        Reference("alibaba-damo-academy/MedEvalKit", "utils/VQA_RAD/VQA_RAD.py", COMMIT),
        Reference("hiyouga/MathRuler", "mathruler/grader.py extract_boxed_content", "v0.1.0"),
    )
    columns = (
        ("yes_no_accuracy", "yes/no acc"),
        ("choice_accuracy", "choice acc"),
        ("open_exact_match", "open EM"),
        ("bleu1", "BLEU-1"),
        ("reported_f1", "F1 (as reported)"),
    )

    def unavailable(self) -> dict[str, str]:
        """BLEU needs NLTK; ROUGE is never computed."""
        out = {"rouge": "MedEvalKit's ROUGE uses the 'rouge' package; not computed"}
        if why := missing_module("nltk"):
            out.update({f"bleu{n}": why for n in range(1, 5)})
        return out

    def score(self, row: PredictionRow) -> dict[str, Any]:
        """Yes/no rule for yes/no references, option rule where options are given, else open metrics."""
        answer = row.reference.lower().strip()
        if row.choices and (row.kind == "choice" or answer not in ("yes", "no")):
            target = row.letter if row.kind == "choice" and row.letter else row.reference
            return {"choice_accuracy": float(judge_multi_choice(row.choices, target, row.prediction))}
        response = row.prediction
        if boxed(response) != "None":
            response = boxed(response)
        elif "<answer>" in response:
            response = tagged(response, "answer")
        response = response.lower().strip()
        if answer in ("yes", "no"):
            return {"yes_no_accuracy": float(judge_judgement(answer, response))}
        parsed = parse_response(response)
        f1, precision, recall = set_f1(parsed, answer)
        scores: dict[str, Any] = {
            "open_exact_match": float(parsed == answer),
            "reported_precision": f1,
            "reported_recall": precision,
            "reported_f1": recall,
        }
        no_nltk = missing_module("nltk") is not None
        for n in range(1, 5):
            weights = tuple([1 / n] * n)
            scores[f"bleu{n}"] = None if no_nltk else sentence_bleu(_tokens(answer), _tokens(parsed), weights)
        return scores
