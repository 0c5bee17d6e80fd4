"""The one resolver of model paths (``medmvl.inference.loading``): every form, the run-folder preference,
and errors that list what a model path may be."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from medmvl.inference.loading import load_model, resolve_model_path
from medmvl.interop.serialization import CONFIG_NAME


def _run_folder(root: Path, *, model: bool, ckpt: bool) -> Path:
    if model:
        (root / "model").mkdir(parents=True)
        (root / "model" / CONFIG_NAME).write_text("{}")
    if ckpt:
        (root / "checkpoints").mkdir(parents=True)
        (root / "checkpoints" / "last.ckpt").write_bytes(b"")
    return root


def test_every_form_resolves(tmp_path: Path) -> None:
    both = _run_folder(tmp_path / "both", model=True, ckpt=True)
    assert resolve_model_path(both) == ("medmvl", both / "model")  # a finished run: its saved model
    assert resolve_model_path(both, prefer="checkpoint") == ("checkpoint", both / "checkpoints" / "last.ckpt")
    stopped = _run_folder(tmp_path / "stopped", model=False, ckpt=True)  # preempted before saving
    assert resolve_model_path(stopped) == ("checkpoint", stopped / "checkpoints" / "last.ckpt")
    assert resolve_model_path(both / "model") == ("medmvl", both / "model")
    ckpt = both / "checkpoints" / "last.ckpt"
    assert resolve_model_path(ckpt) == ("checkpoint", ckpt)


def test_unknown_forms_are_named(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match=r"(?s)does not exist.*Lightning \.ckpt.*run folder.*MedM-VL"):
        resolve_model_path(tmp_path / "nope")
    with pytest.raises(FileNotFoundError, match="is none of them"):
        resolve_model_path(tmp_path)
    (tmp_path / "fsdp").mkdir()
    (tmp_path / "fsdp" / ".metadata").write_text("")
    with pytest.raises(ValueError, match="consolidate_checkpoint"):
        resolve_model_path(tmp_path / "fsdp")
    with pytest.raises(ValueError, match="prefer"):
        resolve_model_path(tmp_path, prefer="newest")


def test_a_saved_folder_and_its_run_folder_load_the_same_model(saved_model: Path) -> None:
    direct, via_run = load_model(saved_model), load_model(saved_model.parent)
    assert direct.kind == via_run.kind == "medmvl" and via_run.source == saved_model
    ids = torch.tensor([[1, 2, 3]])
    a = direct.model(input_ids=ids, attention_mask=torch.ones_like(ids))["logits"]
    b = via_run.model(input_ids=ids, attention_mask=torch.ones_like(ids))["logits"]
    assert torch.equal(a, b)
