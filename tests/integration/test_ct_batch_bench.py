"""``experiments/bench/ct_batch.py``: its ``--quick`` run end to end, and its full-size token counts.

The quick run (a subprocess, results in a scratch folder) must produce real numbers for both CT stacks:
medmvl and the HF LLM's own loss agree on the same weights, every rate and memory figure is positive and
the loader headroom is the ratio it claims to be. The full-size overrides must give the CT-Chest recipes'
token counts (built on the meta device: no memory, no init).
"""

from __future__ import annotations

import argparse
import json
import math
from collections.abc import Iterator
from typing import Any

import pytest

from tests.helpers.bench import bench_module, run_script

CONFIGS = ("siglip_slices_attn_pool", "m3d_clip_spatial_pool")


@pytest.fixture(scope="module")
def quick_run(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    results = tmp_path_factory.mktemp("ct_batch")
    run_script("ct_batch.py", ["--quick"], results, timeout=400)
    return json.loads((results / "ct_batch.json").read_text())


@pytest.mark.slow
def test_quick_run_has_both_configs_and_the_machine(quick_run: dict[str, Any]) -> None:
    assert quick_run["quick"] is True and quick_run["machine"]["cpu"]
    assert set(quick_run["configs"]) == set(CONFIGS) == set(quick_run["summary"])
    for name in CONFIGS:
        cfg = quick_run["configs"][name]["config"]
        assert cfg["stage"] == {"encoder": "frozen", "connector": "full", "llm": "full"}
        assert cfg["vocab_size"] >= 151936 and cfg["image_tokens_per_volume"] > 0
    assert quick_run["configs"]["siglip_slices_attn_pool"]["config"]["connector"] == "AttnPoolConnector"
    assert quick_run["configs"]["m3d_clip_spatial_pool"]["config"]["connector"] == "SpatialPoolConnector"


@pytest.mark.slow
def test_quick_run_losses_are_finite_and_equal_to_the_baseline(quick_run: dict[str, Any]) -> None:
    for name in CONFIGS:
        r = quick_run["configs"][name]
        check = r["loss_check"]
        # random weights over a 151,936-token vocabulary: about ln(151936) = 11.9
        assert math.isfinite(check["medmvl"]) and abs(check["medmvl"] - math.log(151936)) < 1.0
        assert check["hf"] == pytest.approx(check["medmvl"], rel=1e-5), name
        # lr 0: the weights stay put, so each timed step of the two computes the same loss
        assert r["medmvl"]["losses"] == pytest.approx(r["hf"]["losses"], rel=1e-5), name
        mem = r["memory"]
        assert mem["hf"]["loss"] == pytest.approx(mem["medmvl"]["loss"], rel=1e-5)
        assert mem["medmvl"]["loss"] == pytest.approx(check["medmvl"], rel=1e-5)


@pytest.mark.slow
def test_quick_run_rates_memory_and_loader_headroom(quick_run: dict[str, Any]) -> None:
    for name in CONFIGS:
        r, row = quick_run["configs"][name], quick_run["summary"][name]
        for system in ("medmvl", "hf"):
            assert r[system]["steps_per_s"] > 0 and r[system]["tokens_per_s"] > 0
            assert len(r[system]["fwd_bwd_s"]) == quick_run["args"]["steps"]
            mem = r["memory"][system]
            assert mem["peak_rss_mib"] > mem["loaded_rss_mib"] > 0 and mem["above_loaded_mib"] > 0
        assert r["ratio_steps_per_s"] == pytest.approx(r["medmvl"]["steps_per_s"] / r["hf"]["steps_per_s"])
        assert r["loader_volumes_per_s"] > 0 and r["step_volumes_per_s"] > 0
        assert r["loader_headroom"] == pytest.approx(r["loader_volumes_per_s"] / r["step_volumes_per_s"])
        assert r["loader_headroom_nifti"] > 0
        assert r["loader_volumes_per_s"] == r["loader"]["npy"]["volumes_per_s"]
        assert r["loader_headroom_nifti"] == pytest.approx(
            r["loader"]["nifti"]["volumes_per_s"] / r["step_volumes_per_s"]
        )
        for kind in ("npy", "nifti"):
            assert r["loader"][kind]["workers"] == 2 and r["loader"][kind]["volumes"] >= 2
            assert len(r["loader"][kind]["epoch_volumes_per_s"]) == 2
        assert len(r["fed"]["wait_s"]) == quick_run["args"]["fed_steps"] and r["fed"]["workers"] == 2
        assert all(math.isfinite(v) for v in row.values())
        assert row["loader_headroom"] == r["loader_headroom"]
        assert row["medmvl_peak_rss_mib"] == r["memory"]["medmvl"]["peak_rss_mib"]


@pytest.fixture
def ct_batch() -> Iterator[Any]:
    with bench_module("ct_batch") as module:
        yield module


@pytest.mark.parametrize(
    ("name", "encoder_tokens", "grid"),
    [("siglip_slices_attn_pool", 32 * 256, [32, 16, 16]), ("m3d_clip_spatial_pool", 2048, [8, 16, 16])],
)
def test_full_size_overrides_give_the_recipes_token_counts(
    ct_batch: Any, name: str, encoder_tokens: int, grid: list[int]
) -> None:
    import torch
    from hydra.utils import instantiate

    args = argparse.Namespace(quick=False, layers=1, siglip_layers=2, m3d_layers=12)
    cfg = ct_batch.common.compose_cfg(ct_batch.overrides(name, args))
    assert cfg.llm.config.hidden_size == 2048 and cfg.llm.config.num_hidden_layers == 1
    assert cfg.data.num_workers == 8 and cfg.data.format == "plain"
    with torch.device("meta"):
        encoder = instantiate(cfg.encoder)
        connector = instantiate(cfg.connector)(in_dim=encoder.out_dim, out_dim=2048, grid=encoder.grid)
    assert encoder.num_tokens == encoder_tokens and list(encoder.grid) == grid and encoder.out_dim == 768
    assert tuple(encoder.preprocess["volume_size"]) == (32, 256, 256)
    assert connector.num_tokens == 256
