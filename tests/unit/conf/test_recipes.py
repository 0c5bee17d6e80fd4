"""The MedM-VL recipes (``conf/experiment/medm_vl/*.yaml``): published hyper-parameters, and each model built
on the meta device from the architecture configs shipped in ``experiments/recipes/arch`` (no weights, no
network) with the published parameter counts."""

from __future__ import annotations

import functools
from pathlib import Path
from typing import Any

import pytest
import torch
import yaml
from hydra.utils import instantiate
from omegaconf import OmegaConf, open_dict
from omegaconf.errors import InterpolationResolutionError

from medmvl.cli.train import missing_settings
from medmvl.models.build import build_model
from medmvl.training.stages import apply_stage
from tests.conftest import CONF_DIR, ROOT, compose_train

ARCH = ROOT / "experiments" / "recipes" / "arch"

# Published sizes (HF model cards / config.json; M3D-CLIP's vision tower is MONAI's ViT-B, 87.4 M).
QWEN25_3B = 3_085_938_688
SIGLIP_B16_256 = 92_930_304  # SiglipVisionModel incl. its MAP head
M3D_CLIP_VIT = 87_389_184 - 1536  # without the final LayerNorm: features are read before it (vit3d.py)
# Connectors, from their definitions: d_enc 768 -> d_llm 2048
MLP2X_GELU = (768 * 2048 + 2048) + (2048 * 2048 + 2048)
ATTN_POOL = 256 * 768 + (3 * 768 * 768 + 3 * 768) + (768 * 768 + 768) + MLP2X_GELU  # queries, MHA, mlp
# LoRA r 128 on every linear layer of the 36 Qwen2.5-3B decoder layers: r * (in + out) per layer
QWEN_LINEARS = [
    (2048, 2048),
    (2048, 256),
    (2048, 256),
    (2048, 2048),
    (2048, 11008),
    (2048, 11008),
    (11008, 2048),
]
LORA_R128 = 36 * sum(128 * (i + o) for i, o in QWEN_LINEARS)

PRETRAIN = {"encoder": "frozen", "connector": "full", "llm": "frozen"}
FINETUNE = {"encoder": "full", "connector": "full", "llm": "full"}
LORA = {"encoder": "frozen", "connector": "full", "llm": "lora"}
# MedM-VL's scripts (MSIIP/MedM-VL examples/): lr, epochs, per-device batch, accumulation, format, stage
PUBLISHED: dict[str, dict[str, Any]] = {
    "medm_vl/2d_3b_pretrain": dict(lr=1e-3, epochs=1, batch=64, accum=2, format="plain", modes=PRETRAIN),
    "medm_vl/2d_3b_finetune": dict(lr=2e-5, epochs=3, batch=16, accum=4, format="chat", modes=FINETUNE),
    "medm_vl/2d_3b_lora": dict(lr=2e-4, epochs=1, batch=16, accum=4, format="chat", modes=LORA),
    "medm_vl/ct_chest_3b_pretrain": dict(
        lr=1e-3, epochs=1, batch=16, accum=1, format="plain", modes=PRETRAIN
    ),
    "medm_vl/ct_chest_3b_finetune": dict(lr=2e-5, epochs=1, batch=8, accum=1, format="chat", modes=FINETUNE),
    "medm_vl/ct_chest_3b_m3dclip_pretrain": dict(
        lr=1e-3, epochs=1, batch=16, accum=1, format="plain", modes=PRETRAIN
    ),
    "medm_vl/ct_chest_3b_m3dclip_finetune": dict(
        lr=2e-5, epochs=1, batch=8, accum=1, format="chat", modes=FINETUNE
    ),
    "medm_vl/ct_chest_3b_lora": dict(lr=2e-4, epochs=1, batch=8, accum=1, format="chat", modes=LORA),
}
RECIPES = sorted(PUBLISHED)


@functools.cache
def offline_tokenizer() -> Any:
    """The tiny stack's Qwen2 tokenizer (offline, cached), built once for every recipe here."""
    return instantiate(compose_train(["llm=tiny"]).llm.tokenizer)


def _arch(name: str) -> dict[str, Any]:
    return yaml.safe_load((ARCH / f"{name}.yaml").read_text())


def _encoder_kind(cfg: Any) -> str:
    return cfg.encoder._target_.rsplit(".", 1)[-1]


def test_every_recipe_is_checked() -> None:
    folder = CONF_DIR / "experiment" / "medm_vl"
    assert sorted(f"medm_vl/{p.stem}" for p in folder.glob("*.yaml")) == RECIPES


@pytest.mark.parametrize("recipe", RECIPES)
def test_recipe_has_the_published_settings(recipe: str, tmp_path: Path) -> None:
    want = PUBLISHED[recipe]
    cfg = compose_train([f"experiment={recipe}"], output_dir=tmp_path)
    assert cfg.llm.name_or_path == "Qwen/Qwen2.5-3B-Instruct"
    siglip = cfg.encoder.get("slice_encoder", cfg.encoder)
    if "m3dclip" in recipe:
        assert cfg.encoder.name_or_path == "GoodBaiBai88/M3D-CLIP" and cfg.connector.factor == 2
        assert _encoder_kind(cfg) == "Vit3dEncoder"
    else:
        assert siglip.name_or_path == "google/siglip-base-patch16-256-multilingual"
        assert siglip.select_layer == -1 and siglip.select_feature == "patch"
    if "ct_chest" in recipe and "m3dclip" not in recipe:
        assert _encoder_kind(cfg) == "SliceEncoder" and cfg.encoder.num_slices == 32
        assert cfg.connector.num_queries == 256 and cfg.connector.num_heads == 8
    assert cfg.connector.depth == 2  # mlp2x_gelu
    stage = OmegaConf.to_container(cfg.stage)
    assert {m: stage[m]["mode"] for m in ("encoder", "connector", "llm")} == want["modes"]
    assert {stage[m]["lr"] for m, mode in want["modes"].items() if mode != "frozen"} == {want["lr"]}
    if want["modes"]["llm"] == "lora":
        assert stage["llm"]["lora"] == {
            "r": 128,
            "alpha": 256,
            "dropout": 0.05,
            "bias": "none",
            "target_modules": None,
            "first_layer": None,
        }
    assert cfg.trainer.max_epochs == want["epochs"] and cfg.trainer.max_steps == -1
    assert cfg.data.batch_size == want["batch"] and cfg.trainer.accumulate_grad_batches == want["accum"]
    assert cfg.data.format == want["format"] and cfg.data.max_length == 2048
    assert cfg.data._target_.endswith("MedVLDataModule") and OmegaConf.is_missing(cfg.data, "annotations")
    assert cfg.scheduler._target_.endswith("cosine_with_warmup") and cfg.scheduler.warmup_ratio == 0.03
    assert cfg.optimizer.weight_decay == 0.0
    assert cfg.trainer.strategy.activation_checkpointing is True  # MedM-VL: gradient checkpointing
    if want["modes"] == PRETRAIN:
        assert cfg.init_from is None
    else:  # stage 2 and LoRA start from a trained model, and say so when it is not given
        with pytest.raises(InterpolationResolutionError, match="init_from is required by this experiment"):
            cfg.get("init_from")
        assert "init_from: give init_from=<model folder>" in missing_settings(cfg)
        given = compose_train([f"experiment={recipe}", "init_from=/models/stage1"], output_dir=tmp_path)
        assert given.init_from == "/models/stage1"


@pytest.mark.parametrize("recipe", RECIPES)
def test_recipe_builds_on_meta_with_published_sizes(recipe: str, tmp_path: Path) -> None:
    cfg = compose_train([f"experiment={recipe}"], output_dir=tmp_path)
    with open_dict(cfg):
        cfg.init_from = None
        cfg.llm.name_or_path = None
        cfg.llm.config = _arch("qwen2.5-3b-instruct")
        cfg.llm.tokenizer = {"_target_": f"{__name__}.offline_tokenizer"}
        kind = _encoder_kind(cfg)
        if kind == "SliceEncoder":
            cfg.encoder.slice_encoder.name_or_path = None
            cfg.encoder.slice_encoder.config = _arch("siglip-base-patch16-256-multilingual")
        elif kind == "SiglipEncoder":
            cfg.encoder.name_or_path = None
            cfg.encoder.config = _arch("siglip-base-patch16-256-multilingual")
        else:  # M3D-CLIP: conf/encoder/m3d_clip.yaml repeats its architecture
            cfg.encoder.name_or_path = None
    with torch.device("meta"):
        model = build_model(cfg)
        total = {
            name: sum(p.numel() for p in getattr(model, name).parameters())
            for name in ("encoder", "connector", "llm")
        }
        # image placeholder tokens beyond Qwen's 151,936-row embedding grow it (the offline vocabulary is full)
        extra_rows = model.llm.config.vocab_size - 151_936
        assert 0 <= extra_rows <= 2
        assert total["llm"] == QWEN25_3B + extra_rows * 2048  # tied input/output embeddings
        assert total["encoder"] == (M3D_CLIP_VIT if kind == "Vit3dEncoder" else SIGLIP_B16_256)
        assert total["connector"] == (ATTN_POOL if kind == "SliceEncoder" else MLP2X_GELU)
        assert model.connector.num_tokens == 256  # 16x16 patches, 256 queries, 4x8x8 pooled
        apply_stage(model, OmegaConf.to_container(cfg.stage, resolve=True))
        trainable = {
            name: sum(p.numel() for p in getattr(model, name).parameters() if p.requires_grad)
            for name in ("encoder", "connector", "llm")
        }
    modes = PUBLISHED[recipe]["modes"]
    expected = {name: total[name] if mode == "full" else 0 for name, mode in modes.items()}
    if modes["llm"] == "lora":
        expected["llm"] = LORA_R128
    assert trainable == expected
