"""M3D-VQA (Bai et al., 2024): 3D CT VQA, closed (multiple choice) and open questions per row.

Expected download (https://huggingface.co/datasets/GoodBaiBai88/M3D-VQA, with the M3D-Cap volumes it
points to, prepared as ``.npy`` by M3D's ``Data/process/m3d_cap_data_prepare.py``), laid out as M3D's
data root (``--data_root ./Data/data/`` in https://github.com/BAAI-DCAI/M3D ``LaMed/src/train/train.py``)::

    <src>/M3D-VQA/M3D_VQA_train.csv  M3D_VQA_val.csv  M3D_VQA_test.csv  (M3D_VQA_test5k.csv ...)
    <src>/M3D_Cap_npy/ct_case/000006/Axial_non_contrast.npy ...  (the CSVs' ``Image Path``, relative to <src>)

Columns read (as M3D's ``Bench/dataset/multi_dataset.py`` ``VQADataset`` reads them): ``Image Path``,
``Question Type``, ``Question``, ``Choice A`` .. ``Choice D``, ``Answer``, ``Answer Choice``. As in M3D,
a row gives a closed question (the options after the question, the reference ``"<letter>. <answer>"``,
``answer_type: choice`` scored by ``answer_choice``) and an open one (the question alone, the reference
``Answer``); ``task`` picks ``both`` (default), ``closed`` or ``open``. CSV ``M3D_VQA_<split>.csv``
becomes ``<out>/<split>.json``; ids are ``m3d_vqa-<split>-<row>-closed`` / ``-open``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from medmvl.evaluation.benchmarks.common import (
    LETTERS,
    Context,
    ConversionError,
    choice_record,
    read_csv,
    record,
    text,
)

NAME = "m3d_vqa"
VERSION = 1
SOURCE = "M3D-VQA CSVs https://huggingface.co/datasets/GoodBaiBai88/M3D-VQA; columns per BAAI-DCAI/M3D Bench/dataset/multi_dataset.py"
OPTIONS: dict[str, tuple[str, ...]] = {"task": ("both", "closed", "open")}
CHOICES = tuple(f"Choice {letter}" for letter in LETTERS[:4])
COLUMNS = ("Image Path", "Question Type", "Question", *CHOICES, "Answer", "Answer Choice")


def _csv_files(src: Path) -> list[Path]:
    files = sorted((src / "M3D-VQA").glob("M3D_VQA_*.csv")) or sorted(src.glob("M3D_VQA_*.csv"))
    if not files:
        raise ConversionError(f"m3d_vqa: no M3D_VQA_*.csv in {src / 'M3D-VQA'} or {src}")
    return files


def read(src: Path, ctx: Context, task: str = "both") -> dict[str, list[dict[str, Any]]]:
    """The records of every ``M3D_VQA_*.csv``, one split per file."""
    splits: dict[str, list[dict[str, Any]]] = {}
    for path in _csv_files(src):
        split = path.stem.removeprefix("M3D_VQA_")
        bases = [src, path.parent.parent, path.parent]
        records = splits.setdefault(split, [])
        for row, line, cells in read_csv(path, COLUMNS):
            records.extend(_records(path, row, line, cells, split, bases, task, ctx))
    return splits


def _records(
    path: Path,
    row: int,
    line: int,
    cells: dict[str, str],
    split: str,
    bases: list[Path],
    task: str,
    ctx: Context,
) -> list[dict[str, Any]]:
    values = {c: text(cells.get(c)) for c in ("Image Path", "Question", "Answer")}
    needed = [*values, *CHOICES, "Answer Choice"] if task != "open" else list(values)
    options = [text(cells.get(c)) for c in CHOICES]
    letter = (text(cells.get("Answer Choice")) or "").upper().rstrip(".")
    bad = False
    for column in needed:
        cell = values.get(column, text(cells.get(column)))
        if cell is None:
            ctx.problem(path, row, column, "missing or empty", line)
            bad = True
    if task != "open" and text(cells.get("Answer Choice")) and letter not in LETTERS[:4]:
        ctx.problem(path, row, "Answer Choice", f"expected one of A, B, C, D, got {letter!r}", line)
        bad = True
    image = ctx.locate(path, row, "Image Path", values["Image Path"], bases, line, "volume")
    if bad or image is None:
        return []
    media = ctx.place(image, values["Image Path"], "image3d")
    meta = {"split": split, "dataset": NAME, "question_type": text(cells.get("Question Type"))}
    out = []
    if task in ("both", "closed"):
        out.append(
            choice_record(
                f"m3d_vqa-{split}-{row}-closed", "image3d", media, values["Question"], options, letter, **meta
            )
        )
    if task in ("both", "open"):
        out.append(
            record(
                f"m3d_vqa-{split}-{row}-open",
                "image3d",
                media,
                values["Question"],
                values["Answer"],
                answer_type="open",
                **meta,
            )
        )
    return out
