"""VQA-RAD (Lau et al., Scientific Data 2018): radiology VQA, train/test as released.

Expected download (the OSF release, https://osf.io/89kps/)::

    <src>/VQA_RAD Dataset Public.json
    <src>/VQA_RAD Image Folder/synpic12345.jpg ...

Fields read per record (keys of ``VQA_RAD Dataset Public.json``, as documented in the paper's data
descriptor and used by loaders such as the HF card https://huggingface.co/datasets/flaviagiammarino/vqa-rad):
``qid``, ``image_name``, ``question``, ``answer``, ``answer_type`` (``OPEN`` / ``CLOSED``),
``question_type`` (e.g. ``PRES``, ``MODALITY``, ``PRES, POS``), ``image_organ`` and ``phrase_type``:
``test_freeform`` / ``test_para`` rows form the test split (451 questions), ``freeform`` / ``para`` the
train split (1,797).
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

NAME = "vqa_rad"
VERSION = 1
SOURCE = "VQA-RAD OSF release https://osf.io/89kps/ (VQA_RAD Dataset Public.json + VQA_RAD Image Folder)"
OPTIONS: dict[str, tuple[str, ...]] = {}
ANNOTATIONS = "VQA_RAD Dataset Public.json"
IMAGES = "VQA_RAD Image Folder"
ANSWER_TYPES = {"OPEN": "open", "CLOSED": "closed"}


def read(src: Path, ctx: Context) -> dict[str, list[dict[str, Any]]]:
    """The train and test records of the release in ``src``."""
    path = src / ANNOTATIONS
    if not path.is_file():
        raise ConversionError(f"vqa_rad: {path} not found; expected the OSF release layout ({ANNOTATIONS!r})")
    splits: dict[str, list[dict[str, Any]]] = {"train": [], "test": []}
    seen: set[str] = set()
    for row, raw in enumerate(list_of_records(read_json(path), path)):
        if not isinstance(raw, dict):
            ctx.problem(path, row, "<record>", f"expected a JSON object, got {type(raw).__name__}")
            continue
        values = {k: text(raw.get(k)) for k in ("qid", "image_name", "question", "answer", "answer_type")}
        missing = [k for k, v in values.items() if v is None]
        for key in missing:
            ctx.problem(path, row, key, "missing or empty")
        kind = ANSWER_TYPES.get((values["answer_type"] or "").upper())
        if values["answer_type"] is not None and kind is None:
            ctx.problem(path, row, "answer_type", f"expected OPEN or CLOSED, got {values['answer_type']!r}")
        image = ctx.locate(path, row, "image_name", values["image_name"], [src / IMAGES])
        if missing or kind is None or image is None:
            continue
        split = "test" if (text(raw.get("phrase_type")) or "").startswith("test") else "train"
        sid = f"vqa_rad-{values['qid']}"
        if sid in seen:
            sid = f"{sid}-r{row}"
        seen.add(sid)
        media = ctx.place(image, values["image_name"], "image")
        splits[split].append(
            record(
                sid,
                "image",
                media,
                values["question"],
                values["answer"],
                split=split,
                dataset=NAME,
                answer_type=kind,
                question_type=text(raw.get("question_type")),
                metadata={"image_organ": text(raw.get("image_organ")), "phrase_type": raw.get("phrase_type")},
            )
        )
    return splits
