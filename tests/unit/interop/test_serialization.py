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


def test_every_saved_file_honours_the_umask(tiny_model: MedVLM, tmp_path) -> None:
    """``model.safetensors`` (written by safetensors, 0600 on its own) gets the mode every other file gets:
    0644 under umask 022, 0640 under 027."""
    import os
    import stat

    for umask, mode in ((0o022, 0o644), (0o027, 0o640)):
        previous = os.umask(umask)
        try:
            out = save_pretrained(tiny_model, tmp_path / f"model{umask:o}")
        finally:
            os.umask(previous)
        files = [p for p in out.rglob("*") if p.is_file()]
        assert out / "model.safetensors" in files
        modes = {str(p.relative_to(out)): oct(stat.S_IMODE(p.stat().st_mode)) for p in files}
        assert set(modes.values()) == {oct(mode)}, modes
