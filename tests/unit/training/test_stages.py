"""Stages are data: the same function freezes or trains each module and sets its learning rate."""

from __future__ import annotations

import pytest
import torch
from omegaconf import OmegaConf

from medmvl.training.schedule import cosine_with_warmup
from medmvl.training.stages import apply_stage, render, trainable_table
from tests.conftest import CONF_DIR


class Toy(torch.nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.encoder = torch.nn.Linear(4, 4)
        self.connector = torch.nn.Linear(4, 8)
        self.llm = torch.nn.Linear(8, 8)


def _stage(name: str) -> dict:
    return OmegaConf.to_container(OmegaConf.load(CONF_DIR / "stage" / f"{name}.yaml"))


def test_pretrain_trains_connector_only() -> None:
    model = Toy()
    groups = apply_stage(model, _stage("pretrain"))
    assert [g["name"] for g in groups] == ["connector"] and groups[0]["lr"] == 1e-3
    assert not any(p.requires_grad for p in model.encoder.parameters())
    assert not any(p.requires_grad for p in model.llm.parameters())
    _, stats = trainable_table(model)
    assert stats["connector"] == {"total": 40, "trainable": 40}
    assert stats["llm"] == {"total": 72, "trainable": 0}
    assert "connector" in render(trainable_table(model)[0])


def test_finetune_groups_and_lrs() -> None:
    model = Toy()
    groups = apply_stage(model, _stage("finetune"))
    assert {g["name"]: g["lr"] for g in groups} == {"connector": 2e-5, "llm": 2e-5}
    opt = torch.optim.AdamW(groups, lr=1.0)
    assert [g["lr"] for g in opt.param_groups] == [2e-5, 2e-5]


def test_bad_stage_is_named() -> None:
    with pytest.raises(ValueError, match="stage.llm.mode"):
        apply_stage(Toy(), {"llm": {"mode": "half"}})
    with pytest.raises(ValueError, match="unknown modules"):
        apply_stage(Toy(), {"vision": {"mode": "full"}})
    with pytest.raises(ValueError, match="trains nothing"):
        apply_stage(Toy(), {})


def test_cosine_warmup_shape() -> None:
    opt = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=1.0)
    sched = cosine_with_warmup(opt, num_training_steps=100, warmup_ratio=0.1)
    lrs = []
    for _ in range(100):
        lrs.append(opt.param_groups[0]["lr"])
        opt.step()
        sched.step()
    assert lrs[0] == pytest.approx(1 / 11) and max(lrs) == pytest.approx(1.0)
    assert lrs.index(max(lrs)) == 10 and lrs[-1] < 0.01
    assert all(a >= b for a, b in zip(lrs[10:], lrs[11:]))


def test_lora_trains_adapters_only_and_merges() -> None:
    from medmvl.training.stages import merge_lora

    torch.manual_seed(0)
    model = Toy()
    model.llm = torch.nn.Sequential(torch.nn.Linear(8, 8), torch.nn.ReLU(), torch.nn.Linear(8, 8))
    x = torch.randn(2, 8)
    before = model.llm(x)
    stage = _stage("lora")
    stage["llm"]["lora"]["target_modules"] = ["0", "2"]
    groups = apply_stage(model, stage)
    assert [g["name"] for g in groups] == ["connector", "llm"]
    names = [n for n, p in model.llm.named_parameters() if p.requires_grad]
    assert names and all("lora_" in n for n in names)
    torch.testing.assert_close(model.llm(x), before)  # LoRA B starts at zero
    with torch.no_grad():
        for n, p in model.llm.named_parameters():
            if "lora_B" in n:
                p.fill_(0.01)
    model.llm.eval()  # no LoRA dropout
    adapted = model.llm(x)
    merge_lora(model)
    assert isinstance(model.llm, torch.nn.Sequential) and not any(
        "lora" in n for n, _ in model.named_parameters()
    )
    torch.testing.assert_close(model.llm(x), adapted)


def test_lora_first_layer_adapts_upper_layers_and_backward_stops_there() -> None:
    """``lora.first_layer``: adapters only on decoder layers ``first..``; the layers below build no graph."""
    from medmvl.models.build import build_model
    from tests.conftest import compose_train

    cfg = compose_train(["stage=lora", "stage.llm.lora.first_layer=1"])
    model = build_model(cfg)
    apply_stage(model, OmegaConf.to_container(cfg.stage))
    adapted = {
        n.split(".layers.")[1].split(".")[0] for n, p in model.llm.named_parameters() if p.requires_grad
    }
    assert adapted == {"1"}  # tiny LLM: layers 0 and 1
    outputs: dict[int, torch.Tensor] = {}
    for k, layer in enumerate(model.llm.base_model.model.model.layers):
        layer.register_forward_hook(
            lambda m, i, out, k=k: outputs.update({k: out[0] if isinstance(out, tuple) else out})
        )
    ids = torch.tensor([[5, 6, 7, 8]])
    model(ids, torch.ones_like(ids), labels=ids)["loss"].backward()
    assert not outputs[0].requires_grad and outputs[1].requires_grad  # backward stops at layer 1
    assert all(p.grad is not None for p in model.llm.parameters() if p.requires_grad)
    with pytest.raises(ValueError, match="first_layer must be in"):
        apply_stage(
            build_model(compose_train([])),
            {"llm": {"mode": "lora", "lora": {"first_layer": 2}}},
        )
