"""OmniMedVQA (Hu et al., CVPR 2024): multiple-choice VQA over 73 medical datasets (evaluation only).

Expected download (the release described at https://github.com/OpenGVLab/Multi-Modality-Arena, also
mirrored on the HF hub)::

    <src>/QA_information/Open-access/<dataset>.json ...
    <src>/QA_information/Restricted-access/<dataset>.json ...  (when obtained)
    <src>/Images/<dataset>/... (the paths in ``image_path``)

Keys read per record (as the benchmark's own loader ``MedicalEval/Question-answering_Score/
task_datasets/medical_datasets.py`` reads them): ``question_id``, ``question``, ``gt_answer`` (the text of
the correct option), ``image_path`` (relative to ``<src>``), ``option_A`` .. ``option_D`` (``C`` / ``D``
absent for two-option questions), ``question_type``, ``modality_type`` (-> ``modality``; one file spells it
``modality``) and ``dataset`` (else the file name). Each access folder becomes a split
(``open_access`` / ``restricted_access``); ``answer_choice`` is the letter of the option equal to
``gt_answer`` (a ``gt_answer`` that is no option is a bad row).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from medmvl.evaluation.benchmarks.common import (
    LETTERS,
    Context,
    ConversionError,
    choice_record,
    list_of_records,
    read_json,
    text,
)

NAME = "omnimedvqa"
VERSION = 1
SOURCE = "OmniMedVQA release (QA_information/*/ *.json + Images/), https://github.com/OpenGVLab/Multi-Modality-Arena"
OPTIONS: dict[str, tuple[str, ...]] = {}
ACCESS = (("open_access", "Open-access"), ("restricted_access", "Restricted-access"))
OPTION_KEYS = ("option_A", "option_B", "option_C", "option_D")


def read(src: Path, ctx: Context) -> dict[str, list[dict[str, Any]]]:
    """The records of every QA json file, one split per access folder."""
    root = src / "QA_information"
    folders = [(split, root / name) for split, name in ACCESS if (root / name).is_dir()]
    if not folders:
        raise ConversionError(
            f"omnimedvqa: no QA_information/Open-access (or Restricted-access) folder in {src}"
        )
    splits: dict[str, list[dict[str, Any]]] = {}
    for split, folder in folders:
        records = splits.setdefault(split, [])
        seen: set[str] = set()
        for path in sorted(folder.glob("*.json")):
            for row, raw in enumerate(list_of_records(read_json(path), path)):
                rec = _record(src, path, row, raw, split, ctx)
                if rec is not None:
                    if rec["id"] in seen:
                        rec["id"] = f"{rec['id']}-{path.stem}-r{row}"
                    seen.add(rec["id"])
                    records.append(rec)
    return splits


def _record(src: Path, path: Path, row: int, raw: Any, split: str, ctx: Context) -> dict[str, Any] | None:
    if not isinstance(raw, dict):
        ctx.problem(path, row, "<record>", f"expected a JSON object, got {type(raw).__name__}")
        return None
    values = {k: text(raw.get(k)) for k in ("question_id", "question", "gt_answer", "image_path")}
    missing = [k for k, v in values.items() if v is None]
    for key in missing:
        ctx.problem(path, row, key, "missing or empty")
    options = [o for o in (text(raw.get(k)) for k in OPTION_KEYS) if o is not None]
    if len(options) < 2:
        ctx.problem(
            path, row, "option_A", f"expected at least option_A and option_B, got {len(options)} option(s)"
        )
    letter = None
    if values["gt_answer"] is not None and values["gt_answer"] in options:
        letter = LETTERS[options.index(values["gt_answer"])]
    elif values["gt_answer"] is not None and len(options) >= 2:
        ctx.problem(path, row, "gt_answer", f"{values['gt_answer']!r} is none of the options {options}")
    image = ctx.locate(path, row, "image_path", values["image_path"], [src])
    if missing or letter is None or image is None:
        return None
    return choice_record(
        f"omnimedvqa-{values['question_id']}",
        "image",
        ctx.place(image, values["image_path"], "image"),
        values["question"],
        options,
        letter,
        split=split,
        dataset=text(raw.get("dataset")) or path.stem,
        question_type=text(raw.get("question_type")),
        modality=text(raw.get("modality_type")) or text(raw.get("modality")),
    )
