"""SLAKE (Liu et al., ISBI 2021): bilingual (English / Chinese) medical VQA, train/validate/test.

Expected download (``Slake1.0`` from https://www.med-vqa.com/slake/, or the HF copy
https://huggingface.co/datasets/BoKelvin/SLAKE, which renames ``validate.json`` to ``validation.json``)::

    <src>/train.json  <src>/validate.json (or validation.json)  <src>/test.json
    <src>/imgs/xmlab0/source.jpg ...

Fields read per record (keys of the release's JSON lists, e.g. ``{"img_id": 1, "img_name":
"xmlab1/source.jpg", "question": ..., "answer": ..., "q_lang": "en", "location": "Lung", "modality":
"X-Ray", "answer_type": "OPEN", "base_type": "vqa", "content_type": "Organ", "triple": [...], "qid": 42}``):
``qid``, ``img_name`` (relative to ``imgs/``), ``question``, ``answer``, ``answer_type`` (``OPEN`` /
``CLOSED``), ``q_lang`` (kept per sample), ``content_type`` (-> ``question_type``), ``modality``,
``location``. The usual protocol scores the English subset: ``lang="en"`` (default) keeps ``q_lang == "en"``,
``zh`` the Chinese rows, ``all`` both; rows left out by the filter are counted in the report's
``filtered_by_lang``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from medmvl.evaluation.benchmarks.common import (
    Context,
    ConversionError,
    list_of_records,
    read_json,
    record,
    text,
)

NAME = "slake"
VERSION = 1
SOURCE = "SLAKE release https://www.med-vqa.com/slake/ (HF: BoKelvin/SLAKE)"
OPTIONS: dict[str, tuple[str, ...]] = {"lang": ("en", "zh", "all")}
SPLIT_FILES = ("train.json", "validate.json", "validation.json", "test.json")
ANSWER_TYPES = {"OPEN": "open", "CLOSED": "closed"}
FIELDS = ("qid", "img_name", "question", "answer", "answer_type", "q_lang")


def read(src: Path, ctx: Context, lang: str = "en") -> dict[str, list[dict[str, Any]]]:
    """The records of every released split in ``src`` (``validation.json`` is written as ``validation``)."""
    found = [src / name for name in SPLIT_FILES if (src / name).is_file()]
    if not found:
        raise ConversionError(
            f"slake: none of train.json, validate.json, validation.json, test.json in {src}"
        )
    splits: dict[str, list[dict[str, Any]]] = {}
    filtered: dict[str, int] = {}
    for path in found:
        split = path.stem
        splits[split] = []
        for row, raw in enumerate(list_of_records(read_json(path), path)):
            if not isinstance(raw, dict):
                ctx.problem(path, row, "<record>", f"expected a JSON object, got {type(raw).__name__}")
                continue
            values = {k: text(raw.get(k)) for k in FIELDS}
            if lang != "all" and values["q_lang"] != lang:
                filtered[split] = filtered.get(split, 0) + 1
                continue
            rec = _record(src, path, row, raw, values, split, ctx)
            if rec is not None:
                splits[split].append(rec)
    ctx.notes["filtered_by_lang"] = {"lang": lang, "rows": filtered}
    return splits


def _record(
    src: Path, path: Path, row: int, raw: dict, values: dict[str, str | None], split: str, ctx: Context
) -> dict[str, Any] | None:
    missing = [k for k, v in values.items() if v is None]
    for key in missing:
        ctx.problem(path, row, key, "missing or empty")
    kind = ANSWER_TYPES.get((values["answer_type"] or "").upper())
    if values["answer_type"] is not None and kind is None:
        ctx.problem(path, row, "answer_type", f"expected OPEN or CLOSED, got {values['answer_type']!r}")
    image = ctx.locate(path, row, "img_name", values["img_name"], [src / "imgs"])
    if missing or kind is None or image is None:
        return None
    return record(
        f"slake-{values['qid']}",
        "image",
        ctx.place(image, values["img_name"], "image"),
        values["question"],
        values["answer"],
        split=split,
        dataset=NAME,
        answer_type=kind,
        question_type=text(raw.get("content_type")),
        q_lang=values["q_lang"],
        modality=text(raw.get("modality")),
        metadata={"location": text(raw.get("location")), "img_id": raw.get("img_id")},
    )
