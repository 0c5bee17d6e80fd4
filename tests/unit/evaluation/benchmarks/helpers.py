"""Tiny release fixtures for the converter tests: images, volumes, CSV and JSON files in release layouts."""

from __future__ import annotations

import csv
import io
import json
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from medmvl.data.schema import load_annotations


def png(path: Path, value: int = 128) -> Path:
    """Write a 4x4 grey PNG at ``path``."""
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.full((4, 4), value, np.uint8)).save(path)
    return path


def jpeg_bytes(value: int = 100) -> bytes:
    """A 4x4 RGB JPEG's bytes."""
    buffer = io.BytesIO()
    Image.fromarray(np.full((4, 4, 3), value, np.uint8)).save(buffer, format="JPEG")
    return buffer.getvalue()


def npy(path: Path) -> Path:
    """Write a ``1x2x4x4`` float volume in ``[0, 1]`` at ``path`` (M3D's prepared layout)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    np.save(path, np.linspace(0, 1, 32, dtype=np.float32).reshape(1, 2, 4, 4))
    return path


def write_json(path: Path, data: Any) -> Path:
    """Write ``data`` as JSON at ``path``."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(data), encoding="utf-8")
    return path


def write_csv(path: Path, header: list[str], rows: list[list[Any]]) -> Path:
    """Write a CSV with ``header`` and ``rows`` at ``path``."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w", newline="", encoding="utf-8") as handle:
        writer = csv.writer(handle)
        writer.writerow(header)
        writer.writerows(rows)
    return path


def split_records(report: dict, split: str) -> list[dict]:
    """The records of one written split, checked by medmvl's annotation loader on the way."""
    path = Path(report["files"][split])
    load_annotations(path)
    return json.loads(path.read_text(encoding="utf-8"))


def human(rec: dict) -> str:
    """The human turn of a record."""
    return rec["conversations"][0]["value"]


def gpt(rec: dict) -> str:
    """The gpt turn of a record."""
    return rec["conversations"][1]["value"]
