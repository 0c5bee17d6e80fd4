"""Save -> load reproduces the model exactly, offline, from safetensors only."""

from __future__ import annotations

import json

import torch

from medmvl.interop.serialization import CONFIG_NAME, from_pretrained, save_pretrained
from medmvl.models.vlm import MedVLM


def test_roundtrip_logits_exact(tiny_model: MedVLM, tmp_path) -> None:
    out = save_pretrained(tiny_model, tmp_path / "model")
    assert (out / "model.safetensors").exists() and not list(out.glob("*.bin")) and not list(out.glob("*.pt"))
    cfg = json.loads((out / CONFIG_NAME).read_text())
    assert cfg["encoder"]["name_or_path"] is None and cfg["connector"]["_partial_"] is True
    loaded = from_pretrained(out)
    m = tiny_model.connector.num_tokens
    ids = torch.tensor([[tiny_model.image_token_id] * m + tiny_model.tokenizer("Is this a CT?").input_ids])
    mask = torch.ones_like(ids)
    pixels = torch.randn(1, 3, 32, 32)
    with torch.no_grad():
        a = tiny_model(input_ids=ids, attention_mask=mask, pixel_values=pixels)["logits"]
        b = loaded(input_ids=ids, attention_mask=mask, pixel_values=pixels)["logits"]
    assert torch.equal(a, b)
    assert loaded.tokenizer.chat_template == tiny_model.tokenizer.chat_template
    assert loaded.image_token_id == tiny_model.image_token_id
