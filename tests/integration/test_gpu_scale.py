"""``experiments/bench/gpu_scale.py``: its ``--tiny`` run on this CPU, and its 3B scale's architecture.

The GPU run cannot happen here; what can rot without one is checked instead: the whole script end to end
at tiny scale in a subprocess (FSDP2 over gloo, activation checkpointing, chunked loss, bucketed batches,
the FLOP formula against ``FlopCounterMode``), and the 3B overrides building Qwen2.5-3B and SigLIP
so400m's exact parameter counts (on the meta device: no memory, no init).
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.helpers.bench import bench_module, run_script


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    results = tmp_path_factory.mktemp("gpu_scale")
    out = run_script("gpu_scale.py", ["--tiny"], results, timeout=300)
    assert "tokens/s" in out.stdout and "MFU" in out.stdout
    return json.loads((results / "gpu_scale_tiny.json").read_text())


@pytest.mark.slow
def test_tiny_run_measures_throughput_flops_and_mfu(tiny_run: dict[str, Any]) -> None:
    tp, fl = tiny_run["throughput"], tiny_run["flops"]
    assert tp["tokens_per_s"] > 0 and len(tp["step_s"]) == 2 and len(tp["warmup_step_s"]) == 1
    assert 0 < tp["non_pad_share"] <= 1 and tp["supervised_targets_per_step"] > 0
    assert all(v > 0 for v in fl["per_step"].values())
    assert fl["per_step"]["total"] == pytest.approx(sum(v for k, v in fl["per_step"].items() if k != "total"))
    assert fl["matmul_peak_flops_per_s"] > 0 and 0 < fl["mfu"] <= 1
    assert fl["model_flops_per_s_per_device"] == pytest.approx(fl["mfu"] * fl["matmul_peak_flops_per_s"])
    # the formula (padded shapes) is what FlopCounterMode counts on the plain model's step
    assert fl["check"]["ratio"] == pytest.approx(1, abs=0.01)
    assert tiny_run["memory"]["peak_rss_mib"] > 0 and tiny_run["machine"]["cpu"]


@pytest.mark.slow
def test_tiny_run_losses_are_finite_and_sharding_keeps_the_loss(tiny_run: dict[str, Any]) -> None:
    loss, check = tiny_run["loss"], tiny_run["flops"]["check"]
    assert loss["finite"] and all(math.isfinite(x) and x > 0 for x in loss["warmup"] + loss["timed"])
    # random weights over a 151,936-token vocabulary: about ln(151936) = 11.9
    assert all(abs(x - math.log(151936)) < 1.0 for x in loss["timed"])
    # fp32: FSDP2 + activation checkpointing compute the plain model's loss on the same batch
    assert check["sharded_loss"] == pytest.approx(check["loss"], rel=1e-5)


@pytest.mark.slow
def test_tiny_run_records_its_configuration(tiny_run: dict[str, Any]) -> None:
    cfg = tiny_run["config"]
    assert cfg["scale"] == "tiny"
    assert {k: cfg["llm"][k] for k in ("hidden_size", "intermediate_size", "num_hidden_layers")} == {
        "hidden_size": 64,
        "intermediate_size": 128,
        "num_hidden_layers": 2,
    }
    assert cfg["llm"]["vocab_size"] == 151936 and cfg["llm"]["tie_word_embeddings"]
    assert cfg["vision"]["hidden_size"] == 64 and cfg["vision"]["image_tokens"] == 16
    assert cfg["precision"] == "fp32" and cfg["fsdp"]["param_dtype"] is None
    assert cfg["fsdp"]["fully_shard"] and cfg["fsdp"]["world_size"] == 1 and cfg["fsdp"]["backend"] == "gloo"
    assert cfg["fsdp"]["units"] > 4  # decoder layers, vision blocks, remainders, root
    assert cfg["activation_checkpointing"] is True
    assert cfg["compile"] is False and "skipped on CPU" in cfg["compile_note"]
    assert cfg["loss"]["impl"] == "chunked" and cfg["batches"]["layout"] == "bucketed"
    assert cfg["stage"]["encoder"]["mode"] == "frozen" and cfg["stage"]["llm"]["mode"] == "full"


@pytest.fixture
def gpu_scale() -> Iterator[Any]:
    with bench_module("gpu_scale") as module:
        yield module


def test_3b_scale_builds_qwen2_5_3b_and_siglip_so400m(gpu_scale: Any, tmp_path: Path) -> None:
    import argparse

    import torch

    args = argparse.Namespace(
        scale="3b", vision="so400m-384", compile=True, checkpointing=True, precision="bf16"
    )
    overrides = gpu_scale.overrides(args, gpu_scale.tokenizer_folder("fixture", tmp_path))
    model, cfg, _ = gpu_scale.build(overrides, torch.device("meta"))
    params = {n: sum(p.numel() for p in getattr(model, n).parameters()) for n in ("encoder", "llm")}
    assert round(params["llm"] / 1e6, 1) == 3085.9  # Qwen2.5-3B (tied embeddings)
    assert round(params["encoder"] / 1e6, 1) == 428.2  # SigLIP so400m-patch14-384's vision tower
    sizes = gpu_scale.arch(model)
    assert sizes["image_tokens"] == 729 and sizes["vocab"] == 151936 and sizes["llm_layers"] == 36
    assert model.llm.config.rope_parameters["rope_theta"] == 1e6
    assert model.llm.config.max_position_embeddings == 32768
    assert cfg.trainer.strategy.param_dtype == "bfloat16" and cfg.trainer.strategy.activation_checkpointing
    assert cfg.compile is True and model.loss_impl == "chunked"
