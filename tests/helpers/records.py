"""Tiny MedVLMs (2D, and 2D + 3D towers) whose greedy answers depend on the prompt, saved once; small PNGs,
volumes and VQA files.

The tiny model of ``conf/`` ties its LM head to the input embeddings, so with random weights it repeats
the prompt's last token ("\\n") and every answer decodes to "". An untied random head makes answers
differ between prompts, so batching tests compare something.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import lightning as L
import nibabel as nib
import numpy as np
import pytest
import torch
from PIL import Image

from medmvl.interop.serialization import save_pretrained
from medmvl.models.build import build_model
from medmvl.models.vlm import MedVLM
from tests.conftest import compose_train, scratch


@pytest.fixture(scope="session")
def talkative_model() -> MedVLM:
    """The tiny stack (tiny2d + mlp + tiny Qwen2 with the real tokenizer) with an untied random LM head."""
    L.seed_everything(0)
    return _untie_head(build_model(compose_train([])).eval())


def _untie_head(model: MedVLM) -> MedVLM:
    head = model.llm.get_output_embeddings()
    model.llm.config.tie_word_embeddings = False
    head.weight = torch.nn.Parameter(
        torch.randn(head.weight.shape, generator=torch.Generator().manual_seed(1))
    )
    return model


@pytest.fixture(scope="session")
def talkative_model_3d() -> MedVLM:
    """tiny2d + a tiny3d tower (``encoder3d``, 16x32x32 volumes, 64 tokens) + tiny LLM, untied head."""
    L.seed_everything(0)
    cfg = compose_train(["encoder3d=tiny3d", "connector3d=mlp"])
    return _untie_head(build_model(cfg).eval())


@pytest.fixture(scope="package")
def saved_model_3d(talkative_model_3d: MedVLM, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """``talkative_model_3d`` written with ``save_pretrained`` (removed after ``tests/inference``)."""
    with scratch(tmp_path_factory, "saved3d") as root:
        yield save_pretrained(talkative_model_3d, root / "model")


@pytest.fixture(scope="session")
def volume_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Random 8-bit volumes ``0.npy`` [20, 24, 28], ``1.npy`` [12, 16, 16] and ``2.nii.gz`` [24, 20, 18]."""
    folder = tmp_path_factory.mktemp("volumes")
    rng = np.random.default_rng(0)
    np.save(folder / "0.npy", rng.integers(0, 256, (20, 24, 28), dtype=np.uint8))
    np.save(folder / "1.npy", rng.integers(0, 256, (12, 16, 16), dtype=np.uint8))
    hu = rng.integers(-1000, 1000, (24, 20, 18)).astype(np.int16)
    nib.save(nib.Nifti1Image(hu, np.diag([1.5, 1.5, 3.0, 1.0])), folder / "2.nii.gz")
    return folder


@pytest.fixture(scope="package")
def saved_model(talkative_model: MedVLM, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """``talkative_model`` written with ``save_pretrained`` (removed after ``tests/inference``)."""
    with scratch(tmp_path_factory, "saved") as root:
        yield save_pretrained(talkative_model, root / "model")


@pytest.fixture(scope="session")
def image_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Three random RGB PNGs ``0.png``..``2.png`` of different sizes."""
    folder = tmp_path_factory.mktemp("images")
    rng = np.random.default_rng(0)
    for i in range(3):
        Image.fromarray(rng.integers(0, 256, (24 + 8 * i, 40, 3), dtype=np.uint8)).save(folder / f"{i}.png")
    return folder


def record(sid: str, question: str, image: str | None = None, gpt: str | None = None, **extra: Any) -> dict:
    """An inference record: one human turn (``<image>\\n`` first when ``image``), optional ``gpt`` reply."""
    rec: dict[str, Any] = {"id": sid, "conversations": [{"from": "human", "value": question}], **extra}
    if image is not None:
        rec["image"] = [image]
        rec["conversations"][0]["value"] = "<image>\n" + question
    if gpt is not None:
        rec["conversations"].append({"from": "gpt", "value": gpt})
    return rec


def write_records(path: Path, records: list[dict]) -> Path:
    """Write ``records`` as a JSON list to ``path``."""
    path.write_text(json.dumps(records))
    return path
