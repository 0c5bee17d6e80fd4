"""MedM-VL's released layout, checked against checkpoints and outputs written by MedM-VL's own code.

``tests/fixtures/medm_vl_reference`` (its README.md) holds two tiny checkpoints saved by MedM-VL
(transformers 4.42.4 key layout, bf16, ``lvlm_*`` config) and MedM-VL's prompt ids, pixels, logits and greedy
tokens for seven samples. The import must reproduce them from the image files: ids equal, pixels <= 1e-5,
logits <= 1e-4, greedy tokens equal; through ``infer.py`` and through an ``export.py`` round trip too.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from hydra import compose, initialize_config_dir
from hydra.core.global_hydra import GlobalHydra
from safetensors.torch import load_file, save_file

from medmvl.interop.medm_vl import MedmvlImportError, load_medmvl
from tests.conftest import CONF_DIR, run_entry
from tests.helpers.medm_vl_reference import FIXTURE, SOURCES, run, samples

SAMPLES = samples()
KEYS = [s["key"] for s in SAMPLES]


def _assert_reproduces(result: dict) -> None:
    assert result["ids"] == result["expected_ids"]
    assert result["pixels"] <= 1e-5
    assert result["logits_last"] <= 1e-4 and result["logits_last8"] <= 1e-4
    assert result["greedy"] == result["expected_greedy"]


@pytest.mark.parametrize("sample", SAMPLES, ids=KEYS)
def test_import_reproduces_medm_vl(sample: dict) -> None:
    _assert_reproduces(run(sample))


def test_ct_chest_serves_volumes_with_the_2d_tower_and_one_pooling() -> None:
    model = load_medmvl(FIXTURE / "ct", sources=SOURCES)
    assert model.image_token_counts == {"<image>": 16, "<image3d>": 16}
    assert model.encoder3d.slice_encoder is model.encoder and model.connector3d is model.connector
    assert model.volume_config["mode"] == "medm_vl" and model.volume_config["volume_size"] == (32, 64, 64)


def _answers(run_name: str) -> list[str]:
    records = json.loads((FIXTURE / "inference_py" / f"{run_name}.json").read_text())
    return [r["conversations"][-1]["value"].strip() for r in records]  # medmvl strips answers


@pytest.mark.slow
def test_infer_cli_answers_like_medm_vl_inference(tmp_path: Path) -> None:
    """``python infer.py model=<MedM-VL folder> medmvl_sources={...}``, on every fixture file."""
    runs = {"2d": "2d", "2d_variants": "2d", "ct_3d": "ct", "ct_2d": "ct"}
    sources = f"medmvl_sources={{llm: {SOURCES['llm']}, encoder_image: {SOURCES['encoder_image']}}}"
    for name, checkpoint in runs.items():
        out = tmp_path / f"{name}.json"
        proc = run_entry(
            "infer.py",
            f"model={FIXTURE / checkpoint}",
            sources,
            f"data.annotations={FIXTURE / 'data' / f'samples_{name}.json'}",
            "max_new_tokens=10",
            f"output={out}",
            f"hydra.run.dir={tmp_path / 'run' / name}",
        )
        assert proc.returncode == 0, proc.stderr[-2000:]
        got = [r["prediction"] for r in json.loads(out.read_text())]
        assert got == _answers(name), name


def test_export_keeps_medm_vl_prompt_and_pixels(tmp_path: Path) -> None:
    """An exported CT-Chest model is a medmvl folder that still answers exactly like MedM-VL, with no flags."""
    from medmvl.cli.export import export

    out = tmp_path / "ct_medmvl"
    GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        cfg = compose(
            config_name="export",
            overrides=[
                f"ckpt={FIXTURE / 'ct'}",
                f"out={out}",
                f"medmvl_sources.llm={SOURCES['llm']}",
                f"medmvl_sources.encoder_image={SOURCES['encoder_image']}",
            ],
        )
    export(cfg)
    saved = json.loads((out / "medmvl_config.json").read_text())
    assert saved["prompt"]["format"] == "medm_vl"
    assert saved["encoder"]["medm_vl"]["processor"] == "siglip"
    assert saved["encoder3d"]["slice_encoder"] == "shared" and saved["connector3d"] == "shared"
    for sample in [s for s in SAMPLES if s["checkpoint"].startswith("ct")]:
        _assert_reproduces(run(sample, model=out))


def test_medmvl_sources_override_forms() -> None:
    GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        for config in ("export", "infer"):
            whole = compose(config_name=config, overrides=["medmvl_sources={llm: /a, encoder_image: /b}"])
            key = compose(config_name=config, overrides=["medmvl_sources.llm=/a"])
            assert (whole.medmvl_sources.llm, whole.medmvl_sources.encoder_image) == ("/a", "/b")
            assert key.medmvl_sources.llm == "/a" and key.medmvl_sources.encoder_image is None


def _copy_checkpoint(tmp_path: Path, rename) -> Path:
    """The 2D fixture checkpoint with its tensors renamed by ``rename`` (``None``: dropped)."""
    folder = tmp_path / "ckpt"
    folder.mkdir()
    for file in (FIXTURE / "2d").iterdir():
        if file.name != "model.safetensors":
            (folder / file.name).write_bytes(file.read_bytes())
    tensors = load_file(FIXTURE / "2d" / "model.safetensors")
    save_file({rename(k): v for k, v in tensors.items()}, str(folder / "model.safetensors"))
    return folder


def test_transformers5_key_layout_loads_the_same(tmp_path: Path) -> None:
    """A checkpoint saved under transformers 5 (no ``vision_model.`` level) gives the same weights."""
    folder = _copy_checkpoint(tmp_path, lambda k: k.replace(".encoder.vision_model.", ".encoder."))
    ours, ref = load_medmvl(folder, sources=SOURCES), load_medmvl(FIXTURE / "2d", sources=SOURCES)
    for (name, a), (_, b) in zip(ours.state_dict().items(), ref.state_dict().items()):
        assert torch.equal(a, b), name


def test_unknown_layout_is_refused_naming_the_keys(tmp_path: Path) -> None:
    folder = _copy_checkpoint(tmp_path, lambda k: k.replace(".vision_model.", ".vision_tower."))
    with pytest.raises(MedmvlImportError, match=r"unknown layout: \['encoder_image\.encoder\.vision_tower"):
        load_medmvl(folder, sources=SOURCES)
