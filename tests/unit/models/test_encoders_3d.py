"""3D encoders: MONAI ViT (m3d_clip, tiny3d), MedM-CLIP-CT's tower, slice-wise 2D encoders.

Checkpoints are written by the tests in the published layouts (M3D-CLIP: ``vision_encoder.*`` of a MONAI
ViT built with ``classification=True``; MedM-CLIP-CT: ``vision_encoder.*`` of its vit-pytorch ViT) and
loaded through ``config.json`` + safetensors only.
"""

from __future__ import annotations

import json
import logging

import pytest
import torch
import torch.nn.functional as F
from hydra.utils import instantiate
from monai.networks.nets import ViT
from safetensors.torch import save_file

from medmvl.models.encoders.clip import ClipEncoder
from medmvl.models.encoders.medm_clip import MedMClipEncoder
from medmvl.models.encoders.siglip import SiglipEncoder
from medmvl.models.encoders.slices import SliceEncoder
from medmvl.models.encoders.vit3d import Vit3dEncoder
from tests.conftest import compose_train

# a small M3D-CLIP: (8, 16, 16) volume, patch (4, 8, 8) -> grid (2, 2, 2)
M3D_SMALL = dict(
    in_channels=1,
    img_size=[8, 16, 16],
    patch_size=[4, 8, 8],
    hidden_size=32,
    mlp_dim=64,
    num_layers=3,
    num_heads=4,
)
TINY2D = dict(
    image_size=16,
    patch_size=8,
    hidden_size=32,
    intermediate_size=64,
    num_hidden_layers=2,
    num_attention_heads=4,
)


def _m3d_reference() -> ViT:
    """M3D's ViT: MONAI's with classification=True and pos_embed (proj_type) 'perceptron'."""
    torch.manual_seed(0)
    g = {k: v for k, v in M3D_SMALL.items()}
    ref = ViT(proj_type="perceptron", classification=True, spatial_dims=3, **g).eval()
    with torch.no_grad():  # break MONAI's zero/one inits so every tensor matters
        for p in ref.parameters():
            p.add_(torch.randn_like(p) * 0.1)
    return ref


def _write_m3d_folder(folder, ref: ViT, layout: str) -> None:
    state = {k: v.contiguous() for k, v in ref.state_dict().items()}
    if layout != "monai16":  # M3D-CLIP was saved with MONAI 1.3: no cross-attention norms, no head
        state = {k: v for k, v in state.items() if "cross_attn" not in k and "classification_head" not in k}
    if layout == "bare":  # pretrained_ViT.bin converted to safetensors: the ViT's own keys
        save_file(state, str(folder / "pretrained_ViT.safetensors"))
    else:
        full = {f"vision_encoder.{k}": v for k, v in state.items()}
        full |= {
            "language_encoder.embeddings.word_embeddings.weight": torch.randn(10, 32),
            "mm_vision_proj.weight": torch.randn(32, 32),
            "mm_language_proj.weight": torch.randn(32, 32),
            "logit_scale": torch.tensor(2.6),
        }
        save_file(full, str(folder / "model.safetensors"))
    config = {
        "architectures": ["M3DCLIP"],
        "model_type": "m3d_clip",
        "language_model_name_or_path": "bert-base-uncased",
        "local_loss": False,
        "gather_loss": True,
        "pos_embed": "perceptron",
        "dropout_rate": 0.0,
        "spatial_dims": 3,
        "max_text_len": 128,
        "vocab_size": 30522,
        **M3D_SMALL,
    }
    (folder / "config.json").write_text(json.dumps(config))


def test_tiny3d_contract(tmp_path) -> None:
    enc = instantiate(compose_train(["encoder=tiny3d"], output_dir=tmp_path).encoder)
    out = enc(torch.rand(2, 1, 16, 32, 32))
    assert out.shape == (2, 64, 64)
    assert (enc.out_dim, enc.spatial_dims, enc.grid, enc.num_tokens) == (64, 3, (4, 4, 4), 64)
    assert enc.preprocess == {
        "volume_size": (16, 32, 32),
        "channels": 1,
        "image_mean": (0.0,),
        "image_std": (1.0,),
        "hu_window": (-1000.0, 1000.0),
    }
    with pytest.raises(ValueError, match=r"\(c, d, h, w\) = \(1, 16, 32, 32\)"):
        enc(torch.rand(2, 1, 32, 32))  # a 2D image given to a 3D encoder


@pytest.mark.parametrize("layout", ["m3d", "monai16", "bare"])
@pytest.mark.parametrize("select_layer", [-1, -2, 0])
def test_m3d_checkpoint_matches_monai_hidden_states(tmp_path, layout, select_layer, caplog) -> None:
    ref = _m3d_reference()
    _write_m3d_folder(tmp_path, ref, layout)
    x = torch.rand(2, 1, 8, 16, 16)
    with torch.no_grad():
        hidden = ref(x)[1][select_layer]  # [b, 1+n, d]: MedM-VL's hidden_states[select_layer]
    with caplog.at_level(logging.INFO):
        enc = Vit3dEncoder(str(tmp_path), select_layer=select_layer, select_feature="cls_patch").eval()
    assert len(enc.tower.blocks) == select_layer % 3 + 1  # later blocks are not built
    assert "norm.*" in caplog.text  # dropped tensors are reported, not silently ignored
    torch.testing.assert_close(enc(x), hidden)
    enc.select_feature = "patch"
    torch.testing.assert_close(enc(x), hidden[:, 1:])
    assert enc.grid == (2, 2, 2) and enc.num_tokens == 8


def test_every_encoder_parameter_gets_a_gradient() -> None:
    """DDP (find_unused_parameters=false) needs it: no final norm, later blocks or unused MONAI norms."""
    for enc in (
        Vit3dEncoder(config=M3D_SMALL, select_layer=-2),
        MedMClipEncoder(config=M3D_SMALL, select_layer=-2),
    ):
        enc(torch.rand(1, 1, 8, 16, 16)).sum().backward()
        assert [n for n, p in enc.named_parameters() if p.grad is None] == []


def test_export_config_rebuilds_the_same_encoder() -> None:
    for enc in (
        Vit3dEncoder(config=M3D_SMALL, select_layer=-2, image_mean=[0.1], image_std=[0.2]),
        MedMClipEncoder(config=M3D_SMALL),
        SliceEncoder(SiglipEncoder(config=TINY2D, select_layer=-1), num_slices=3, slice_chunk=2),
    ):
        enc.eval()
        twin = instantiate(json.loads(json.dumps(enc.export_config()))).eval()
        twin.load_state_dict(enc.state_dict())
        x = torch.rand(1, enc.preprocess["channels"], *enc.preprocess["volume_size"])
        torch.testing.assert_close(twin(x), enc(x))
        assert twin.preprocess == enc.preprocess


def test_sdpa_and_eager_attention_agree() -> None:
    torch.manual_seed(0)
    sdpa = Vit3dEncoder(config=M3D_SMALL, select_feature="cls_patch").eval()
    eager = Vit3dEncoder(config=M3D_SMALL, select_feature="cls_patch", attn_implementation="eager").eval()
    eager.load_state_dict(sdpa.state_dict())
    x = torch.rand(2, 1, 8, 16, 16)
    torch.testing.assert_close(sdpa(x), eager(x), atol=1e-5, rtol=1e-4)
    assert all(b.attn.use_flash_attention for b in sdpa.tower.blocks)
    assert not any(b.attn.use_flash_attention for b in eager.tower.blocks)


def test_pickle_only_folder_is_refused(tmp_path) -> None:
    ref = _m3d_reference()
    _write_m3d_folder(tmp_path, ref, "m3d")
    (tmp_path / "model.safetensors").unlink()
    (tmp_path / "pytorch_model.bin").write_bytes(b"not a pickle: must never be opened")
    with pytest.raises(FileNotFoundError, match=r"(?s)only pickle weights.*weights_only=True.*safetensors"):
        Vit3dEncoder(str(tmp_path))


def test_wrong_architecture_and_folder_errors(tmp_path) -> None:
    _write_m3d_folder(tmp_path, _m3d_reference(), "m3d")
    with pytest.raises(RuntimeError, match="do not fit Vit3dEncoder"):
        Vit3dEncoder(str(tmp_path), config={"mlp_dim": 48})
    with pytest.raises(FileNotFoundError, match="does not exist"):
        Vit3dEncoder(str(tmp_path / "nowhere"))
    (tmp_path / "config.json").unlink()
    with pytest.raises(FileNotFoundError, match="no config.json"):
        Vit3dEncoder(str(tmp_path))
    with pytest.raises(ValueError, match="outside a 3-layer tower"):
        Vit3dEncoder(config=M3D_SMALL, select_layer=3)
    with pytest.raises(ValueError, match="without a CLS token"):
        Vit3dEncoder(config={**M3D_SMALL, "cls_token": False}, select_feature="cls_patch")


def test_hub_id_failure_says_how_to_fix(monkeypatch) -> None:
    def offline(*args, **kwargs):
        raise OSError("offline mode")

    monkeypatch.setattr("huggingface_hub.snapshot_download", offline)  # never reach a hub in tests
    with pytest.raises(OSError, match="not a local folder and could not be fetched .*pass the folder"):
        Vit3dEncoder("GoodBaiBai88/M3D-CLIP")


@pytest.mark.parametrize(("option", "params"), [("m3d_clip", 87_387_648), ("medm_clip", 87_419_648)])
def test_real_configs_build_on_meta(tmp_path, option, params) -> None:
    cfg = compose_train([f"encoder={option}", "encoder.name_or_path=null"], output_dir=tmp_path)
    with torch.device("meta"):
        enc = instantiate(cfg.encoder)
    assert sum(p.numel() for p in enc.parameters()) == params  # ViT-B minus the unused final norm / head
    assert (enc.grid, enc.num_tokens, enc.out_dim) == ((8, 16, 16), 2048, 768)
    assert enc.preprocess["volume_size"] == (32, 256, 256)


# ---- MedM-CLIP-CT ------------------------------------------------------------------------------------


def _medm_state(layers: int, dim: int, mlp: int, n: int, patch_dim: int) -> dict[str, torch.Tensor]:
    """MedM-CLIP-CT's vision_encoder tensors, named and shaped as MedM-VL's ViT (vit-pytorch layout)."""
    torch.manual_seed(1)
    r = lambda *shape: torch.randn(*shape) * 0.2  # noqa: E731
    s = {
        "to_patch_embedding.1.weight": 1 + r(patch_dim),
        "to_patch_embedding.1.bias": r(patch_dim),
        "to_patch_embedding.2.weight": r(dim, patch_dim),
        "to_patch_embedding.2.bias": r(dim),
        "to_patch_embedding.3.weight": 1 + r(dim),
        "to_patch_embedding.3.bias": r(dim),
        "pos_embedding": r(1, n + 1, dim),
        "cls_token": r(1, 1, dim),
        "mlp_head.0.weight": 1 + r(dim),
        "mlp_head.0.bias": r(dim),
        "mlp_head.1.weight": r(dim, dim),
        "mlp_head.1.bias": r(dim),
    }
    for i in range(layers):
        p = f"transformer_layers.{i}."
        s |= {
            p + "self_attn.in_proj_weight": r(3 * dim, dim),
            p + "self_attn.in_proj_bias": r(3 * dim),
            p + "self_attn.out_proj.weight": r(dim, dim),
            p + "self_attn.out_proj.bias": r(dim),
            p + "linear1.weight": r(mlp, dim),
            p + "linear1.bias": r(mlp),
            p + "linear2.weight": r(dim, mlp),
            p + "linear2.bias": r(dim),
            p + "norm1.weight": 1 + r(dim),
            p + "norm1.bias": r(dim),
            p + "norm2.weight": 1 + r(dim),
            p + "norm2.bias": r(dim),
        }
    return s


def _medm_reference(s: dict[str, torch.Tensor], x: torch.Tensor, layers: int, heads: int) -> torch.Tensor:
    """MedM-CLIP-CT's forward written out with functional ops: patches (p1 p2 pf c), LN-Linear-LN,
    CLS + position embedding, post-norm ReLU encoder layers."""
    b, c, d, h, w = x.shape
    pf, p1, p2 = 4, 8, 8
    patches = x.view(b, c, d // pf, pf, h // p1, p1, w // p2, p2).permute(0, 2, 4, 6, 5, 7, 3, 1)
    t = patches.reshape(b, -1, p1 * p2 * pf * c)
    ln = lambda t, k: F.layer_norm(t, t.shape[-1:], s[k + ".weight"], s[k + ".bias"], eps=1e-5)  # noqa: E731
    lin = lambda t, k: F.linear(t, s[k + ".weight"], s[k + ".bias"])  # noqa: E731
    t = ln(lin(ln(t, "to_patch_embedding.1"), "to_patch_embedding.2"), "to_patch_embedding.3")
    t = torch.cat((s["cls_token"].expand(b, -1, -1), t), dim=1) + s["pos_embedding"]
    dim = t.shape[-1]
    for i in range(layers):
        p = f"transformer_layers.{i}."
        q, k, v = F.linear(t, s[p + "self_attn.in_proj_weight"], s[p + "self_attn.in_proj_bias"]).chunk(3, -1)
        split = lambda z: z.view(b, -1, heads, dim // heads).transpose(1, 2)  # noqa: E731
        att = torch.softmax(split(q) @ split(k).transpose(-1, -2) / (dim // heads) ** 0.5, -1) @ split(v)
        att = lin(att.transpose(1, 2).reshape(b, -1, dim), p + "self_attn.out_proj")
        t = ln(t + att, p + "norm1")
        t = ln(t + lin(torch.relu(lin(t, p + "linear1")), p + "linear2"), p + "norm2")
    return t


def test_medm_clip_checkpoint_matches_published_layout(tmp_path) -> None:
    state = _medm_state(layers=3, dim=32, mlp=64, n=8, patch_dim=256)
    full = {f"vision_encoder.{k}": v for k, v in state.items()}
    full |= {
        "text_encoder.embeddings.word_embeddings.weight": torch.randn(10, 32),
        "logit_scale": torch.tensor(2.6),
    }
    save_file(full, str(tmp_path / "model.safetensors"))
    config = {  # MedMCLIPConfig as saved by MedM-CLIP-CT
        "model_type": "medm-pretrain",
        "hidden_size": 32,
        "dropout_rate": 0.0,
        "gather_loss": True,
        "local_loss": False,
        "image_size": 16,
        "image_patch_size": 8,
        "frame_size": 8,
        "frame_patch_size": 4,
        "image_num_heads": 4,
        "image_mlp_dim": 64,
        "image_num_layers": 3,
        "language_model_name_or_path": "google-bert/bert-base-uncased",
    }
    (tmp_path / "config.json").write_text(json.dumps(config))
    x = torch.rand(2, 1, 8, 16, 16)
    for select_layer, run in ((-1, 3), (-2, 2)):
        enc = MedMClipEncoder(str(tmp_path), select_layer=select_layer, select_feature="cls_patch").eval()
        expected = _medm_reference(state, x, layers=run, heads=4)
        torch.testing.assert_close(enc(x), expected, atol=1e-4, rtol=1e-4)
        assert enc.grid == (2, 2, 2) and enc.num_tokens == 9
    with pytest.raises(ValueError, match="is not an M3D-CLIP config"):
        Vit3dEncoder(str(tmp_path))


# ---- slice-wise 2D encoders ----------------------------------------------------------------------------


def test_slice_encoder_runs_the_2d_encoder_on_every_slice() -> None:
    torch.manual_seed(0)
    inner = SiglipEncoder(config=TINY2D, select_layer=-1).eval()
    enc = SliceEncoder(inner, num_slices=3).eval()
    assert (enc.grid, enc.num_tokens, enc.spatial_dims, enc.out_dim) == ((3, 2, 2), 12, 3, 32)
    assert enc.preprocess["volume_size"] == (3, 16, 16) and enc.preprocess["channels"] == 3
    vol = torch.rand(2, 1, 3, 16, 16)
    out = enc(vol)
    assert out.shape == (2, 12, 32)
    for b in range(2):
        for z in range(3):
            torch.testing.assert_close(
                out[b, 4 * z : 4 * z + 4], inner(vol[b, :, z].expand(3, -1, -1)[None])[0]
            )
    torch.testing.assert_close(out, enc(vol.expand(-1, 3, -1, -1, -1)))  # gray == repeated to 3 channels
    enc.slice_chunk = 4  # 6 slices in chunks of 4 + 2
    torch.testing.assert_close(enc(vol), out)


def test_slice_encoder_refusals() -> None:
    with pytest.raises(ValueError, match="select_feature='patch'"):
        SliceEncoder(ClipEncoder(config=TINY2D, select_feature="cls_patch"))
    with pytest.raises(ValueError, match="needs a 2D slice_encoder"):
        SliceEncoder(Vit3dEncoder(config=M3D_SMALL))
    enc = SliceEncoder(SiglipEncoder(config=TINY2D), num_slices=3)
    with pytest.raises(ValueError, match=r"\(d, h, w\) = \(3, 16, 16\)"):
        enc(torch.rand(1, 1, 4, 16, 16))


def test_siglip_slices_config_nests_the_2d_encoder(tmp_path) -> None:
    cfg = compose_train(["encoder=siglip_slices"], output_dir=tmp_path)
    assert cfg.encoder.slice_encoder.name_or_path == "google/siglip-base-patch16-256-multilingual"
    assert (cfg.encoder.slice_encoder.select_layer, cfg.encoder.num_slices) == (-1, 32)
    over = [
        "encoder=siglip_slices",
        "encoder@encoder.slice_encoder=tiny2d",
        "encoder.num_slices=4",
    ]
    enc = instantiate(compose_train(over, output_dir=tmp_path).encoder)
    assert enc.grid == (4, 4, 4) and enc(torch.rand(1, 1, 4, 32, 32)).shape == (1, 64, 64)
