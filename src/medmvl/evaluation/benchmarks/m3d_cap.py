"""M3D-Cap (Bai et al., 2024): 3D CT volume + report caption pairs, train/validation/test.

Expected download (https://huggingface.co/datasets/GoodBaiBai88/M3D-Cap, volumes prepared as ``.npy`` by
its ``m3d_cap_data_prepare.py``), laid out as M3D's data root (``--data_root`` and ``--cap_data_path`` of
https://github.com/BAAI-DCAI/M3D ``Bench/eval/eval_caption.py``)::

    <src>/M3D_Cap/M3D_Cap.json  (or <src>/M3D_Cap_npy/M3D_Cap.json, <src>/M3D_Cap.json)
    <src>/<the records' image paths>.npy, <src>/<the records' text paths>.txt

``M3D_Cap.json`` maps each split (``train``, ``validation``, ``test``) to a list of ``{"image": <.npy path>,
"text": <.txt path>}`` (paths relative to the data root, as M3D's ``CapDataset`` joins them), read as in
M3D's ``Bench/dataset/multi_dataset.py``. The caption is the text file's content; the prompt is M3D's
example caption question. Ids are ``m3d_cap-<split>-<row>``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from medmvl.evaluation.benchmarks.common import Context, ConversionError, find_media, read_json, record, text

NAME = "m3d_cap"
VERSION = 1
SOURCE = "M3D-Cap https://huggingface.co/datasets/GoodBaiBai88/M3D-Cap; M3D_Cap.json per BAAI-DCAI/M3D Bench/dataset/multi_dataset.py"
OPTIONS: dict[str, tuple[str, ...]] = {}
INDEX_PATHS = ("M3D_Cap/M3D_Cap.json", "M3D_Cap_npy/M3D_Cap.json", "M3D_Cap.json")
PROMPT = "Can you provide a caption consists of findings for this medical image?"


def read(src: Path, ctx: Context) -> dict[str, list[dict[str, Any]]]:
    """The caption records of every split of ``M3D_Cap.json``."""
    index = next((src / p for p in INDEX_PATHS if (src / p).is_file()), None)
    if index is None:
        raise ConversionError(f"m3d_cap: none of {list(INDEX_PATHS)} in {src}")
    data = read_json(index)
    if not isinstance(data, dict) or not all(isinstance(v, list) for v in data.values()):
        raise ConversionError(f"{index}: expected an object mapping each split to a list of records")
    bases = list(dict.fromkeys([src, index.parent.parent, index.parent]))
    splits: dict[str, list[dict[str, Any]]] = {}
    for split, rows in data.items():
        splits[split] = [
            rec
            for row, raw in enumerate(rows)
            if (rec := _record(index, split, row, raw, bases, ctx)) is not None
        ]
    return splits


def _record(
    index: Path, split: str, row: int, raw: Any, bases: list[Path], ctx: Context
) -> dict[str, Any] | None:
    where = f"{index} [{split}]"
    if not isinstance(raw, dict):
        ctx.problem(
            where, row, "<record>", f"expected an object with image and text, got {type(raw).__name__}"
        )
        return None
    image_rel, text_rel = text(raw.get("image")), text(raw.get("text"))
    found: dict[str, Path | None] = {}
    for name, rel in (("image", image_rel), ("text", text_rel)):
        found[name] = find_media(rel, bases) if rel else None
        if rel is None:
            ctx.problem(where, row, name, "missing or empty")
        elif found[name] is None:
            ctx.problem(where, row, name, f"file {rel!r} not found under {[str(b) for b in bases]}")
    if found.get("image") is None or found.get("text") is None:
        return None
    caption = found["text"].read_text(encoding="utf-8", errors="replace").strip()
    if not caption:
        ctx.problem(where, row, "text", f"{found['text']} is empty")
        return None
    return record(
        f"m3d_cap-{split}-{row}",
        "image3d",
        ctx.place(found["image"], image_rel, "image3d"),
        PROMPT,
        caption,
        split=split,
        dataset=NAME,
        answer_type="open",
        question_type="caption",
    )
