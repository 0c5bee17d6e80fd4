"""Fixtures of the data tests: offline tokenizers, tiny synthetic images and annotation files."""

from __future__ import annotations

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import json  # noqa: E402
from collections.abc import Callable  # noqa: E402
from pathlib import Path  # noqa: E402
from typing import Any  # noqa: E402

import numpy as np  # noqa: E402
import pytest  # noqa: E402
from PIL import Image  # noqa: E402
from transformers import PreTrainedTokenizerBase  # noqa: E402

from tests.helpers.offline import family_tokenizer  # noqa: E402


@pytest.fixture(scope="session")
def qwen() -> PreTrainedTokenizerBase:
    """Qwen2.5's real tokenizer and chat template (shared: do not modify)."""
    return family_tokenizer("qwen2.5")


def write_png(path: Path, value: int = 128, size: tuple[int, int] = (12, 16), mode: str = "L") -> Path:
    """A constant (``value``) ``size`` = (h, w) PNG; RGB images get ``value`` in red only."""
    path.parent.mkdir(parents=True, exist_ok=True)
    shape = (*size, 3) if mode == "RGB" else size
    arr = np.zeros(shape, dtype=np.uint8)
    if mode == "RGB":
        arr[..., 0] = value
    else:
        arr[...] = value
    Image.fromarray(arr, mode=mode).save(path)
    return path


def vqa(sid: str, question: str, answer: str, images: list[str] | None = None, **extra: Any) -> dict:
    """One single-turn LLaVA record with one ``<image>`` per image path."""
    images = images or []
    prefix = "<image>\n" * len(images)
    record = {
        "id": sid,
        "conversations": [{"from": "human", "value": prefix + question}, {"from": "gpt", "value": answer}],
        **extra,
    }
    if images:
        record["image"] = images
    return record


@pytest.fixture
def write_json(tmp_path: Path) -> Callable[[Any, str], Path]:
    """Write a JSON value to ``tmp_path/name`` and return the path."""

    def write(value: Any, name: str = "train.json") -> Path:
        path = tmp_path / name
        path.write_text(json.dumps(value))
        return path

    return write
