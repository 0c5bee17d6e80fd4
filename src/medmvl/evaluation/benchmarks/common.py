"""Shared pieces of the benchmark converters: problems, media placement, record building, CSV/JSON reading.

Every converter reads a release's own files and yields medmvl annotation records (LLaVA / MedM-VL
format). A row that cannot become a sample (a missing question, answer or image, an image file that is
absent, an unknown answer type) is a :class:`RowProblem` naming the file, the row and the field; the
caller raises them all at once or, with ``skip_bad``, counts and reports them. Nothing is dropped
silently.

Rows are numbered from 0 in the order the release stores them: a JSON list's items, a CSV's data rows after
the header (``line`` adds the CSV line number), a parquet file's rows.

Media are copied (or symlinked with ``link=True``) into ``<out>/images`` (2D) and ``<out>/volumes`` (3D)
under their release-relative paths, never moved; the records' ``image`` / ``image3d`` paths are relative to
those folders (``data.image_dir`` / ``data.image3d_dir`` in training and ``--image-dir`` / ``--image3d-dir``
of ``medmvl-data check``).
"""

from __future__ import annotations

import csv
import json
import os
import shutil
from dataclasses import asdict, dataclass, field
from pathlib import Path, PurePosixPath
from typing import Any, Literal

IMAGE_DIR = "images"
IMAGE3D_DIR = "volumes"
LETTERS = "ABCDEFGH"
CHOICE_INSTRUCTION = "Answer with the option's letter from the given choices directly."
MediaKind = Literal["image", "image3d"]
_TOKENS = {"image": "<image>", "image3d": "<image3d>"}


@dataclass(frozen=True)
class RowProblem:
    """One release row that could not become a sample.

    Attributes:
        file: The release file holding the row.
        row: Its 0-based position among the file's records (``None``: the whole file).
        field: The release field (column or JSON key) at fault.
        message: What was expected and what was found.
        line: The CSV line number of the row, when the file is a CSV.
    """

    file: str
    row: int | None
    field: str
    message: str
    line: int | None = None

    def __str__(self) -> str:
        where = self.file
        if self.row is not None:
            where += f": row {self.row}" + (f" (line {self.line})" if self.line is not None else "")
        return f"{where}, field {self.field!r}: {self.message}"


class ConversionError(ValueError):
    """A release cannot be converted; ``problems`` lists every bad row (empty for a whole-release error)."""

    def __init__(self, message: str, problems: list[RowProblem] | None = None) -> None:
        super().__init__(message)
        self.problems = list(problems or [])


@dataclass
class Context:
    """What a converter writes into while it reads a release: problems, placed media, report notes.

    Attributes:
        out: The output folder.
        link: Symlink media instead of copying them.
        problems: Every bad row found so far.
        notes: Extra report entries (e.g. rows left out by a language filter).
    """

    out: Path
    link: bool = False
    problems: list[RowProblem] = field(default_factory=list)
    notes: dict[str, Any] = field(default_factory=dict)
    _placed: set[Path] = field(default_factory=set)

    def problem(self, file: Path | str, row: int | None, field_: str, message: str, line: int | None = None):
        """Record a bad row."""
        self.problems.append(RowProblem(str(file), row, field_, message, line))

    def locate(
        self,
        file: Path | str,
        row: int | None,
        field_: str,
        rel: str | None,
        bases: list[Path],
        line: int | None = None,
        what: str = "image",
    ) -> Path | None:
        """The media file ``rel`` names under the first of ``bases`` holding it; a row problem when none
        does (``None`` back either way when ``rel`` is empty: the missing field is reported elsewhere)."""
        if not rel:
            return None
        found = find_media(rel, bases)
        if found is None:
            where = [str(b) for b in bases]
            self.problem(file, row, field_, f"{what} {rel} not found under {where}", line)
        return found

    def media_dir(self, kind: MediaKind) -> Path:
        """``<out>/images`` or ``<out>/volumes``."""
        return self.out / (IMAGE_DIR if kind == "image" else IMAGE3D_DIR)

    def place(self, source: Path, rel: str, kind: MediaKind) -> str:
        """Copy (or symlink) ``source`` to ``<media dir>/<rel>`` once; returns ``rel``.

        Raises:
            ValueError: ``rel`` leaves the media folder (absolute or with ``..``).
        """
        dest = self.media_dir(kind) / safe_rel(rel)
        if dest not in self._placed:
            dest.parent.mkdir(parents=True, exist_ok=True)
            if dest.is_symlink() or dest.exists():
                dest.unlink()
            if self.link:
                os.symlink(source.resolve(), dest)
            else:
                shutil.copyfile(source, dest)
            self._placed.add(dest)
        return rel

    def place_bytes(self, data: bytes, rel: str, kind: MediaKind) -> str:
        """Write ``data`` to ``<media dir>/<rel>`` once (media stored inside the release's files)."""
        dest = self.media_dir(kind) / safe_rel(rel)
        if dest not in self._placed:
            dest.parent.mkdir(parents=True, exist_ok=True)
            dest.write_bytes(data)
            self._placed.add(dest)
        return rel


def safe_rel(rel: str) -> Path:
    """``rel`` as a relative path inside a folder.

    Raises:
        ValueError: ``rel`` is empty, absolute or contains ``..``.
    """
    posix = PurePosixPath(rel.replace("\\", "/"))
    if not rel.strip() or posix.is_absolute() or ".." in posix.parts:
        raise ValueError(f"path {rel!r} must be relative and stay inside its folder")
    return Path(*posix.parts)


def text(value: Any) -> str | None:
    """A release cell as stripped text; ``None`` when missing or blank (numbers become their text)."""
    if value is None or isinstance(value, bool):
        return None
    if isinstance(value, float):
        if value != value:  # NaN: an empty cell read by a dataframe library
            return None
        value = int(value) if value.is_integer() else value
    value = str(value).strip()
    return value or None


def find_media(rel: str, bases: list[Path]) -> Path | None:
    """The first existing ``base / rel`` (``None`` when it is in none of ``bases``)."""
    for base in bases:
        path = base / rel
        if path.is_file():
            return path
    return None


def human_turn(kind: MediaKind, question: str) -> str:
    """``"<image>\\n<question>"`` (or ``<image3d>``)."""
    return f"{_TOKENS[kind]}\n{question}"


def choice_question(question: str, options: list[str]) -> str:
    """The question with its options as ``A. ...`` lines and the letter instruction."""
    lines = [question, *(f"{LETTERS[k]}. {option}" for k, option in enumerate(options))]
    return "\n".join([*lines, CHOICE_INSTRUCTION])


def record(
    sid: str,
    kind: MediaKind,
    media: str,
    question: str,
    answer: str,
    *,
    split: str,
    dataset: str,
    answer_type: str,
    question_type: str | None = None,
    **extra: Any,
) -> dict[str, Any]:
    """One annotation record: id, a human turn with the placeholder, the gpt answer, metadata.

    ``answer`` is also stored as the record's ``answer`` (the reference the scorer reads); ``extra`` keys
    whose value is ``None`` are left out.
    """
    rec: dict[str, Any] = {
        "id": sid,
        kind: [media],
        "conversations": [
            {"from": "human", "value": human_turn(kind, question)},
            {"from": "gpt", "value": answer},
        ],
        "answer": answer,
        "answer_type": answer_type,
        "dataset": dataset,
        "split": split,
    }
    if question_type is not None:
        rec["question_type"] = question_type
    rec.update({k: v for k, v in extra.items() if v is not None})
    return rec


def choice_record(
    sid: str,
    kind: MediaKind,
    media: str,
    question: str,
    options: list[str],
    letter: str,
    **meta: Any,
) -> dict[str, Any]:
    """A multiple-choice record: options listed in the prompt, ``"<letter>. <option>"`` as the answer,
    ``choices`` and ``answer_choice`` kept, ``answer_type: choice`` (scored by option letter)."""
    answer = f"{letter}. {options[LETTERS.index(letter)]}"
    return record(
        sid,
        kind,
        media,
        choice_question(question, options),
        answer,
        answer_type="choice",
        choices=list(options),
        answer_choice=letter,
        **meta,
    )


def read_json(path: Path) -> Any:
    """A JSON file's content.

    Raises:
        ConversionError: The file is missing or not valid JSON.
    """
    if not path.is_file():
        raise ConversionError(f"{path}: file not found")
    try:
        return json.loads(path.read_text(encoding="utf-8-sig"))
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise ConversionError(f"{path}: not valid UTF-8 JSON ({err})") from err


def read_csv(path: Path, required: tuple[str, ...]) -> list[tuple[int, int, dict[str, str]]]:
    """A CSV's data rows as ``(row, line, {column: cell})``.

    Raises:
        ConversionError: The file is missing, or its header lacks a ``required`` column (all named).
    """
    if not path.is_file():
        raise ConversionError(f"{path}: file not found")
    with path.open(newline="", encoding="utf-8-sig") as handle:
        reader = csv.DictReader(handle)
        missing = [c for c in required if c not in (reader.fieldnames or [])]
        if missing:
            raise ConversionError(
                f"{path}: header lacks column(s) {missing}; found {reader.fieldnames}; is this the "
                "release's own file?"
            )
        rows = []
        for row, cells in enumerate(reader):
            rows.append((row, reader.line_num, cells))
        return rows


def list_of_records(data: Any, path: Path) -> list[Any]:
    """``data`` when it is a JSON list.

    Raises:
        ConversionError: It is not.
    """
    if not isinstance(data, list):
        raise ConversionError(f"{path}: expected a JSON list of records, got {type(data).__name__}")
    return data


def problems_as_dicts(problems: list[RowProblem]) -> list[dict[str, Any]]:
    """The problems as report entries (``line`` only for CSV rows)."""
    return [{k: v for k, v in asdict(p).items() if v is not None or k == "row"} for p in problems]
