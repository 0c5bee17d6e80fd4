"""MedM-VL's specialisation flow: train -> save -> ``init_from=<saved model> stage=lora`` on new data.

The LoRA stage must train only the LLM's adapters and the connector (per-module learning rates), leave
every frozen weight untouched, and save the adapters merged into plain weights.
"""

from __future__ import annotations

import csv
from pathlib import Path

import pytest
import torch
import yaml
from omegaconf import OmegaConf
from safetensors.torch import load_file

from medmvl.cli.train import train
from medmvl.models.build import build_model
from medmvl.training.module import MedVLMModule
from tests.conftest import compose_train
from tests.helpers.colour import write_colour_set


def test_lora_stage_trains_adapters_and_connector_only(tmp_path: Path) -> None:
    """The composed ``stage=lora`` (+ optional encoder LoRA): which parameters train, at which rate."""
    cfg = compose_train(["stage=lora", "stage.encoder.mode=lora", "stage.encoder.lr=1e-5"])
    stage = OmegaConf.to_container(cfg.stage, resolve=True)
    assert stage["llm"]["lora"] == {
        "r": 128,
        "alpha": 256,
        "dropout": 0.05,
        "bias": "none",
        "target_modules": None,
        "first_layer": None,
    }
    module = MedVLMModule(build_model(cfg), optimizer=lambda groups: None, stage=stage)
    trainable = [n for n, p in module.model.named_parameters() if p.requires_grad]
    assert all("lora_" in n for n in trainable if not n.startswith("connector."))
    assert {n.split(".")[0] for n in trainable} == {"encoder", "connector", "llm"}
    connector = [n for n in trainable if n.startswith("connector.")]
    assert len(connector) == len(list(module.model.connector.parameters()))  # the connector trains fully
    targets = {n.split(".lora_")[0].rsplit(".", 1)[-1] for n in trainable if n.startswith("llm.")}
    assert targets == {
        "q_proj",
        "k_proj",
        "v_proj",
        "o_proj",
        "gate_proj",
        "up_proj",
        "down_proj",
    }  # all linear
    assert {g["name"]: g["lr"] for g in module.param_groups} == {
        "encoder": 1e-5,
        "connector": 2e-4,
        "llm": 2e-4,
    }


@pytest.mark.slow
def test_specialise_a_saved_model_with_lora(tmp_path: Path) -> None:
    ann = write_colour_set(tmp_path / "data")
    data = [f"data.annotations={ann}", f"data.image_dir={tmp_path / 'data' / 'imgs'}"]
    common = [
        "trainer.max_steps=2",
        "trainer.log_every_n_steps=1",
        "callbacks.val_predictions=null",
    ]
    first = train(compose_train([*common, *data], output_dir=tmp_path / "general"))
    base = Path(first["model_dir"])

    lora = [
        f"init_from={base}",
        "stage=lora",
        "stage.llm.lora.r=4",
        "stage.llm.lora.alpha=8",
        "stage.llm.lr=1e-2",
    ]
    second = train(compose_train([*common, *lora, *data], output_dir=tmp_path / "special"))
    run = tmp_path / "special"

    # the trainable table (logged as hyper-parameters): adapters only in the LLM, the whole connector
    params = yaml.safe_load((run / "csv" / "hparams.yaml").read_text())
    assert params["params/encoder/trainable"] == 0
    assert params["params/connector/trainable"] == params["params/connector/total"] > 0
    assert 0 < params["params/llm/trainable"] < params["params/llm/total"] / 10
    with open(run / "csv" / "metrics.csv") as f:
        columns = next(csv.reader(f))
    assert {"train/lr/connector", "train/lr/llm"} <= set(columns) and "train/lr/encoder" not in columns

    before, after = (
        load_file(base / "model.safetensors"),
        load_file(Path(second["model_dir"]) / "model.safetensors"),
    )
    assert before.keys() == after.keys()  # adapters merged back: the same plain layout
    changed = {k for k in before if not torch.equal(before[k], after[k])}
    assert not any(k.startswith("encoder.") for k in changed)  # frozen
    assert any(k.startswith("connector.") for k in changed)
    llm_changed = {k for k in changed if k.startswith("llm.")}
    assert llm_changed and all(k.endswith("proj.weight") for k in llm_changed)  # only LoRA-targeted linears
    assert "llm.model.embed_tokens.weight" not in changed and not any("norm" in k for k in changed)
