"""Read prediction files (what ``infer.py`` writes) into scoring rows: prediction, reference, kind, groups.

A prediction file is a JSON list (or JSONL) of records. For each record:

- **prediction**: its ``prediction`` field, else the value of its final ``gpt`` turn (``infer.py`` appends
  the generated turn there).
- **reference**: its ``answer`` field, else (when the prediction came from ``prediction``) its final
  ``gpt`` turn. A multi-turn record (``infer.py multi_turn=true``) carries ``reference_turns``, one
  reference (or ``null``) per human turn: each turn with a reference is its own row ``<id>#<turn>``, scored
  against the model's answer to that turn; a ``null`` last reference falls back to ``answer``.
- **kind**, the first rule that applies: ``answer_type`` (case-insensitive ``closed``, ``open``,
  ``choice`` or ``multiple_choice``); ``choice`` when the record has ``answer_choice`` or its reference
  starts with an option mark ``(x)``; ``closed`` when it has ``choices`` or a yes/no reference; else
  ``open``.
- **question type**: the first of ``type_keys`` (default ``question_type``, then ``type``) the record
  has, else ``(none)``. **dataset**: its ``dataset_key`` field (default ``dataset``), else the file's name
  without extension.

Every problem of every file (a missing or unreadable file, and each bad field of each record) is collected
and raised at once (``AnnotationError``), one line per problem naming file, record index, id and field
(the first ``MAX_LISTED`` problems, then how many more); nothing is skipped silently.

Held-out questions (``load_questions``: an annotation file not yet answered, as the demo report reads it)
become the same rows once answered (``question_rows``): the samples are validated as inference files, the
reference is the ``answer`` field, else the final ``gpt`` turn (left out of the prompt), and kind, question
type and dataset follow the rules above.
"""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Literal

from medmvl.data.schema import AnnotationError, Sample, validate_records
from medmvl.evaluation.metrics.choice import reference_letter, starts_with_option
from medmvl.evaluation.metrics.closed import YES_NO, normalise

Kind = Literal["closed", "choice", "open"]
KINDS: tuple[Kind, ...] = ("closed", "choice", "open")
_ANSWER_TYPES: dict[str, Kind] = {
    "closed": "closed",
    "open": "open",
    "choice": "choice",
    "multiple_choice": "choice",
}
NO_TYPE = "(none)"
MAX_LISTED = 50
"""The most problems one error message lists; the rest are counted."""


@dataclass(frozen=True)
class PredictionRow:
    """One scored question.

    Attributes:
        id: Record id (``<id>#<turn>`` for a turn of a multi-turn record, turns counted from 1).
        prediction: The model's answer.
        reference: The reference answer.
        kind: ``closed``, ``choice`` or ``open``.
        question_type: Group for the per-type breakdown.
        dataset: Group for the per-dataset breakdown.
        choices: Offered choices of a closed question (``None``: yes/no or free).
        letter: Reference option letter of a ``choice`` question.
    """

    id: str
    prediction: str
    reference: str
    kind: Kind
    question_type: str
    dataset: str
    choices: tuple[str, ...] | None = None
    letter: str | None = None


@dataclass(frozen=True)
class Question:
    """A held-out question of an annotation file, to answer and then score as a ``PredictionRow``.

    Attributes:
        sample: The validated sample, what a generator answers (its final ``gpt`` turn, if any, is the
            reference and is left out of the prompt).
        row: Its scoring row with an empty prediction: id, reference, kind, question type, dataset, choices
            and option letter, by the rules of prediction files (``question_rows`` adds the predictions).
        record: The raw JSON record.
    """

    sample: Sample
    row: PredictionRow
    record: dict[str, Any]


def read_records(path: str | os.PathLike, *, what: str = "prediction") -> list[Any]:
    """A JSON list, or a JSONL file (one record per line; blank lines ignored); ``what`` names the file."""
    path = Path(path)
    if not path.is_file():
        raise AnnotationError(f"{what} file {str(path)!r} does not exist")
    text = path.read_text(encoding="utf-8")
    if path.suffix == ".jsonl":
        records = []
        for line_no, line in enumerate(text.splitlines(), 1):
            if line.strip():
                try:
                    records.append(json.loads(line))
                except json.JSONDecodeError as err:
                    raise AnnotationError(f"{path}: line {line_no} is not valid JSON ({err})") from err
        return records
    try:
        records = json.loads(text)
    except json.JSONDecodeError as err:
        raise AnnotationError(f"{path}: not valid JSON ({err})") from err
    if not isinstance(records, list):
        raise AnnotationError(f"{path}: expected a JSON list of records, got {type(records).__name__}")
    return records


def load_predictions(
    paths: Sequence[str | os.PathLike],
    *,
    type_keys: Sequence[str] = ("question_type", "type"),
    dataset_key: str = "dataset",
    dataset_names: Sequence[str] | None = None,
) -> list[PredictionRow]:
    """Read every file into rows (file order, record order); raises once with every problem found.

    ``dataset_names`` gives each file's fallback dataset name (default: the file name without extension).
    """
    rows: list[PredictionRow] = []
    problems: list[str] = []
    names = list(dataset_names) if dataset_names is not None else [Path(p).stem for p in paths]
    if len(names) != len(paths):
        raise ValueError(f"{len(names)} dataset names for {len(paths)} prediction files")
    for path, name in zip(paths, names):
        try:
            records = read_records(path)
        except AnnotationError as err:  # a missing or unreadable file: report it with the others
            problems.append(str(err))
            continue
        for index, record in enumerate(records):
            where = f"{path}: record {index}"
            if isinstance(record, dict) and record.get("id") is not None:
                where += f" (id {str(record['id'])!r})"
            found, errors = _rows(record, name, type_keys, dataset_key)
            problems += [f"{where}: {e}" for e in errors]
            rows += found
    _raise_problems(problems, str(paths[0]) if len(paths) == 1 else "prediction files")
    return rows


def load_questions(
    path: str | os.PathLike,
    *,
    type_keys: Sequence[str] = ("question_type", "type"),
    dataset_key: str = "dataset",
    no_type: str = NO_TYPE,
) -> list[Question]:
    """Read the held-out questions of an annotation file (a JSON list or JSONL), in file order.

    Samples are validated as inference files (a final ``gpt`` turn is optional). A question's reference is
    its ``answer`` field, else its final ``gpt`` turn; kind, question type (``no_type`` when the record has
    none of ``type_keys``) and dataset (``dataset_key``, else the file's name without extension) follow the
    rules of prediction files (module docstring).

    Raises:
        AnnotationError: The file is missing or not JSON; or, all collected at once and in sample order,
            invalid samples (every schema problem) and samples without a reference (neither ``answer`` nor
            a final ``gpt`` turn) or with an invalid ``answer_type``, ``choices`` or option letter. Every
            line names the file, sample index and id.
    """
    records = read_records(path, what="annotation")
    samples, found = validate_records(records, source=str(path), require_answer=False)
    problems: list[tuple[int, str]] = [
        (-1 if p.index is None else p.index, str(p)) for p in found if p.severity == "error"
    ]
    questions: list[Question] = []
    for sample in samples:
        record = records[sample.index]
        reference = sample.answer
        if reference is None and sample.turns[-1].role == "gpt":
            reference = sample.turns[-1].text
        if reference is None:
            problems.append(
                (sample.index, f"{sample.where()}: no reference answer (no 'answer' and no final gpt turn)")
            )
            continue
        qtype, dataset = _groups(record, Path(path).stem, type_keys, dataset_key, no_type)
        errors: list[str] = []
        row = _row(record, sample.id, "", reference, qtype, dataset, errors)
        problems += [(sample.index, f"{sample.where()}: {e}") for e in errors]
        if row is not None:
            questions.append(Question(sample, row, record))
    _raise_problems([message for _, message in sorted(problems, key=lambda p: p[0])], str(path))
    return questions


def question_rows(questions: Sequence[Question], predictions: Sequence[str]) -> list[PredictionRow]:
    """The scoring rows of ``questions`` answered by ``predictions`` (one per question, same order).

    Raises:
        ValueError: The counts differ.
    """
    if len(questions) != len(predictions):
        raise ValueError(f"{len(predictions)} predictions for {len(questions)} questions")
    return [replace(q.row, prediction=p) for q, p in zip(questions, predictions)]


def format_problems(problems: Sequence[str], where: str, limit: int = MAX_LISTED) -> str:
    """One problem as it is; several as ``"<n> problem(s) in <where>:"`` and one indented line each.

    At most ``limit`` lines are listed, then ``"... and <k> more problem(s) not listed (<n> in all)"``.
    """
    if len(problems) == 1:
        return problems[0]
    lines = [f"{len(problems)} problem(s) in {where}:", *(f"  {p}" for p in problems[:limit])]
    if len(problems) > limit:
        lines.append(f"  ... and {len(problems) - limit} more problem(s) not listed ({len(problems)} in all)")
    return "\n".join(lines)


def _raise_problems(problems: Sequence[str], where: str) -> None:
    if problems:
        raise AnnotationError(format_problems(problems, where))


def answer_kind(record: dict[str, Any], reference: str) -> Kind:
    """The kind of a record's question (rules in the module docstring)."""
    answer_type = record.get("answer_type")
    if answer_type is not None:
        kind = _ANSWER_TYPES.get(str(answer_type).lower())
        if kind is None:
            raise ValueError(
                f"field 'answer_type': expected one of {sorted(_ANSWER_TYPES)}, got {answer_type!r}"
            )
        return kind
    if record.get("answer_choice") is not None or starts_with_option(reference):
        return "choice"
    if record.get("choices") or normalise(reference) in YES_NO:
        return "closed"
    return "open"


def _rows(
    record: Any, stem: str, type_keys: Sequence[str], dataset_key: str
) -> tuple[list[PredictionRow], list[str]]:
    """The rows of a record and every problem of it (no rows when there is one)."""
    if not isinstance(record, dict):
        return [], [f"expected a JSON object, got {type(record).__name__}"]
    errors: list[str] = []
    if record.get("id") is None:
        errors.append("field 'id': missing")
    rid = str(record.get("id"))
    qtype, dataset = _groups(record, stem, type_keys, dataset_key, NO_TYPE)
    rows = []
    for turn, pred, ref in _pairs(record, errors):
        row = _row(record, f"{rid}#{turn}" if turn else rid, pred, ref, qtype, dataset, errors)
        rows.append(row)
    errors = list(dict.fromkeys(errors))  # a record-level problem is named once, not once per turn
    return ([] if errors else rows), errors


def _groups(
    record: dict[str, Any], stem: str, type_keys: Sequence[str], dataset_key: str, no_type: str
) -> tuple[str, str]:
    """``(question type, dataset)`` of a record."""
    qtype = next((str(record[k]) for k in type_keys if record.get(k) is not None), no_type)
    return qtype, str(record.get(dataset_key) or stem)


def _pairs(record: dict[str, Any], errors: list[str]) -> list[tuple[int, str, str]]:
    """``(turn or 0, prediction, reference)`` for each scored question of a record; problems to ``errors``."""
    turns = record.get("conversations") or []
    answers = [t.get("value") for t in turns if isinstance(t, dict) and t.get("from") == "gpt"]
    refs = record.get("reference_turns")
    if refs is not None:
        if not isinstance(refs, list) or len(refs) != len(answers):
            errors.append(
                f"field 'reference_turns': expected a list with one reference (or null) per answered turn "
                f"({len(answers)}), got {refs!r:.80}"
            )
            return []
        refs = list(refs)
        if refs and refs[-1] is None and record.get("answer") is not None:
            refs[-1] = record["answer"]
        pairs = [
            (k + 1, _text(a, "conversations", errors), _text(r, "reference_turns", errors))
            for k, (a, r) in enumerate(zip(answers, refs))
            if r is not None
        ]
        if not pairs:
            errors.append("no reference answer: every entry of 'reference_turns' is null and no 'answer'")
        return pairs
    prediction = None
    if record.get("prediction") is not None:
        prediction = _text(record["prediction"], "prediction", errors)
        reference = record.get("answer", answers[-1] if answers else None)
    else:
        last = turns[-1] if turns else None
        if not isinstance(last, dict) or last.get("from") != "gpt":
            errors.append("no prediction: no 'prediction' field and the last conversation turn is not 'gpt'")
        else:
            prediction = _text(last.get("value"), "conversations[-1].value", errors)
        reference = record.get("answer")
    if reference is None:
        errors.append("no reference answer: field 'answer' is missing")
        return []
    reference = _text(reference, "answer", errors)
    return [] if prediction is None else [(0, prediction, reference)]


def _row(
    record: dict[str, Any],
    rid: str,
    prediction: str,
    reference: str,
    qtype: str,
    dataset: str,
    errors: list[str],
) -> PredictionRow | None:
    """The scoring row, or ``None`` with every problem (kind, choices, option letter) added to ``errors``."""
    before = len(errors)
    kind: Kind | None = None
    try:
        kind = answer_kind(record, reference)
    except ValueError as err:
        errors.append(str(err))
    choices = record.get("choices")
    if choices is not None and (
        not isinstance(choices, list) or not all(isinstance(c, str) for c in choices)
    ):
        errors.append(f"field 'choices': expected a list of strings, got {choices!r:.80}")
    letter = None
    if kind == "choice":
        try:
            letter = reference_letter(reference, record.get("answer_choice"))
        except ValueError as err:
            errors.append(f"field 'answer_choice': {err}")
        else:
            if letter is None:
                errors.append(
                    "multiple-choice question without an option letter: no 'answer_choice' and no '(x)' in "
                    f"the reference {reference!r:.80}"
                )
    if len(errors) > before or kind is None:
        return None
    return PredictionRow(
        rid, prediction, reference, kind, qtype, dataset, tuple(choices) if choices else None, letter
    )


def _text(value: Any, field: str, errors: list[str]) -> str:
    """``value`` when it is a string; else ``""`` and a problem naming ``field`` in ``errors``."""
    if not isinstance(value, str):
        errors.append(f"field {field!r}: expected a string, got {value!r:.60}")
        return ""
    return value
