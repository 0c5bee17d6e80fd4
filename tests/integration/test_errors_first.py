"""Errors first, short and named: bad data stops the run before any weights load, as a few plain lines;
an offline hub id names itself and the override that points it at a folder; an unknown key lists the
node's keys; ``--help`` and ``--cfg job`` import neither torch nor transformers."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from medmvl.cli.train import train
from medmvl.data.schema import AnnotationError
from tests.conftest import ROOT, compose_train, run_entry
from tests.helpers.colour import write_colour_set


def _data(tmp_path: Path, *, missing: bool = False) -> list[str]:
    ann = write_colour_set(tmp_path / "data")
    if missing:  # a ninth sample whose image is not there
        records = json.loads(ann.read_text())
        ann.write_text(json.dumps([*records, {**records[0], "id": "gone", "image": ["gone.png"]}]))
    return [f"data.annotations={ann}", f"data.image_dir={tmp_path / 'data' / 'imgs'}"]


class WeightsLoaded(RuntimeError):
    pass


@pytest.fixture
def no_weights(monkeypatch: pytest.MonkeyPatch) -> None:
    """Building the encoder or the LLM fails: whatever the test checks must happen before either."""
    import medmvl.models.llm.loader as loader
    from medmvl.models.encoders.siglip import SiglipEncoder

    def refuse(*args, **kwargs):
        raise WeightsLoaded("a model part was built before the data was checked")

    monkeypatch.setattr(SiglipEncoder, "__init__", refuse)
    monkeypatch.setattr(loader, "load_llm", refuse)


@pytest.mark.parametrize(
    ("extra", "why"),
    [(["data.max_length=12"], "exceed max_length=12"), ([], "image file .*gone.png' does not exist")],
)
def test_bad_data_stops_the_run_before_any_weights_load(
    tmp_path: Path, no_weights: None, extra: list[str], why: str
) -> None:
    cfg = compose_train([*_data(tmp_path, missing=not extra), *extra], output_dir=tmp_path / "run")
    with pytest.raises(AnnotationError, match=why):
        train(cfg)


def test_a_data_error_is_a_few_named_lines_without_traceback(tmp_path: Path) -> None:
    args = [*_data(tmp_path, missing=True), f"hydra.run.dir={tmp_path / 'run'}"]
    out = run_entry("train.py", *args)
    assert out.returncode == 1, out.stderr[-3000:]
    assert "Traceback" not in out.stderr
    last = out.stderr.strip().splitlines()[-1]
    assert "train.json: sample 8 (id 'gone'), field 'image[0]'" in last and "does not exist" in last
    assert not (tmp_path / "run" / "checkpoints").exists()
    full = subprocess.run(
        [sys.executable, str(ROOT / "train.py"), *args],
        capture_output=True,
        text=True,
        cwd=ROOT,
        env={**os.environ, "HF_HUB_OFFLINE": "1", "HYDRA_FULL_ERROR": "1"},
        timeout=300,
    )
    assert full.returncode == 1 and "Traceback" in full.stderr and "AnnotationError" in full.stderr


@pytest.mark.parametrize(
    ("override", "model_id", "fix"),
    [
        ("encoder=siglip", "google/siglip-base-patch16-256-multilingual", "encoder.name_or_path=<folder>"),
        ("llm=qwen2.5", "Qwen/Qwen2.5-3B-Instruct", "llm.name_or_path=<folder>"),
    ],
)
def test_an_offline_hub_id_names_itself_and_the_override(
    tmp_path: Path, override: str, model_id: str, fix: str
) -> None:
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_HOME": str(tmp_path / "empty_hf_home")}
    env.pop("HF_HUB_CACHE", None)
    out = subprocess.run(
        [sys.executable, str(ROOT / "train.py"), override, *_data(tmp_path), f"hydra.run.dir={tmp_path}/run"],
        capture_output=True,
        text=True,
        cwd=ROOT,
        env=env,
        timeout=300,
    )
    assert out.returncode == 1, out.stderr[-3000:]
    tail = "\n".join(out.stderr.strip().splitlines()[-6:])
    assert model_id in tail and fix in tail, out.stderr[-3000:]
    assert "Traceback" not in out.stderr


@pytest.mark.parametrize(
    ("override", "hint"),
    [
        ("data.batchsize=2", "did you mean data.batch_size?"),
        ("seeed=1", "did you mean seed?"),
        ("stage.encoder.moed=full", "did you mean stage.encoder.mode?"),
    ],
)
def test_an_unknown_key_lists_the_valid_keys_and_the_closest(override: str, hint: str) -> None:
    out = run_entry("train.py", override, "--cfg", "job")
    assert out.returncode == 1
    assert hint in out.stderr, out.stderr
    node = override.split("=")[0].rpartition(".")[0] or "the config"
    listing = out.stderr.strip().splitlines()[-1]
    assert listing.startswith(f"valid keys of {node}:"), out.stderr
    if node == "data":
        assert "annotations" in listing and "val_batch_size" in listing


@pytest.mark.parametrize("args", [["--help"], ["encoder=siglip", "llm=qwen2.5", "--cfg", "job"]])
def test_help_and_cfg_import_no_torch_lightning_or_transformers(args: list[str]) -> None:
    out = subprocess.run(
        [sys.executable, "-X", "importtime", str(ROOT / "train.py"), *args],
        capture_output=True,
        text=True,
        cwd=ROOT,
        env={**os.environ, "HF_HUB_OFFLINE": "1"},
        timeout=300,
    )
    assert out.returncode == 0, out.stderr[-2000:]
    imported = {line.rsplit("|", 1)[-1].strip() for line in out.stderr.splitlines() if "|" in line}
    assert not imported & {"torch", "lightning", "transformers"}
