"""Augmented rendering of one demo view to a small 8-bit PNG.

Augmentations stay mild so every planned answer still holds in the rendered image: a square crop of
85-100 % of the shorter side (an organ "clearly present" keeps most of its area; the patient's side of an
organ is anatomical, so a shifted crop does not change it), CT window jitter, gamma / contrast /
brightness jitter, and the horizontal mirror decided by the plan (laterality answers already account for
it). Gray sources are written as 8-bit gray (``L``), colour ones as RGB.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image

from medmvl.demo.sources import View

CROP_RANGE = (0.85, 1.0)
WINDOW_JITTER = 0.05  # centre shift, as a fraction of the width
WIDTH_JITTER = (0.9, 1.1)
GAMMA_JITTER = 0.15  # log-gamma range
CONTRAST_JITTER = (0.9, 1.1)
BRIGHTNESS_JITTER = 0.05


def render(view: View, *, flip: bool, size: int, rng: np.random.Generator) -> Image.Image:
    """Crop, window, jitter, mirror and resize ``view`` into a ``size`` x ``size`` image.

    Args:
        view: the labelled source image.
        flip: mirror left-right (the plan has already adapted the answer).
        size: output side in pixels.
        rng: generator owned by this sample, so output does not depend on sample order.

    Returns:
        A PIL image, mode ``L`` for gray sources and ``RGB`` for colour ones.
    """
    h, w = view.pixels.shape[:2]
    side = max(1, int(min(h, w) * rng.uniform(*CROP_RANGE)))
    top, left = int(rng.integers(h - side + 1)), int(rng.integers(w - side + 1))
    crop = view.pixels[top : top + side, left : left + side]  # [s, s] or [s, s, 3]
    x = _resize(crop, size)  # [size, size] or [size, size, 3]; intensity ops run on the small image
    if view.window is not None:
        center, width = view.window
        width *= rng.uniform(*WIDTH_JITTER)
        center += rng.uniform(-WINDOW_JITTER, WINDOW_JITTER) * width
        x = np.clip((x - (center - width / 2)) / width, 0.0, 1.0)
    gamma = float(np.exp(rng.uniform(-GAMMA_JITTER, GAMMA_JITTER)))
    contrast, bright = rng.uniform(*CONTRAST_JITTER), rng.uniform(-BRIGHTNESS_JITTER, BRIGHTNESS_JITTER)
    x = np.clip((np.power(x, gamma) - 0.5) * contrast + 0.5 + bright, 0.0, 1.0)
    u8 = (x * 255 + 0.5).astype(np.uint8)
    if flip:
        u8 = u8[:, ::-1]
    return Image.fromarray(np.ascontiguousarray(u8))


def _resize(x: np.ndarray, size: int) -> np.ndarray:
    """Antialiased bilinear resize of ``[h, w]`` or ``[h, w, c]`` to ``[size, size(, c)]`` float32."""
    channels = [x] if x.ndim == 2 else [x[..., c] for c in range(x.shape[-1])]
    out = [
        np.asarray(Image.fromarray(np.asarray(c, dtype=np.float32)).resize((size, size), Image.BILINEAR))
        for c in channels
    ]
    return out[0] if x.ndim == 2 else np.stack(out, axis=-1)


def save_png(image: Image.Image, path: Path) -> None:
    """Write ``image`` as PNG (deterministic bytes: no timestamps or text chunks)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    image.save(path, format="PNG")
