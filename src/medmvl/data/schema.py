"""Validate MedM-VL / LLaVA annotation JSON and turn it into ``Sample`` records.

A bad sample found at step 40,000 of a run costs hours; a bad sample found while reading the file costs
nothing. Every check here names the file, sample index and id, the field and what was expected, and
``check_annotations`` reports all problems of a file at once (for ``medmvl-data check``).

Format: a JSON list of objects with ``id``, ``conversations`` (alternating ``{"from": "human"|"gpt",
"value": str}``, starting with ``human``), optional ``image`` / ``image3d`` (a path or a list of paths,
one per ``<image>`` / ``<image3d>`` placeholder in the human turns) and, for inference files, ``answer``.
"""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

IMAGE_TOKEN = "<image>"
IMAGE3D_TOKEN = "<image3d>"


@dataclass(frozen=True)
class Placeholder:
    """What one image placeholder means in every layer: the one table the 2D and the 3D tower both use.

    Attributes:
        token: The placeholder in the text (and the special token the tokenizer adds).
        field: The annotation key listing its files (``image`` / ``image3d``).
        pixel_key: The batch key of its tensors (``pixel_values`` / ``pixel_values_3d``).
        spatial_dims: 2 (``[k, c, h, w]``) or 3 (``[k, c, d, h, w]``).
    """

    token: str
    field: str
    pixel_key: str
    spatial_dims: int

    @property
    def layout(self) -> str:
        """The tensor layout of its batch entry, for error messages."""
        return "[k, c, h, w]" if self.spatial_dims == 2 else "[k, c, d, h, w]"


# every tower of a MedVLM serves one of these; data, collators, model and generator loop over this table
PLACEHOLDERS = (
    Placeholder(IMAGE_TOKEN, "image", "pixel_values", 2),
    Placeholder(IMAGE3D_TOKEN, "image3d", "pixel_values_3d", 3),
)
PIXEL_KEYS = tuple(p.pixel_key for p in PLACEHOLDERS)
# the sample keys medmvl reads, plus metadata keys common in MedM-VL / LLaVA-Med / demo files (kept, unused)
KNOWN_KEYS = frozenset({"id", "conversations", "image", "image3d", "answer"})
METADATA_KEYS = frozenset(
    {
        "question_type",
        "answer_type",
        "choices",
        "dataset",
        "source",
        "source_index",
        "flipped",
        "modality",
        "metadata",
        # kept by the benchmark converters (medmvl.evaluation.benchmarks)
        "split",
        "q_lang",
        "answer_choice",
        "labels",
    }
)
Role = Literal["human", "gpt"]


@dataclass(frozen=True)
class Turn:
    """One conversation turn: ``role`` is ``human`` or ``gpt`` (as in the JSON), ``text`` its value."""

    role: Role
    text: str


@dataclass(frozen=True)
class Sample:
    """A validated annotation sample.

    Attributes:
        id: The sample id (ints in the JSON become strings).
        turns: Alternating human/gpt turns, starting with human.
        images: 2D image paths as written in the file, one per ``<image>``, in placeholder order.
        images3d: 3D volume paths, one per ``<image3d>``.
        index: Position of the sample in its file.
        source: The annotation file (``None`` for in-memory records).
        answer: Reference answer of inference files, if given.
    """

    id: str
    turns: tuple[Turn, ...]
    images: tuple[str, ...] = ()
    images3d: tuple[str, ...] = ()
    index: int = 0
    source: str | None = None
    answer: str | None = None

    def media(self, field: str) -> tuple[str, ...]:
        """The paths of annotation field ``field`` (``image`` or ``image3d``, a :class:`Placeholder` field)."""
        return {"image": self.images, "image3d": self.images3d}[field]

    def where(self) -> str:
        """``file: sample 3 (id '17')`` for error messages."""
        return f"{self.source or '<memory>'}: sample {self.index} (id {self.id!r})"


@dataclass(frozen=True)
class Problem:
    """One problem found in an annotation file.

    Attributes:
        source: Annotation file.
        index: Sample index (``None`` for file-level problems).
        id: Sample id when it could be read.
        field: The offending field, e.g. ``conversations[1].from``.
        message: What was expected and what was found.
        code: Short reason used to group problems (``turns``, ``image_count``, ``duplicate_id``, ...).
        severity: ``error`` (the sample is unusable) or ``warning`` (e.g. an unknown key).
    """

    source: str | None
    index: int | None
    id: str | None
    field: str
    message: str
    code: str
    severity: Literal["error", "warning"] = "error"

    def __str__(self) -> str:
        where = f"{self.source or '<memory>'}"
        if self.index is not None:
            where += f": sample {self.index}" + (f" (id {self.id!r})" if self.id is not None else "")
        return f"{where}, field {self.field!r}: {self.message}"


class AnnotationError(ValueError):
    """An annotation file or sample is invalid; the message names file, sample index and id, and field."""

    def __init__(self, message: str, problems: Sequence[Problem] = ()) -> None:
        super().__init__(message)
        self.problems = list(problems)


@dataclass
class _Checker:
    source: str | None
    index: int
    id: str | None = None
    problems: list[Problem] = field(default_factory=list)

    def error(self, field_: str, message: str, code: str) -> None:
        self.problems.append(Problem(self.source, self.index, self.id, field_, message, code))

    def warn(self, field_: str, message: str, code: str) -> None:
        self.problems.append(Problem(self.source, self.index, self.id, field_, message, code, "warning"))


def _bad_unicode(value: str) -> str | None:
    """Why ``value`` is not valid Unicode text (an unpaired surrogate, e.g. JSON ``"\\ud800"``), or None."""
    try:
        value.encode("utf-8")
    except UnicodeEncodeError as err:
        return (
            f"not valid Unicode text: unpaired surrogate {value[err.start]!r} at character {err.start} "
            "(a broken \\uXXXX escape); expected UTF-8 text"
        )
    return None


def parse_sample(
    raw: Any, index: int, *, source: str | None = None, require_answer: bool = True
) -> tuple[Sample | None, list[Problem]]:
    """Validate one JSON record.

    Args:
        raw: The decoded JSON object.
        index: Its position in the file.
        source: The file name, for messages.
        require_answer: Whether the conversation must end with a ``gpt`` turn (training files).

    Returns:
        ``(sample, problems)``; ``sample`` is ``None`` when any problem is an error.
    """
    check = _Checker(source, index)
    if not isinstance(raw, dict):
        check.error("<sample>", f"expected a JSON object, got {type(raw).__name__}", "not_object")
        return None, check.problems
    sid = raw.get("id")
    if isinstance(sid, (str, int)) and not isinstance(sid, bool) and str(sid) != "":
        check.id = str(sid)
        if bad := _bad_unicode(check.id):
            check.error("id", bad, "unicode")
    else:
        check.error("id", f"expected a non-empty string or integer, got {sid!r}", "id")
    for key in sorted(set(raw) - KNOWN_KEYS - METADATA_KEYS):
        check.warn(key, f"unknown key (known: {sorted(KNOWN_KEYS)}); ignored", "unknown_key")
    turns = _turns(raw.get("conversations"), check, require_answer)
    images = _paths(raw, "image", check)
    images3d = _paths(raw, "image3d", check)
    answer = raw.get("answer")
    if answer is not None and not isinstance(answer, str):
        check.error("answer", f"expected a string, got {type(answer).__name__}", "answer")
    elif answer is not None and (bad := _bad_unicode(answer)):
        check.error("answer", bad, "unicode")
    for (token, key), paths in zip(((p.token, p.field) for p in PLACEHOLDERS), (images, images3d)):
        for j, turn in enumerate(turns):
            if turn.role == "gpt" and token in turn.text:
                check.error(
                    f"conversations[{j}].value", f"{token} may only appear in human turns", "placeholder"
                )
        count = sum(t.text.count(token) for t in turns)
        if turns and paths is not None and count != len(paths):
            check.error(
                key,
                f"{len(paths)} path(s) but {count} {token} placeholder(s) in the text; expected equal",
                "image_count",
            )
    if any(p.severity == "error" for p in check.problems):
        return None, check.problems
    sample = Sample(
        check.id or "", tuple(turns), tuple(images or ()), tuple(images3d or ()), index, source, answer
    )
    return sample, check.problems


def _turns(conv: Any, check: _Checker, require_answer: bool) -> list[Turn]:
    if not isinstance(conv, list) or not conv:
        check.error("conversations", f"expected a non-empty list of turns, got {conv!r:.60}", "turns")
        return []
    turns: list[Turn] = []
    for j, turn in enumerate(conv):
        want = "human" if j % 2 == 0 else "gpt"
        if not isinstance(turn, dict):
            check.error(
                f"conversations[{j}]",
                f"expected an object with 'from' and 'value', got {turn!r:.60}",
                "turns",
            )
            continue
        role, value = turn.get("from"), turn.get("value")
        if role != want:
            check.error(
                f"conversations[{j}].from",
                f"expected {want!r} (turns alternate human/gpt, starting with human), got {role!r}",
                "turns",
            )
        if not isinstance(value, str) or not value.strip():
            check.error(
                f"conversations[{j}].value", f"expected a non-empty string, got {value!r:.60}", "turns"
            )
        elif bad := _bad_unicode(value):
            check.error(f"conversations[{j}].value", bad, "unicode")
        if role == want and isinstance(value, str):
            turns.append(Turn(want, value))
    if require_answer and len(conv) % 2 == 1:
        check.error(
            "conversations",
            "expected the last turn to be 'gpt' (training files need answers; "
            "inference files are read with require_answer=False)",
            "no_answer",
        )
    return turns


def _paths(raw: dict, key: str, check: _Checker) -> list[str] | None:
    value = raw.get(key)
    if value is None:
        return []
    if isinstance(value, str):
        value = [value]
    if not isinstance(value, list) or not all(isinstance(p, str) and p for p in value):
        check.error(key, f"expected a path or a list of non-empty path strings, got {value!r:.80}", "paths")
        return None
    for k, path in enumerate(value):
        if bad := _bad_unicode(path):
            check.error(f"{key}[{k}]", bad, "unicode")
            return None
    return value


def validate_records(
    records: Any, *, source: str | None = None, require_answer: bool = True
) -> tuple[list[Sample], list[Problem]]:
    """Validate a decoded annotation list; returns the valid samples and every problem found.

    Raises:
        AnnotationError: ``records`` is not a list (nothing in it can be trusted).
    """
    if not isinstance(records, list):
        raise AnnotationError(f"{source}: expected a JSON list of samples, got {type(records).__name__}")
    samples: list[Sample] = []
    problems: list[Problem] = []
    if not records:
        problems.append(
            Problem(source, None, None, "<file>", "the file holds no samples; expected at least one", "empty")
        )
    first_index: dict[str, int] = {}
    for i, raw in enumerate(records):
        sample, found = parse_sample(raw, i, source=source, require_answer=require_answer)
        problems.extend(found)
        if sample is None:
            continue
        if sample.id in first_index:
            problems.append(
                Problem(
                    source,
                    i,
                    sample.id,
                    "id",
                    f"duplicate id (first used by sample {first_index[sample.id]}); expected unique ids",
                    "duplicate_id",
                )
            )
            continue
        first_index[sample.id] = i
        samples.append(sample)
    return samples, problems


def _load_json(path: str | os.PathLike) -> Any:
    path = Path(path)
    if not path.is_file():
        raise AnnotationError(f"annotation file {str(path)!r} does not exist")
    data = path.read_bytes()
    try:
        text = data.decode("utf-8-sig")  # a UTF-8 byte-order mark is tolerated
    except UnicodeDecodeError as err:
        line = data.count(b"\n", 0, err.start) + 1
        raise AnnotationError(
            f"{path}: not UTF-8 text: byte 0x{data[err.start]:02x} at offset {err.start} (line {line}) "
            f"is not valid UTF-8; re-encode the file as UTF-8 (e.g. iconv -f latin1 -t utf-8)"
        ) from err
    if not text.strip():
        raise AnnotationError(f"{path}: empty file; expected a JSON list of samples")
    try:
        return json.loads(text)
    except json.JSONDecodeError as err:
        raise AnnotationError(f"{path}: not valid JSON ({err})") from err


def check_annotations(path: str | os.PathLike, *, require_answer: bool = True) -> list[Problem]:
    """Return every problem (errors and warnings) of an annotation file, in file order.

    Raises:
        AnnotationError: The file is missing, not JSON, or not a list.
    """
    return validate_records(_load_json(path), source=str(path), require_answer=require_answer)[1]


def read_annotations(
    path: str | os.PathLike, *, require_answer: bool = True
) -> tuple[list[Sample], list[Problem]]:
    """Read an annotation file; returns ``(valid samples, problems)`` without raising on sample errors.

    Callers decide: ``load_annotations`` raises on the first error, a dataset with ``on_error="skip"``
    drops the bad samples and reports them.
    """
    return validate_records(_load_json(path), source=str(path), require_answer=require_answer)


def load_annotations(path: str | os.PathLike, *, require_answer: bool = True) -> list[Sample]:
    """Read an annotation file and raise ``AnnotationError`` if any sample is invalid.

    The message names the first problem and counts the rest; ``error.problems`` holds them all.
    """
    samples, problems = read_annotations(path, require_answer=require_answer)
    raise_on_errors(problems)
    return samples


def raise_on_errors(problems: Sequence[Problem]) -> None:
    """Raise ``AnnotationError`` naming the first error-level problem (and how many more there are)."""
    errors = [p for p in problems if p.severity == "error"]
    if errors:
        more = f" ({len(errors) - 1} more problem(s) in this file)" if len(errors) > 1 else ""
        raise AnnotationError(f"{errors[0]}{more}", errors)
