"""PathVQA (He et al., 2020): pathology VQA from its parquet release on the HF hub, train/validation/test.

Expected download (https://huggingface.co/datasets/flaviagiammarino/path-vqa, ``data/`` folder; the
hub's auto-converted ``refs/convert/parquet`` layout ``default/<split>/0000.parquet`` is read too)::

    <src>/data/train-00000-of-00002.parquet ...  validation-*.parquet  test-*.parquet

Columns read (the card's features): ``image`` (an image struct ``{"bytes", "path"}``), ``question``,
``answer``. The split is the file name's prefix (``train`` / ``validation`` / ``test``), else its folder
name. Answers ``yes`` / ``no`` are closed questions, all others open (the paper's split of the question
types). Images are written once per distinct content as ``images/<split>/<sha1>.<jpg|png>``; ids are
``path_vqa-<split>-<file stem>-<row>``.

The original release (https://github.com/UCSD-AI4H/PathVQA) stores its question-answer pairs as Python
pickles (``.pkl``); unpickling runs arbitrary code, so those files are refused, never opened.
Reading parquet needs ``pyarrow``.
"""

from __future__ import annotations

import hashlib
import re
from pathlib import Path
from typing import Any

from medmvl.evaluation.benchmarks.common import Context, ConversionError, record, text

NAME = "path_vqa"
VERSION = 1
SOURCE = "PathVQA parquet release https://huggingface.co/datasets/flaviagiammarino/path-vqa"
OPTIONS: dict[str, tuple[str, ...]] = {}
SPLITS = ("train", "validation", "test")
COLUMNS = ("image", "question", "answer")
PKL_REFUSED = (
    "PathVQA's .pkl release is not read: unpickling a downloaded file runs arbitrary code. Download the "
    "parquet release instead (huggingface.co/datasets/flaviagiammarino/path-vqa, data/*.parquet) and "
    "pass its folder"
)


def _split_of(path: Path) -> str | None:
    match = re.match(r"(train|validation|test)\b", path.name)
    if match:
        return match.group(1)
    return path.parent.name if path.parent.name in SPLITS else None


def _parquet_files(src: Path) -> list[Path]:
    if src.is_file():
        if src.suffix == ".pkl":
            raise ConversionError(f"path_vqa: {src}: {PKL_REFUSED}")
        return [src] if src.suffix == ".parquet" else []
    files = sorted(src.rglob("*.parquet"))
    if not files:
        pickles = sorted(src.rglob("*.pkl"))
        if pickles:
            raise ConversionError(
                f"path_vqa: {src} holds {pickles[0].name} but no parquet file. {PKL_REFUSED}"
            )
        raise ConversionError(f"path_vqa: no .parquet file under {src}; expected data/<split>-*.parquet")
    return files


def _image_bytes(cell: Any) -> bytes | None:
    if isinstance(cell, dict):
        cell = cell.get("bytes")
    return cell if isinstance(cell, (bytes, bytearray)) and cell else None


def _extension(data: bytes) -> str | None:
    if data[:3] == b"\xff\xd8\xff":
        return "jpg"
    if data[:8] == b"\x89PNG\r\n\x1a\n":
        return "png"
    return None


def read(src: Path, ctx: Context) -> dict[str, list[dict[str, Any]]]:
    """The records of every parquet file under ``src``, grouped by split."""
    files = _parquet_files(src)
    try:
        import pyarrow.parquet as pq
    except ImportError as err:
        raise ConversionError("path_vqa: reading parquet needs pyarrow (pip install pyarrow)") from err
    splits: dict[str, list[dict[str, Any]]] = {}
    for path in files:
        split = _split_of(path)
        if split is None:
            raise ConversionError(
                f"path_vqa: {path}: cannot tell the split; expected a name like train-*.parquet"
            )
        table = pq.read_table(path)
        missing = [c for c in COLUMNS if c not in table.column_names]
        if missing:
            raise ConversionError(f"path_vqa: {path}: lacks column(s) {missing}; found {table.column_names}")
        records = splits.setdefault(split, [])
        for row, raw in enumerate(table.select(list(COLUMNS)).to_pylist()):
            rec = _record(path, row, raw, split, ctx)
            if rec is not None:
                records.append(rec)
    return splits


def _record(path: Path, row: int, raw: dict, split: str, ctx: Context) -> dict[str, Any] | None:
    question, answer = text(raw.get("question")), text(raw.get("answer"))
    data = _image_bytes(raw.get("image"))
    ext = _extension(data) if data else None
    for name, value in (("question", question), ("answer", answer), ("image", data)):
        if value is None:
            ctx.problem(path, row, name, "missing or empty")
    if data and ext is None:
        ctx.problem(path, row, "image", f"image bytes are neither JPEG nor PNG (start {data[:8]!r})")
    if question is None or answer is None or ext is None:
        return None
    rel = f"{split}/{hashlib.sha1(data).hexdigest()}.{ext}"
    kind = "closed" if answer.lower() in ("yes", "no") else "open"
    return record(
        f"path_vqa-{split}-{path.stem}-{row}",
        "image",
        ctx.place_bytes(data, rel, "image"),
        question,
        answer,
        split=split,
        dataset=NAME,
        answer_type=kind,
        source_index=row,
        source=path.name,
    )
