"""medmvl-export: any training checkpoint -> a model folder that reproduces the trained model's logits.

One tiny LoRA run (adapters on the LLM, connector trained) is exported from its run folder with the
adapters merged, from its ``last.ckpt`` with the PEFT adapter kept, and through the CLI as a Llava folder.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch
from omegaconf import OmegaConf

from medmvl.cli.export import export
from medmvl.cli.train import train
from medmvl.interop.serialization import ADAPTER_DIR, from_pretrained
from medmvl.training.checkpoint import load_checkpoint
from medmvl.training.stages import merge_lora
from tests.conftest import compose_train, run_entry, scratch
from tests.helpers.colour import write_colour_set


@pytest.fixture(scope="module")
def lora_run(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    with scratch(tmp_path_factory, "lora_run") as root:
        yield _lora_run(root)


def _lora_run(root: Path) -> Path:
    ann = write_colour_set(root / "data")
    overrides = [
        "stage=lora",
        "stage.llm.lora.r=4",
        "stage.llm.lora.alpha=8",
        "stage.llm.lr=1e-2",  # large enough that 2 steps move the adapters visibly
        "trainer.max_steps=2",
        "callbacks.val_predictions=null",
        f"data.annotations={ann}",
        f"data.image_dir={root / 'data' / 'imgs'}",
    ]
    train(compose_train(overrides, output_dir=root / "run"))
    return root / "run"


def _logits(model, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    m = model.image_token_counts["<image>"]
    ids = torch.tensor([[model.image_token_id] * m + model.tokenizer("What colour is this?").input_ids])
    pixels = torch.randn(1, 3, 32, 32, generator=g)
    with torch.no_grad():
        return model(input_ids=ids, attention_mask=torch.ones_like(ids), pixel_values=pixels)["logits"]


def _cfg(**kw) -> OmegaConf:
    return OmegaConf.create(
        {"lora": "merge", "format": "medmvl", "dtype": "float32", "medmvl_sources": {}, **kw}
    )


@pytest.mark.slow
def test_export_merged_reproduces_the_trained_model(lora_run: Path, tmp_path: Path) -> None:
    out = export(_cfg(ckpt=str(lora_run), out=str(tmp_path / "merged")))
    files = {p.name for p in out.rglob("*") if p.is_file()}
    assert {"medmvl_config.json", "model.safetensors", "preprocessor.json"} <= files
    assert not [f for f in files if f.endswith((".bin", ".pt", ".pth", ".ckpt"))]
    assert not (out / ADAPTER_DIR).exists()
    cfg = json.loads((out / "medmvl_config.json").read_text())
    assert cfg["prompt"]["format"] == "chat"
    # the end-of-training save (<run>/model) and the export of the checkpoint are the same model
    assert torch.equal(_logits(from_pretrained(out)), _logits(from_pretrained(lora_run / "model")))


@pytest.mark.slow
def test_export_adapter_keeps_peft_adapter_and_loads_back(lora_run: Path, tmp_path: Path) -> None:
    from peft import PeftModel

    ckpt = lora_run / "checkpoints" / "last.ckpt"
    trained, _ = load_checkpoint(ckpt)  # the model exactly as trained: base weights + LoRA adapters
    assert isinstance(trained.llm, PeftModel)
    out = export(_cfg(ckpt=str(ckpt), out=str(tmp_path / "adapter"), lora="adapter"))
    adapter = out / ADAPTER_DIR / "llm"
    assert (adapter / "adapter_model.safetensors").is_file() and (adapter / "adapter_config.json").is_file()
    assert json.loads((adapter / "adapter_config.json").read_text())["r"] == 4
    loaded = from_pretrained(out)
    assert isinstance(loaded.llm, PeftModel)
    expected = _logits(trained)
    assert torch.equal(_logits(loaded), expected)
    merged = from_pretrained(out, merge_adapters=True)
    assert not isinstance(merged.llm, PeftModel)
    torch.testing.assert_close(_logits(merged), expected, atol=1e-5, rtol=0)
    merge_lora(trained)
    assert torch.equal(_logits(merged), _logits(trained))


def test_export_refuses_bad_requests(lora_run: Path, tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="format=llava needs lora=merge"):
        export(_cfg(ckpt=str(lora_run), out=str(tmp_path / "x"), format="llava", lora="adapter"))
    (tmp_path / "full").mkdir()
    (tmp_path / "full" / "f").write_text("x")
    with pytest.raises(FileExistsError, match="not empty"):
        export(_cfg(ckpt=str(lora_run), out=str(tmp_path / "full")))
    with pytest.raises(
        FileNotFoundError, match="not a saved medmvl model, a checkpoint file or a run folder"
    ):
        export(_cfg(ckpt=str(tmp_path), out=str(tmp_path / "y")))


@pytest.mark.slow
def test_export_cli_writes_a_llava_folder(lora_run: Path, tmp_path: Path) -> None:
    out = tmp_path / "llava"
    done = run_entry(
        "export.py", f"ckpt={lora_run}", f"out={out}", "format=llava", f"hydra.run.dir={tmp_path}/h"
    )
    assert done.returncode == 0, done.stderr[-2000:]
    config = json.loads((out / "config.json").read_text())
    assert config["model_type"] == "llava" and config["vision_config"]["model_type"] == "siglip_vision_model"
    assert (out / "processor_config.json").is_file() or (out / "preprocessor_config.json").is_file()
