"""A small image-dependent annotation set: solid-colour PNGs, 'What colour is this?' -> the colour."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

COLOURS = {"red": (220, 20, 20), "green": (20, 200, 20), "blue": (20, 20, 220), "yellow": (230, 230, 0)}


def write_colour_set(folder: Path, n: int = 8, name: str = "train.json") -> Path:
    """Write ``n`` samples (PNG + LLaVA JSON) into ``folder``; returns the annotation file."""
    rng = np.random.default_rng(0)
    (folder / "imgs").mkdir(parents=True, exist_ok=True)
    records = []
    for i in range(n):
        colour = list(COLOURS)[i % len(COLOURS)]
        pixels = np.clip(np.array(COLOURS[colour]) + rng.integers(-15, 15, (32, 32, 3)), 0, 255)
        Image.fromarray(pixels.astype(np.uint8)).save(folder / "imgs" / f"{i}.png")
        records.append(
            {
                "id": f"c{i}",
                "image": [f"{i}.png"],
                "conversations": [
                    {"from": "human", "value": "<image>\nWhat colour is this?"},
                    {"from": "gpt", "value": f"It is {colour}."},
                ],
            }
        )
    path = folder / name
    path.write_text(json.dumps(records))
    return path


@pytest.fixture
def colour_data(tmp_path: Path) -> list[str]:
    """Hydra overrides pointing ``data`` at the colour set (train and val)."""
    ann = write_colour_set(tmp_path / "data")
    return [
        f"data.annotations={ann}",
        f"data.val_annotations={ann}",
        f"data.image_dir={tmp_path / 'data' / 'imgs'}",
    ]
