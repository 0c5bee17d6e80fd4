"""The caption-slot encoder over a 3D backbone: volumes read by the training loader, cached, reloaded."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from medmvl.demo import caption_pretrain
from medmvl.demo.caption_pretrain import caption_pretrained, load_captioned_images
from medmvl.interop.serialization import from_pretrained, save_pretrained
from medmvl.models.build import build_model
from tests.conftest import compose_train

SIZE = (4, 16, 16)  # [d, h, w]


def _volume_captions(folder: Path) -> Path:
    """Eight uint8 SPL volumes, bright on the left or the right half, captioned with the side."""
    records = []
    (folder / "vols").mkdir()
    for i, side in enumerate(["left", "right"] * 4):
        vol = np.zeros(SIZE, np.uint8)
        vol[:, :, : SIZE[2] // 2] = 255 if side == "left" else 0
        vol[:, :, SIZE[2] // 2 :] = 255 if side == "right" else 0
        np.save(folder / "vols" / f"{i}.npy", vol)
        records.append(
            {
                "id": str(i),
                "image3d": [f"vols/{i}.npy"],
                "conversations": [
                    {"from": "human", "value": "<image3d>"},
                    {"from": "gpt", "value": f"Bright on the {side}."},
                ],
            }
        )
    (folder / "captions.json").write_text(json.dumps(records))
    return folder / "captions.json"


def _overrides(captions: Path) -> list[str]:
    return [
        "data=demo_3d",  # data.volume: uint8 .npy files read as they are (what the encoder's volume reads)
        "encoder=caption_slots_3d",
        f"encoder.annotations={captions}",
        f"encoder.backbone.config.img_size=[{','.join(map(str, SIZE))}]",
        "encoder.backbone.config.patch_size=[2,8,8]",
        "encoder.backbone.config.hidden_size=16",
        "encoder.backbone.config.mlp_dim=32",
        "encoder.steps=40",
        "encoder.batch_size=8",
        "encoder.lr=3e-3",
        "encoder.hard=true",
        "connector.depth=1",
        "connector.init_identity=true",
    ]


def test_volumes_are_read_by_the_training_loader(tmp_path: Path) -> None:
    captions = _volume_captions(tmp_path)
    pre = {"volume_size": SIZE, "channels": 1, "image_mean": (0.0,), "image_std": (1.0,), "hu_window": None}
    vols, texts = load_captioned_images(
        captions, pre, volume={"intensity": "uint8", "crop_foreground": False}
    )
    assert vols.shape == (8, 1, *SIZE) and texts[1] == "Bright on the right."
    assert vols[0, 0, :, :, 0].eq(1.0).all() and vols[0, 0, :, :, -1].eq(0.0).all()  # /255, not cropped
    records = json.loads(captions.read_text())
    records[0]["image"], records[0]["conversations"][0]["value"] = ["x.png"], "<image>\n<image3d>"
    captions.write_text(json.dumps(records))
    with pytest.raises(ValueError, match="exactly one image3d"):
        load_captioned_images(captions, pre)


def test_3d_caption_slot_model_builds_caches_and_reloads(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # only the encoder cache goes to tmp_path (the tokenizer stays in the shared cache: converted once)
    monkeypatch.setattr(caption_pretrain, "cache_dir", lambda: tmp_path / "cache")
    overrides = _overrides(_volume_captions(tmp_path))
    torch.manual_seed(0)
    model = build_model(compose_train(overrides))
    (folder,) = (tmp_path / "cache" / "encoders").iterdir()
    settings = json.loads((folder / "settings.json").read_text())
    assert settings["volume"]["intensity"] == "uint8"  # the read options are part of the cache key
    enc = model.encoder
    assert enc.spatial_dims == 3 and enc.preprocess["volume_size"] == SIZE
    assert model.volume_config is not None and model.image_config is None  # it serves <image3d>
    vols, _ = load_captioned_images(
        tmp_path / "captions.json", enc.preprocess, volume={"intensity": "uint8", "crop_foreground": False}
    )
    words = [model.tokenizer.decode([enc.vocab_ids[i]]) for i in enc.slot_logits(vols).argmax(-1)[:, 3]]
    assert words == [" left", " right"] * 4  # the side slot learned from the volumes
    cfg = compose_train(overrides)
    cached = caption_pretrained(**{k: v for k, v in cfg.encoder.items() if not k.startswith("_")})
    assert torch.equal(cached(vols), enc(vols))
    again = from_pretrained(save_pretrained(model, tmp_path / "saved"))
    assert again.encoder.spatial_dims == 3
    ids = torch.tensor([[model.image3d_token_id] * model.connector.num_tokens + [11, 12]])
    logits = model(ids, torch.ones_like(ids), pixel_values_3d=vols[:1])["logits"]
    logits_again = again(ids, torch.ones_like(ids), pixel_values_3d=vols[:1])["logits"]
    assert torch.allclose(logits_again, logits, atol=1e-5)
