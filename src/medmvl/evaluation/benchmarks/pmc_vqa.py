"""PMC-VQA (Zhang et al., 2023): multiple-choice VQA on PubMed Central figures, one split per released CSV.

Expected download (https://huggingface.co/datasets/xmcmic/PMC-VQA; ``images.zip`` / ``images_2.zip``
unpacked next to the CSVs)::

    <src>/train.csv  test.csv  test_clean.csv  (version 2: train_2.csv  test_2.csv)
    <src>/images/PMC1064097_F1.jpg ...  (or figures/, images_2/)

Columns read (the dataset card's "Explanation to each key"): ``Figure_path`` (the image file name),
``Question``, ``Answer`` (spelled ``Anwser`` in one card version; both are read), ``Choice A`` ..
``Choice D`` (written ``"A:Diffuse uptake pattern"``; the ``"A:"`` mark is removed), ``Answer_label``
(the correct letter). Each CSV becomes ``<out>/<csv stem>.json``. The options are kept as ``choices``
and the letter as ``answer_choice``; the question lists them as ``A. ...`` lines and the reference is
``"<letter>. <option>"`` (``answer_type: choice``, scored by option letter).
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

from medmvl.evaluation.benchmarks.common import (
    LETTERS,
    Context,
    ConversionError,
    choice_record,
    read_csv,
    text,
)

NAME = "pmc_vqa"
VERSION = 1
SOURCE = "PMC-VQA release https://huggingface.co/datasets/xmcmic/PMC-VQA (README: keys of train.csv)"
OPTIONS: dict[str, tuple[str, ...]] = {}
CSV_NAMES = ("train.csv", "test.csv", "test_clean.csv", "train_2.csv", "test_2.csv")
IMAGE_FOLDERS = ("images", "figures", "images_2", ".")
CHOICES = tuple(f"Choice {letter}" for letter in LETTERS[:4])
_MARK = re.compile(r"^\s*[A-D]\s*[:.)]\s*")


def read(src: Path, ctx: Context) -> dict[str, list[dict[str, Any]]]:
    """The records of every released CSV in ``src``."""
    files = [src / name for name in CSV_NAMES if (src / name).is_file()]
    if not files:
        raise ConversionError(f"pmc_vqa: none of {list(CSV_NAMES)} in {src}")
    bases = [src / folder for folder in IMAGE_FOLDERS]
    splits: dict[str, list[dict[str, Any]]] = {}
    for path in files:
        rows = read_csv(path, ("Figure_path", "Question", "Answer_label", *CHOICES))
        splits[path.stem] = [
            rec
            for row, line, cells in rows
            if (rec := _record(path, row, line, cells, bases, ctx)) is not None
        ]
    return splits


def _record(
    path: Path, row: int, line: int, cells: dict[str, str], bases: list[Path], ctx: Context
) -> dict[str, Any] | None:
    figure, question = text(cells.get("Figure_path")), text(cells.get("Question"))
    letter = (text(cells.get("Answer_label")) or "").upper()
    options = [_MARK.sub("", text(cells.get(c)) or "").strip() for c in CHOICES]
    bad = False
    for name, value in (("Figure_path", figure), ("Question", question)):
        if value is None:
            ctx.problem(path, row, name, "missing or empty", line)
            bad = True
    for column, option in zip(CHOICES, options):
        if not option:
            ctx.problem(path, row, column, "missing or empty option", line)
            bad = True
    if letter not in LETTERS[:4]:
        ctx.problem(path, row, "Answer_label", f"expected one of A, B, C, D, got {letter or None!r}", line)
        bad = True
    image = ctx.locate(path, row, "Figure_path", figure, bases, line)
    if bad or image is None:
        return None
    return choice_record(
        f"pmc_vqa-{path.stem}-{row}",
        "image",
        ctx.place(image, figure, "image"),
        question,
        options,
        letter,
        split=path.stem,
        dataset=NAME,
        metadata={"answer_text": text(cells.get("Answer")) or text(cells.get("Anwser"))},
    )
