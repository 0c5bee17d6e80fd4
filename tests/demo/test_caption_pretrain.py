"""From-scratch caption-slot encoder: patch backbone, caption targets, pre-training, cache, identity connector."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from hydra.utils import instantiate
from PIL import Image

from medmvl.demo.caption_pretrain import (
    caption_pretrained,
    caption_targets,
    fit_slots,
    slot_vocabulary,
)
from medmvl.interop.serialization import from_pretrained, save_pretrained
from medmvl.models.build import build_model
from medmvl.models.connectors.mlp import MlpConnector
from medmvl.models.encoders.caption_slots import CaptionSlotEncoder
from medmvl.models.encoders.patch import PatchEncoder
from tests.conftest import compose_train

BACKBONE = {
    "_target_": "medmvl.models.encoders.patch.PatchEncoder",
    "image_size": 16,
    "patch_size": 8,
    "hidden_size": 32,
    "num_layers": 0,
}


@pytest.fixture(scope="module")
def tokenizer():
    return instantiate(compose_train([]).llm.tokenizer)


@pytest.mark.parametrize("stem,layers", [("linear", 0), ("conv", 1)])
def test_patch_encoder_shapes_and_rebuild(stem: str, layers: int) -> None:
    torch.manual_seed(0)
    enc = PatchEncoder(image_size=32, patch_size=8, hidden_size=48, num_layers=layers, stem=stem)
    x = torch.randn(3, 3, 32, 32)
    out = enc(x)  # [3, 16, 48]
    assert out.shape == (3, 16, 48) and enc.grid == (4, 4) and enc.num_tokens == 16
    assert enc.preprocess["image_size"] == (32, 32) and enc.preprocess["image_mean"] == (0.5,) * 3
    assert (out[0] - out[1]).abs().mean() > 0.1  # tokens depend on the pixels from the start
    again = instantiate(enc.export_config())
    again.load_state_dict(enc.state_dict())
    assert torch.equal(again(x), out)
    with pytest.raises(ValueError, match="multiple of patch_size"):
        PatchEncoder(image_size=30, patch_size=8)


def test_caption_targets_pad_and_leave_unknown_words_unsupervised(tokenizer) -> None:
    captions = ["The liver is seen.", "The liver is unknown."]
    targets, vocab = caption_targets(captions, tokenizer, num_slots=7, unknown_text="unknown")
    assert targets.shape == (2, 7)
    words = [tokenizer.decode([vocab[i]]) if i >= 0 else None for i in targets[1].tolist()]
    assert words[:5] == ["The", " liver", " is", None, "."] and words[5:] == [".", "."]
    assert tokenizer.decode([vocab[targets[0, 3]]]) == " seen" and " unknown" not in map(
        tokenizer.decode, [[v] for v in vocab]
    )
    allowed = slot_vocabulary(targets, len(vocab))
    assert allowed[3].sum() == 1 and allowed[0].sum() == 1  # slot 3 was only ever taught " seen"
    with pytest.raises(ValueError, match="raise num_slots"):
        caption_targets(captions, tokenizer, num_slots=3)
    with pytest.raises(ValueError, match="single token"):
        caption_targets(captions, tokenizer, pad_text="two tokens")


def _slot_encoder(vocab_ids: list[int], hard: bool = False) -> CaptionSlotEncoder:
    torch.manual_seed(0)
    return CaptionSlotEncoder(
        backbone=instantiate(BACKBONE), num_slots=2, vocab_ids=vocab_ids, out_dim=8, hard=hard
    )


def test_hard_slots_emit_exact_vocabulary_rows_and_pass_gradients() -> None:
    enc = _slot_encoder([5, 9, 11], hard=True)
    enc.init_vocab(torch.arange(20 * 8, dtype=torch.float32).view(20, 8))
    out = enc(torch.randn(2, 3, 16, 16))  # [2, 2, 8]
    rows = {tuple(r.tolist()) for r in enc.vocab.detach()}
    assert all(tuple(t.tolist()) in rows for t in out.detach().flatten(0, 1))
    out.sum().backward()
    assert enc.head.weight.grad is not None and enc.head.weight.grad.abs().sum() > 0
    enc.allowed[:, :2] = False  # a slot only emits tokens it is allowed to
    assert torch.equal(enc(torch.randn(2, 3, 16, 16))[0, 0], enc.vocab[2])


def test_fit_slots_learns_a_caption_per_image() -> None:
    x = torch.zeros(8, 3, 16, 16)
    x[:4, :, :, :8] = 1.0  # bright left half
    x[4:, :, :, 8:] = 1.0  # bright right half
    targets = torch.tensor([[0, 1]] * 4 + [[0, 2]] * 4)  # slot 0 constant, slot 1 names the side
    enc = _slot_encoder([3, 4, 5])
    losses = fit_slots(enc, x, targets, steps=40, batch_size=8, lr=3e-3)
    assert losses[-1] < 0.2 * losses[0]
    assert torch.equal(enc.slot_logits(x).argmax(-1), targets)


def _captions_file(folder: Path) -> Path:
    records = []
    for i, side in enumerate(["left", "right"] * 4):
        img = np.zeros((16, 16, 3), np.uint8)
        img[:, :8] = 255 if side == "left" else 0
        img[:, 8:] = 255 if side == "right" else 0
        Image.fromarray(img).save(folder / f"{i}.png")
        records.append(
            {
                "id": str(i),
                "image": [f"{i}.png"],
                "conversations": [
                    {"from": "human", "value": "<image>"},
                    {"from": "gpt", "value": f"Bright on the {side}."},
                ],
            }
        )
    (folder / "captions.json").write_text(json.dumps(records))
    return folder / "captions.json"


@pytest.mark.slow
def test_caption_slot_model_builds_from_config_caches_and_reloads(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("MEDMVL_CACHE", str(tmp_path / "cache"))
    overrides = [
        "encoder=caption_slots",
        f"encoder.annotations={_captions_file(tmp_path)}",
        "encoder.backbone.image_size=16",
        "encoder.backbone.patch_size=8",
        "encoder.backbone.hidden_size=32",
        "encoder.steps=30",
        "encoder.batch_size=8",
        "encoder.lr=3e-3",
        "encoder.hard=true",
        "connector.depth=1",
        "connector.init_identity=true",
    ]
    torch.manual_seed(0)
    model = build_model(compose_train(overrides))
    (folder,) = (tmp_path / "cache" / "encoders").iterdir()
    assert (folder / "model.safetensors").is_file() and model.encoder.grid == (model.encoder.num_slots,)
    x = torch.randn(2, 3, 16, 16)
    feats = model.get_image_features(
        x
    )  # [2, slots, d_llm]: one vocabulary row per slot (hard, identity connector)
    emb = (
        model.encoder.vocab.detach()
    )  # the caption tokens' embeddings of the LLM the encoder was trained for
    assert all(torch.isclose(emb, t).all(1).any() for t in feats.detach().flatten(0, 1))
    cached = caption_pretrained(
        **{k: v for k, v in compose_train(overrides).encoder.items() if not k.startswith("_")}
    )
    assert torch.equal(cached(x), model.encoder(x))
    again = from_pretrained(save_pretrained(model, tmp_path / "saved"))
    ids = torch.tensor([[model.image_token_id] * model.connector.num_tokens + [11, 12]])
    logits = model(ids, torch.ones_like(ids), pixel_values=x[:1])["logits"]
    assert torch.allclose(again(ids, torch.ones_like(ids), pixel_values=x[:1])["logits"], logits, atol=1e-5)
    with pytest.raises(ValueError, match="init_identity"):
        MlpConnector(in_dim=4, out_dim=8, grid=(2,), depth=1, init_identity=True)
