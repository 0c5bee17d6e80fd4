"""A tiny MedVLM built from the real ``conf/`` (tiny2d + mlp + tiny LLM with the real Qwen2.5 tokenizer)."""

from __future__ import annotations

import lightning as L
import pytest

from medmvl.models.build import build_model
from medmvl.models.vlm import MedVLM
from tests.conftest import compose_train


@pytest.fixture(scope="session")
def tiny_model() -> MedVLM:
    L.seed_everything(0)
    cfg = compose_train([])
    return build_model(cfg).eval()
