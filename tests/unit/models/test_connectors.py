"""Connectors: token counts for every encoder x connector pair, pooling arithmetic, save/restore."""

from __future__ import annotations

import math

import pytest
import torch
from hydra.utils import instantiate
from safetensors.torch import load_model, save_model

from medmvl.models.connectors.pooling import AttnPoolConnector, SpatialPoolConnector
from tests.conftest import compose_train

ENCODERS = {
    "tiny2d": ["encoder=tiny2d"],
    "tiny3d": ["encoder=tiny3d"],
    "slices": ["encoder=siglip_slices", "encoder@encoder.slice_encoder=tiny2d", "encoder.num_slices=8"],
}
CONNECTORS = ["mlp", "spatial_pool", "attn_pool"]
# (encoder grid, tokens out of mlp / spatial_pool (factor 2) / attn_pool (256 queries))
EXPECTED = {
    "tiny2d": ((4, 4), {"mlp": 16, "spatial_pool": 4, "attn_pool": 256}),
    "tiny3d": ((4, 4, 4), {"mlp": 64, "spatial_pool": 8, "attn_pool": 256}),
    "slices": ((8, 4, 4), {"mlp": 128, "spatial_pool": 16, "attn_pool": 256}),
}


@pytest.fixture(scope="module")
def encoders() -> dict:
    torch.manual_seed(0)
    return {name: instantiate(compose_train([*ov]).encoder).eval() for name, ov in ENCODERS.items()}


@pytest.mark.parametrize("connector", CONNECTORS)
@pytest.mark.parametrize("encoder", list(ENCODERS))
def test_token_counts_for_every_pair(encoders, encoder, connector, tmp_path) -> None:
    enc = encoders[encoder]
    grid, counts = EXPECTED[encoder]
    cfg = compose_train([*ENCODERS[encoder], f"connector={connector}"], output_dir=tmp_path)
    conn = instantiate(cfg.connector)(in_dim=enc.out_dim, out_dim=24, grid=enc.grid)
    prep = enc.preprocess
    size = prep["volume_size"] if enc.spatial_dims == 3 else prep["image_size"]
    with torch.no_grad():
        tokens = enc(torch.rand(2, prep["channels"], *size))  # [2, n, d_enc]
        out = conn(tokens)  # [2, m, 24]
    assert enc.grid == grid and tokens.shape == (2, math.prod(grid), enc.out_dim)
    assert conn.num_tokens == counts[connector]
    assert out.shape == (2, counts[connector], 24)


def test_spatial_pool_m3d_grid_averages_blocks() -> None:
    conn = SpatialPoolConnector(in_dim=8, out_dim=16, grid=(8, 16, 16), factor=2)
    assert conn.pooled_grid == (4, 8, 8) and conn.num_tokens == 256
    tokens = torch.randn(2, 8 * 16 * 16, 8)
    blocks = tokens.view(2, 4, 2, 8, 2, 8, 2, 8).mean(dim=(2, 4, 6)).reshape(2, 256, 8)
    torch.testing.assert_close(conn.pool(tokens), blocks)
    assert conn(tokens).shape == (2, 256, 16)
    flat = SpatialPoolConnector(in_dim=8, out_dim=16, grid=(16, 16), factor=4)
    assert flat.num_tokens == 16
    torch.testing.assert_close(
        flat.pool(tokens[:, :256]), tokens[:, :256].view(2, 4, 4, 4, 4, 8).mean(dim=(2, 4)).reshape(2, 16, 8)
    )
    assert SpatialPoolConnector(in_dim=8, out_dim=16, grid=(8, 16, 16), factor=[1, 2, 2]).num_tokens == 512


def test_spatial_pool_non_divisible_grid() -> None:
    with pytest.raises(ValueError, match="not divisible by factor .* along dim 2.*ceil_mode"):
        SpatialPoolConnector(in_dim=4, out_dim=4, grid=(8, 16, 15), factor=2)
    conn = SpatialPoolConnector(in_dim=4, out_dim=4, grid=(8, 16, 15), factor=2, ceil_mode=True)
    assert conn.pooled_grid == (4, 8, 8) and conn.num_tokens == 256
    tokens = torch.randn(1, 8 * 16 * 15, 4)
    cube = tokens.view(8, 16, 15, 4)
    pooled = conn.pool(tokens).view(4, 8, 8, 4)
    torch.testing.assert_close(
        pooled[1, 2, 7], cube[2:4, 4:6, 14:15].mean(dim=(0, 1, 2))
    )  # partial: 4 tokens
    torch.testing.assert_close(pooled[1, 2, 6], cube[2:4, 4:6, 12:14].mean(dim=(0, 1, 2)))


def test_spatial_pool_cls_token_kept_or_dropped() -> None:
    torch.manual_seed(0)
    tokens = torch.randn(2, 1 + 64, 8)  # CLS + 4x4x4
    keep = SpatialPoolConnector(in_dim=8, out_dim=8, grid=(4, 4, 4), extra_tokens=1)
    assert keep.num_tokens == 9
    out = keep(tokens)
    assert out.shape == (2, 9, 8)
    torch.testing.assert_close(out[:, 0], keep.mlp(tokens[:, :1])[:, 0])  # CLS projected, not pooled
    drop = SpatialPoolConnector(in_dim=8, out_dim=8, grid=(4, 4, 4), extra_tokens=1, extra_mode="drop")
    assert drop.num_tokens == 8 and drop(tokens).shape == (2, 8, 8)
    with pytest.raises(ValueError, match="expects 1 extra \\+ 64 grid tokens"):
        keep(tokens[:, 1:])


@pytest.mark.parametrize("n", [16, 64, 8 * 256])
def test_attn_pool_takes_any_token_count(n) -> None:
    conn = AttnPoolConnector(in_dim=16, out_dim=12, grid=(n,), num_queries=32, num_heads=4)
    assert conn.num_tokens == 32 and conn(torch.randn(3, n, 16)).shape == (3, 32, 12)
    with pytest.raises(ValueError, match="num_heads 5 does not divide the encoder width 16"):
        AttnPoolConnector(in_dim=16, out_dim=12, grid=(n,), num_heads=5)


def test_attn_pool_query_and_attention_survive_save_and_load(tmp_path) -> None:
    torch.manual_seed(0)
    conn = AttnPoolConnector(in_dim=16, out_dim=12, grid=(4, 4, 4), num_queries=8, num_heads=4).eval()
    names = set(conn.state_dict())
    assert {
        "query",
        "attn.in_proj_weight",
        "attn.in_proj_bias",
        "attn.out_proj.weight",
        "attn.out_proj.bias",
    } <= names
    assert {"mlp.proj.0.weight", "mlp.proj.2.weight"} <= names  # MedM-VL's connector.{0,2}.*
    assert dict(conn.named_parameters())["query"].shape == (8, 16)
    save_model(conn, str(tmp_path / "c.safetensors"))
    torch.manual_seed(1)
    fresh = AttnPoolConnector(in_dim=16, out_dim=12, grid=(4, 4, 4), num_queries=8, num_heads=4).eval()
    x = torch.randn(2, 64, 16)
    assert not torch.allclose(fresh(x), conn(x))
    missing, unexpected = load_model(fresh, str(tmp_path / "c.safetensors"))
    assert not missing and not unexpected
    torch.testing.assert_close(fresh(x), conn(x))


@pytest.mark.parametrize(
    "overrides",
    [
        ["encoder=tiny3d", "connector=attn_pool"],
        ["encoder=tiny3d", "connector=spatial_pool"],
        ["encoder=m3d_clip", "connector=spatial_pool", "llm=qwen2.5"],
        ["encoder=medm_clip", "connector=spatial_pool"],
        ["encoder=siglip_slices", "connector=attn_pool", "llm=qwen2.5"],
    ],
)
def test_3d_options_compose(overrides, tmp_path) -> None:
    cfg = compose_train([*overrides], output_dir=tmp_path)
    assert cfg.encoder._target_.startswith("medmvl.models.encoders.")
    assert cfg.connector._partial_ is True
