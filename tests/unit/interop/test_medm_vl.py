"""MedM-VL checkpoints: both config schemas and its state-dict prefixes, read into a MedVLM.

Each test writes a tiny checkpoint in MedM-VL's layout (``config.json``, safetensors with MedM-VL's key
names, its tokenizer without image tokens) from randomly initialised reference modules, then checks that
the imported model's logits equal a forward pass written the way MedM-VL computes it (hidden state of the
selected layer, MedM-VL's feature selection, its connector, features spliced in place of one placeholder)
from the same tensors, and that it prompts with MedM-VL's template.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from safetensors.torch import save_file
from transformers import AutoModelForCausalLM, Qwen2Config, SiglipVisionConfig, SiglipVisionModel

from medmvl.data.schema import IMAGE3D_TOKEN, IMAGE_TOKEN
from medmvl.inference.loading import load_model
from medmvl.interop.medm_vl import MedmvlImportError, is_medmvl_checkpoint, load_medmvl
from medmvl.interop.serialization import from_pretrained, save_pretrained
from medmvl.models.llm.tokenizer import load_tokenizer
from tests.helpers.offline import FAMILIES

SYSTEM = (
    "A chat between a curious user and an artificial intelligence assistant. The assistant gives helpful, "
    "detailed, and polite answers to the user's questions."
)
LLM = Qwen2Config(
    vocab_size=151936,  # Qwen2.5's embedding is larger than its tokenizer, as in the real checkpoints
    hidden_size=32,
    intermediate_size=64,
    num_hidden_layers=2,
    num_attention_heads=4,
    num_key_value_heads=2,
    tie_word_embeddings=True,
)
VISION = SiglipVisionConfig(
    image_size=32,
    patch_size=8,
    hidden_size=32,
    intermediate_size=64,
    num_hidden_layers=2,
    num_attention_heads=4,
)


def _write(folder: Path, config: dict, tensors: dict[str, torch.Tensor], shards: int = 1) -> Path:
    """A MedM-VL checkpoint folder: config.json, safetensors (optionally sharded), tokenizer files."""
    folder.mkdir(parents=True)
    (folder / "config.json").write_text(json.dumps(config))
    tensors = {k: v.detach().contiguous() for k, v in tensors.items()}
    keys = sorted(tensors)
    if shards == 1:
        save_file(tensors, str(folder / "model.safetensors"))
    else:
        weight_map = {}
        for i in range(shards):
            name = f"model-{i + 1:05d}-of-{shards:05d}.safetensors"
            part = keys[i::shards]
            save_file({k: tensors[k] for k in part}, str(folder / name))
            weight_map.update(dict.fromkeys(part, name))
        (folder / "model.safetensors.index.json").write_text(json.dumps({"weight_map": weight_map}))
    tok = load_tokenizer(**FAMILIES["qwen2.5"], image_tokens=())  # MedM-VL's tokenizer has no <image>
    tok.save_pretrained(folder)
    return folder


def _mlp(d_in: int, d_out: int) -> torch.nn.Sequential:
    return torch.nn.Sequential(torch.nn.Linear(d_in, d_out), torch.nn.GELU(), torch.nn.Linear(d_out, d_out))


def _prefixed(prefix: str, module: torch.nn.Module) -> dict[str, torch.Tensor]:
    out = {f"{prefix}{k}": v for k, v in module.state_dict().items()}
    out.pop("llm.lm_head.weight", None)  # tied to the input embedding: HF saves it once
    return out


def _reference_logits(llm, ids: list[int], placeholder: int, feats: torch.Tensor) -> torch.Tensor:
    """MedM-VL's splice: text embeddings before and after one placeholder, the features in between.

    MedM-VL's placeholder is a negative id outside the vocabulary; it is never embedded.
    """
    at = ids.index(placeholder)
    emb = llm.get_input_embeddings()
    before, after = emb(torch.tensor(ids[:at])), emb(torch.tensor(ids[at + 1 :]))
    return llm(inputs_embeds=torch.cat([before, feats[0], after])[None]).logits  # [1, t, v]


def _close(ours: torch.Tensor, expected: torch.Tensor) -> None:
    """Equal logits over MedM-VL's vocabulary (medmvl appends its image tokens after it)."""
    assert ours.shape[:2] == expected.shape[:2] and ours.shape[2] >= expected.shape[2]
    torch.testing.assert_close(ours[..., : expected.shape[2]], expected, atol=1e-5, rtol=0)


def _ours(model, prompt_ids: list[int], token: str, pixels: dict) -> tuple[list[int], torch.Tensor]:
    """The imported model's logits, with the placeholder expanded to its token count."""
    token_id = model.tokenizer.convert_tokens_to_ids(token)
    ids = []
    for t in prompt_ids:
        ids += [t] * model.image_token_counts[token] if t == token_id else [t]
    x = torch.tensor([ids])
    return ids, model(input_ids=x, attention_mask=torch.ones_like(x), **pixels)["logits"]


def _v1_2d(tmp_path: Path, shards: int = 2) -> tuple[Path, dict]:
    torch.manual_seed(0)
    vision, mlp = SiglipVisionModel(VISION).eval(), _mlp(32, 32)
    llm = AutoModelForCausalLM.from_config(LLM).eval()
    config = {
        "architectures": ["LVLMForConditionalGeneration"],
        "llm_type": "qwen2",
        "llm_name_or_path": "Qwen/Qwen2.5-3B-Instruct",
        "llm_max_length": 2048,
        "llm_padding_side": "right",
        "tokenizer_use_fast": False,
        "encoder_image_type": "siglip",
        "encoder_image_name_or_path": "google/siglip-base-patch16-256-multilingual",
        "encoder_image_select_layer": -1,
        "encoder_image_select_feature": "cls_patch",
        "connector_image_type": "mlp",
        "connector_image_name": "mlp2x_gelu",
        "connector_image_path": None,
        "encoder_image3d_type": None,
        "connector_image3d_type": None,
        "llm_config": LLM.to_dict(),
        "encoder_image_config": VISION.to_dict(),
        "connector_image_config": {
            "connector_type": "mlp",
            "connector_name": "mlp2x_gelu",
            "image_size": 32,
            "patch_size": 8,
            "input_dim": 32,
            "output_dim": 32,
        },
        "encoder_image3d_config": None,
        "connector_image3d_config": None,
    }
    tensors = {
        **_prefixed("llm.", llm),
        **_prefixed("encoder_image.encoder.", vision),
        **_prefixed("connector_image.connector.", mlp),
    }
    return _write(tmp_path / "medm_vl_2d", config, tensors, shards), {
        "vision": vision,
        "mlp": mlp,
        "llm": llm,
    }


@pytest.mark.slow
@torch.no_grad()
def test_v1_schema_2d_sharded_matches_medmvl_forward(tmp_path: Path) -> None:
    folder, ref = _v1_2d(tmp_path)
    assert is_medmvl_checkpoint(folder)
    model = load_medmvl(folder)
    assert model.image_token_counts == {IMAGE_TOKEN: 16}  # SigLIP cls_patch in MedM-VL: all 4x4 patches

    tok = model.tokenizer
    prompt = tok.apply_chat_template(
        [{"role": "user", "content": "What is shown? <image>"}], tokenize=False, add_generation_prompt=True
    )
    assert prompt == f"{SYSTEM} USER: What is shown? <image> ASSISTANT:"  # as written, as MedM-VL
    prompt_ids = tok.encode(prompt, add_special_tokens=False)
    pixels = torch.randn(1, 3, 32, 32)
    ids, ours = _ours(model, prompt_ids, IMAGE_TOKEN, {"pixel_values": pixels})

    feats = ref["vision"](pixel_values=pixels, output_hidden_states=True).hidden_states[-1]  # cls_patch: all
    expected = _reference_logits(
        ref["llm"], prompt_ids, tok.convert_tokens_to_ids(IMAGE_TOKEN), ref["mlp"](feats)
    )
    _close(ours, expected)

    # the converted folder (medmvl-export) reproduces it, template included
    loaded = from_pretrained(save_pretrained(model, tmp_path / "converted"))
    again = loaded(input_ids=torch.tensor([ids]), attention_mask=torch.ones(1, len(ids)), pixel_values=pixels)
    assert torch.equal(again["logits"], ours) and loaded.tokenizer.chat_template == tok.chat_template
    via = load_model(folder)
    assert via.kind == "medm_vl" and via.prompt["max_length"] == 2048


@pytest.mark.slow
@torch.no_grad()
def test_lvlm_schema_attn_pooling_reads_configs_from_sources(tmp_path: Path) -> None:
    torch.manual_seed(1)
    vision, mlp = SiglipVisionModel(VISION).eval(), _mlp(32, 32)
    attn = torch.nn.MultiheadAttention(embed_dim=32, num_heads=8, batch_first=True).eval()
    query = torch.randn(16, 32)
    llm = AutoModelForCausalLM.from_config(LLM).eval()
    config = {
        "model_type": "lvlm",
        "lvlm_llm_type": "qwen2",
        "lvlm_llm_name_or_path": "Qwen/Qwen2.5-3B-Instruct",
        "lvlm_llm_max_length": 2048,
        "lvlm_encoder_image_type": "siglip",
        "lvlm_encoder_image_name_or_path": "google/siglip-base-patch16-256-multilingual",
        "lvlm_encoder_image_select_layer": -2,
        "lvlm_encoder_image_select_feature": "cls_patch",
        "lvlm_connector_image_type": "attn_pooling",
        "lvlm_connector_image_name": "mlp2x_gelu",
        "lvlm_encoder_image3d_type": None,
        "hidden_size": 32,
    }
    tensors = {
        **_prefixed("llm.", llm),
        **_prefixed("encoder_image.encoder.", vision),
        **_prefixed("connector_image.connector.", mlp),
        **_prefixed("connector_image.attn.", attn),
        "connector_image.query": query,
    }
    folder = _write(tmp_path / "medm_vl_attn", config, tensors)
    # offline, the hub ids cannot be read: each missing source is named, before the LLM is built
    with pytest.raises(MedmvlImportError, match="sources=.*'encoder_image'"):
        load_medmvl(folder)
    VISION.save_pretrained(tmp_path / "siglip")
    with pytest.raises(MedmvlImportError, match="sources=.*'llm'"):
        load_medmvl(folder, sources={"encoder_image": str(tmp_path / "siglip")})
    LLM.save_pretrained(tmp_path / "qwen")
    model = load_medmvl(
        folder, sources={"llm": str(tmp_path / "qwen"), "encoder_image": str(tmp_path / "siglip")}
    )

    tok = model.tokenizer
    prompt = tok.apply_chat_template(
        [{"role": "user", "content": "<image>\nWhere?"}], tokenize=False, add_generation_prompt=True
    )
    prompt_ids = tok.encode(prompt, add_special_tokens=False)
    pixels = torch.randn(1, 3, 32, 32)
    _, ours = _ours(model, prompt_ids, IMAGE_TOKEN, {"pixel_values": pixels})
    hs = vision(pixel_values=pixels, output_hidden_states=True).hidden_states[-2]
    pooled, _ = attn(query[None], hs, hs)  # MedM-VL's AttnPooling: queries attend over all tokens
    expected = _reference_logits(llm, prompt_ids, tok.convert_tokens_to_ids(IMAGE_TOKEN), mlp(pooled))
    _close(ours, expected)


@pytest.mark.slow
@torch.no_grad()
def test_v1_schema_3d_m3dclip_spatial_pooling(tmp_path: Path) -> None:
    from monai.networks.nets import ViT

    torch.manual_seed(2)
    m3d = {
        "model_type": "m3d_clip",
        "in_channels": 1,
        "img_size": [8, 16, 16],
        "patch_size": [2, 4, 4],
        "hidden_size": 32,
        "mlp_dim": 64,
        "num_layers": 2,
        "num_heads": 4,
        "pos_embed": "perceptron",
        "dropout_rate": 0.0,
        "spatial_dims": 3,
    }
    vit = ViT(
        in_channels=1,
        img_size=(8, 16, 16),
        patch_size=(2, 4, 4),
        hidden_size=32,
        mlp_dim=64,
        num_layers=2,
        num_heads=4,
        proj_type="perceptron",
        classification=True,  # M3D-CLIP's ViT: CLS token + a head MedM-VL never uses
        num_classes=2,
        spatial_dims=3,
    ).eval()
    mlp, llm = _mlp(32, 32), AutoModelForCausalLM.from_config(LLM).eval()
    config = {
        "llm_type": "qwen2",
        "llm_name_or_path": "Qwen/Qwen2.5-3B-Instruct",
        "llm_max_length": 2048,
        "encoder_image_type": None,
        "encoder_image3d_type": "m3dclip",
        "encoder_image3d_name_or_path": "GoodBaiBai88/M3D-CLIP",
        "encoder_image3d_select_layer": -1,
        "encoder_image3d_select_feature": "patch",
        "connector_image3d_type": "spatial_pooling",
        "connector_image3d_name": "mlp2x_gelu",
        "llm_config": LLM.to_dict(),
        "encoder_image3d_config": m3d,
        "connector_image3d_config": {
            "connector_type": "spatial_pooling",
            "connector_name": "mlp2x_gelu",
            "img_size": [8, 16, 16],
            "patch_size": [2, 4, 4],
            "input_dim": 32,
            "output_dim": 32,
        },
    }
    tensors = {
        **_prefixed("llm.", llm),
        **_prefixed("encoder_image3d.encoder.vision_encoder.", vit),
        **_prefixed("connector_image3d.connector.", mlp),
        "encoder_image3d.encoder.language_encoder.embeddings.weight": torch.randn(4, 8),  # CLIP text side
        "encoder_image3d.encoder.logit_scale": torch.ones(()),
    }
    folder = _write(tmp_path / "medm_vl_ct", config, tensors)
    model = load_medmvl(folder)
    assert model.image_token_counts == {IMAGE3D_TOKEN: 8}  # (4, 4, 4) patches pooled 2x per axis

    tok = model.tokenizer
    prompt = tok.apply_chat_template(
        [{"role": "user", "content": "<image3d>\nFindings?"}], tokenize=False, add_generation_prompt=True
    )
    prompt_ids = tok.encode(prompt, add_special_tokens=False)
    volume = torch.rand(1, 1, 8, 16, 16)
    _, ours = _ours(model, prompt_ids, IMAGE3D_TOKEN, {"pixel_values_3d": volume})
    _, hidden = vit(volume)
    patches = hidden[-1][:, 1:]  # [1, 64, 32]: MedM-VL 'patch' drops the CLS token
    cube = patches.transpose(1, 2).reshape(1, 32, 4, 4, 4)  # 'b (p1 p2 p3) d -> b d p1 p2 p3'
    pooled = F.avg_pool3d(cube, 2).flatten(2).transpose(1, 2)  # [1, 8, 32]
    expected = _reference_logits(llm, prompt_ids, tok.convert_tokens_to_ids(IMAGE3D_TOKEN), mlp(pooled))
    _close(ours, expected)


def test_what_medmvl_cannot_reproduce_is_refused(tmp_path: Path) -> None:
    folder, _ = _v1_2d(tmp_path, shards=1)
    cfg = json.loads((folder / "config.json").read_text())
    (folder / "config.json").write_text(json.dumps({**cfg, "encoder_image_select_feature": "patch"}))
    with pytest.raises(MedmvlImportError, match="first patch token"):
        load_medmvl(folder)
    (folder / "config.json").write_text(json.dumps({**cfg, "connector_image_name": "mlp2x_relu"}))
    with pytest.raises(MedmvlImportError, match="mlp<depth>x_gelu"):
        load_medmvl(folder)
    (folder / "config.json").write_text(json.dumps(cfg))
    extra = {"connector_image.bogus.weight": torch.zeros(2)}
    save_file(extra, str(folder / "extra.safetensors"))
    index = {"weight_map": {"connector_image.bogus.weight": "extra.safetensors"}}
    index["weight_map"].update(dict.fromkeys(_keys(folder / "model.safetensors"), "model.safetensors"))
    (folder / "model.safetensors.index.json").write_text(json.dumps(index))
    with pytest.raises(MedmvlImportError, match="connector_image.bogus.weight"):
        load_medmvl(folder)


def _keys(file: Path) -> list[str]:
    from safetensors import safe_open

    with safe_open(str(file), framework="pt") as f:
        return list(f.keys())


def test_medmvl_template_is_selectable_and_trains(tmp_path: Path) -> None:
    """``llm.tokenizer.chat_template=medmvl_vicuna.jinja`` renders MedM-VL's prompt, multi-turn too, and
    the data pipeline supervises exactly the answers and their eos."""
    from hydra.utils import instantiate

    from medmvl.data.conversation import IGNORE_INDEX, ConversationEncoder
    from medmvl.data.schema import Sample, Turn
    from tests.conftest import compose_train

    cfg = compose_train(["llm.tokenizer.chat_template=medmvl_vicuna.jinja"])
    tok = instantiate(cfg.llm.tokenizer)
    turns = [
        {"role": "user", "content": "<image>\nWhat is it?"},
        {"role": "assistant", "content": "A CT."},
        {"role": "user", "content": "Where?"},
    ]
    assert tok.apply_chat_template(turns, tokenize=False, add_generation_prompt=True) == (
        f"{SYSTEM} USER: <image>\nWhat is it? ASSISTANT: A CT.<|im_end|>USER: Where? ASSISTANT:"
    )
    enc = ConversationEncoder(tok, image_token_counts={IMAGE_TOKEN: 3}, max_length=256)
    sample = Sample(
        "s0",
        (
            Turn("human", "<image>\nWhat is it?"),
            Turn("gpt", "A CT."),
            Turn("human", "Where?"),
            Turn("gpt", "Chest."),
        ),
        ("x.png",),
    )
    out = enc.encode(sample)
    supervised = out["input_ids"][out["labels"] != IGNORE_INDEX]
    assert tok.decode(supervised) == " A CT.<|im_end|> Chest.<|im_end|>"
    assert (out["input_ids"] == tok.convert_tokens_to_ids(IMAGE_TOKEN)).sum() == 3
