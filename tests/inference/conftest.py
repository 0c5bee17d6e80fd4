"""A tiny MedVLM whose greedy answers depend on the prompt, saved once; small PNGs and VQA files.

The tiny model of ``conf/`` ties its LM head to the input embeddings, so with random weights it repeats
the prompt's last token ("\\n") and every answer decodes to "". An untied random head makes answers
differ between prompts, so batching tests compare something.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import lightning as L
import numpy as np
import pytest
import torch
from PIL import Image

from medmvl.models.build import build_model
from medmvl.models.io import save_pretrained
from medmvl.models.vlm import MedVLM
from tests.conftest import compose_train


@pytest.fixture(scope="session")
def talkative_model() -> MedVLM:
    """The tiny stack (tiny2d + mlp + tiny Qwen2 with the real tokenizer) with an untied random LM head."""
    L.seed_everything(0)
    model = build_model(compose_train(["experiment=none"])).eval()
    head = model.llm.get_output_embeddings()
    model.llm.config.tie_word_embeddings = False
    head.weight = torch.nn.Parameter(
        torch.randn(head.weight.shape, generator=torch.Generator().manual_seed(1))
    )
    return model


@pytest.fixture(scope="session")
def saved_model(talkative_model: MedVLM, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """``talkative_model`` written with ``save_pretrained``."""
    return save_pretrained(talkative_model, tmp_path_factory.mktemp("saved") / "model")


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
