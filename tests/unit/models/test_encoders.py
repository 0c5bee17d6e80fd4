"""Encoder contract: token grid, layer/feature selection, processor settings from the checkpoint folder."""

from __future__ import annotations

import pytest
import torch
from transformers import CLIPImageProcessor, CLIPVisionConfig, CLIPVisionModel

from medmvl.models.encoders.clip import ClipEncoder
from medmvl.models.encoders.siglip import SiglipEncoder

TINY = dict(
    image_size=32,
    patch_size=8,
    hidden_size=32,
    intermediate_size=64,
    num_hidden_layers=3,
    num_attention_heads=4,
)


@pytest.mark.parametrize("cls", [ClipEncoder, SiglipEncoder])
def test_contract_from_config(cls) -> None:
    enc = cls(config=TINY, select_layer=-1)
    out = enc(torch.randn(2, 3, 32, 32))
    assert out.shape == (2, 16, 32)
    assert (enc.out_dim, enc.spatial_dims, enc.grid, enc.num_tokens) == (32, 2, (4, 4), 16)
    assert enc.preprocess["image_size"] == (32, 32) and enc.preprocess["channels"] == 3


def test_select_layer_and_cls_patch() -> None:
    torch.manual_seed(0)
    enc = ClipEncoder(config=TINY, select_layer=-2, select_feature="cls_patch")
    x = torch.randn(1, 3, 32, 32)
    hidden = enc.model(pixel_values=x, output_hidden_states=True).hidden_states
    out = enc(x)
    assert out.shape == (1, 17, 32) and enc.num_tokens == 17
    torch.testing.assert_close(out, hidden[-2])
    enc.select_feature = "patch"
    torch.testing.assert_close(enc(x), hidden[-2][:, 1:])


def test_siglip_refuses_cls() -> None:
    with pytest.raises(ValueError, match="no CLS token"):
        SiglipEncoder(config=TINY, select_feature="cls_patch")


def test_local_folder_weights_and_processor(tmp_path) -> None:
    torch.manual_seed(0)
    ref = CLIPVisionModel(CLIPVisionConfig(**TINY))
    ref.save_pretrained(tmp_path)
    CLIPImageProcessor(image_mean=[0.1, 0.2, 0.3], image_std=[0.9, 0.8, 0.7]).save_pretrained(tmp_path)
    enc = ClipEncoder(str(tmp_path), select_layer=-1)
    assert enc.preprocess["image_mean"] == pytest.approx((0.1, 0.2, 0.3))
    assert enc.preprocess["image_std"] == pytest.approx((0.9, 0.8, 0.7))
    x = torch.randn(1, 3, 32, 32)
    torch.testing.assert_close(
        enc(x), ref(pixel_values=x, output_hidden_states=True).hidden_states[-1][:, 1:]
    )
