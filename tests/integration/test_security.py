"""What medmvl refuses to run: remote code unless asked per component, pickle weights, pickled code in a
Lightning checkpoint; and the checkpoint plugin every trainer option uses."""

from __future__ import annotations

import os
import pickle
import re
import zipfile
from pathlib import Path

import pytest
import torch
import yaml

from medmvl.interop.safe_weights import PickleWeightsError
from medmvl.training.checkpoint_io import AtomicCheckpointIO, UnsafeCheckpointError
from tests.conftest import CONF_DIR, compose_train

SRC = CONF_DIR.parent


class _Payload:
    """Unpickling this runs ``os.system`` (here: creates a marker file)."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def _evil_pickle(path: Path, marker: Path) -> Path:
    torch.save({"state_dict": {"w": torch.ones(1)}, "extra": _Payload(marker)}, path)
    return path


# ---------------------------------------------------------------- trust_remote_code


def _nodes(tree, path=""):
    if isinstance(tree, dict):
        yield path, tree
        for k, v in tree.items():
            yield from _nodes(v, f"{path}.{k}" if path else str(k))
    elif isinstance(tree, list):
        for i, v in enumerate(tree):
            yield from _nodes(v, f"{path}[{i}]")


def test_no_config_turns_on_remote_code() -> None:
    """Every ``trust_remote_code`` in every YAML is false; the LLM options state it explicitly."""
    for file in sorted(CONF_DIR.rglob("*.yaml")):
        for where, node in _nodes(yaml.safe_load(file.read_text()) or {}):
            if "trust_remote_code" in node:
                assert node["trust_remote_code"] is False, (file, where)
    for file in sorted((CONF_DIR / "llm").glob("*.yaml")):
        assert yaml.safe_load(file.read_text())["trust_remote_code"] is False, file


def test_no_code_path_turns_on_remote_code() -> None:
    hits = [
        f"{p.relative_to(SRC)}:{n}"
        for p in SRC.rglob("*.py")
        for n, line in enumerate(p.read_text().splitlines(), 1)
        if re.search(r"trust_remote_code\s*=\s*True", line)
    ]
    assert hits == []


@pytest.mark.parametrize("value", [None, True])
def test_llm_loader_passes_trust_remote_code_only_when_set(value, monkeypatch, tmp_path) -> None:
    """``load_llm`` forwards the per-component flag (default False) and asks for safetensors."""
    from transformers import AutoModelForCausalLM

    import medmvl.models.llm.loader as llm_mod

    calls = []

    def fake(path, **kwargs):
        calls.append(kwargs)
        raise RuntimeError("stop here")

    monkeypatch.setattr(AutoModelForCausalLM, "from_pretrained", fake)
    kwargs = {} if value is None else {"trust_remote_code": value}
    with pytest.raises(RuntimeError, match="stop here"):
        llm_mod.load_llm("some/hub-id", tokenizer=object(), **kwargs)
    assert calls[0]["trust_remote_code"] is (value is True)
    assert calls[0]["use_safetensors"] is True


def test_tokenizer_loader_defaults_remote_code_off(monkeypatch) -> None:
    from transformers import AutoTokenizer

    import medmvl.models.llm.tokenizer as tok_mod

    calls = []

    def fake(*args, **kwargs):
        calls.append(kwargs)
        raise RuntimeError("stop here")

    monkeypatch.setattr(AutoTokenizer, "from_pretrained", fake)
    for kwargs in ({}, {"trust_remote_code": True}):
        with pytest.raises(RuntimeError):
            tok_mod.load_tokenizer("some/hub-id", **kwargs)
    assert [c["trust_remote_code"] for c in calls] == [False, True]


# ---------------------------------------------------------------- safetensors only


def _pickle_only_folder(tmp_path: Path, marker: Path) -> Path:
    folder = tmp_path / "pickled"
    folder.mkdir()
    (folder / "config.json").write_text('{"model_type": "qwen2", "hidden_size": 16}')
    _evil_pickle(folder / "pytorch_model.bin", marker)
    return folder


def test_llm_folder_with_only_pickle_weights_is_refused(tmp_path: Path) -> None:
    from medmvl.models.llm.loader import load_llm

    marker = tmp_path / "pwned"
    folder = _pickle_only_folder(tmp_path, marker)
    with pytest.raises(
        PickleWeightsError, match=r"holds only pickle weights \(pytorch_model\.bin\).*safetensors"
    ):
        load_llm(str(folder), tokenizer=object())
    assert not marker.exists()


def test_encoder_folder_with_only_pickle_weights_is_refused(tmp_path: Path) -> None:
    from medmvl.models.encoders.siglip import SiglipEncoder

    marker = tmp_path / "pwned"
    folder = _pickle_only_folder(tmp_path, marker)
    with pytest.raises(PickleWeightsError, match="holds only pickle weights"):
        SiglipEncoder(str(folder))
    with pytest.raises(PickleWeightsError, match="is a pickle file"):
        SiglipEncoder(str(folder / "pytorch_model.bin"))
    assert not marker.exists()


# ---------------------------------------------------------------- Lightning checkpoints


def test_every_trainer_uses_the_atomic_weights_only_checkpoint_io() -> None:
    for option in sorted(p.stem for p in (CONF_DIR / "trainer").glob("*.yaml")):
        cfg = compose_train([f"trainer={option}"])
        targets = [p["_target_"] for p in cfg.trainer.get("plugins") or []]
        assert targets == ["medmvl.training.checkpoint_io.AtomicCheckpointIO"], option


def test_checkpoint_with_pickled_code_is_refused(tmp_path: Path) -> None:
    marker = tmp_path / "pwned"
    path = _evil_pickle(tmp_path / "evil.ckpt", marker)
    with zipfile.ZipFile(path) as z:  # the payload is really in there
        assert any(b"system" in z.read(n) for n in z.namelist() if n.endswith(".pkl"))
    io = AtomicCheckpointIO()
    with pytest.raises(UnsafeCheckpointError, match=r"refusing checkpoint .*evil\.ckpt.*weights_only=True"):
        io.load_checkpoint(path)
    with pytest.raises(ValueError, match="weights_only=True only"):
        io.load_checkpoint(path, weights_only=False)
    assert not marker.exists()
    with pytest.raises(pickle.UnpicklingError):  # what torch itself says without medmvl's wrapper
        torch.load(path, weights_only=True)
    assert not marker.exists()


@pytest.mark.slow
def test_resuming_from_a_malicious_checkpoint_is_refused(tmp_path: Path, colour_data: list[str]) -> None:
    """``ckpt_path=<file>`` through the training CLI: refused before anything in it is unpickled."""
    from medmvl.cli.train import train

    marker = tmp_path / "pwned"
    path = _evil_pickle(tmp_path / "evil.ckpt", marker)
    cfg = compose_train(
        [f"ckpt_path={path}", "save_model=false", "trainer.max_steps=1", *colour_data],
        output_dir=tmp_path / "run",
    )
    with pytest.raises(UnsafeCheckpointError, match="refusing checkpoint"):
        train(cfg)
    assert not marker.exists()


# ---------------------------------------------------------------- the Gradio demo


def test_demo_listens_locally_with_upload_limits_and_a_temporary_folder(monkeypatch) -> None:
    """``python demo.py model=...`` with the defaults: 127.0.0.1, no share link, the upload size limit
    handed to gradio, uploads in a new temporary folder removed when the process exits."""
    import atexit

    from hydra import compose, initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra

    from medmvl.cli import demo as demo_cli

    seen: dict = {}

    class FakeApp:
        def queue(self, **kwargs):
            return self

        def launch(self, **kwargs):
            seen["launch"] = kwargs
            seen["upload_dir"] = Path(os.environ["GRADIO_TEMP_DIR"])
            assert seen["upload_dir"].is_dir()

    def fake_build_app(generator, settings):
        seen["settings"] = settings
        os.environ["GRADIO_TEMP_DIR"] = str(Path(settings.upload_dir).resolve())
        return FakeApp()

    monkeypatch.setattr(demo_cli, "build_generator", lambda cfg: object())
    monkeypatch.setattr(demo_cli, "build_app", fake_build_app)
    monkeypatch.setenv("GRADIO_TEMP_DIR", "unset")
    at_exit: list = []
    monkeypatch.setattr(atexit, "register", lambda fn, *args, **kwargs: at_exit.append((fn, args, kwargs)))
    GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        cfg = compose(config_name="demo", overrides=["model=some/model/dir"])
    demo_cli.launch(cfg)
    launch = seen["launch"]
    assert launch["server_name"] == "127.0.0.1" and launch["share"] is False
    assert launch["max_file_size"] == f"{cfg.max_upload_mb}mb" and cfg.max_upload_mb <= 1024
    assert seen["settings"].max_unzipped_mb <= 4096
    assert seen["upload_dir"].name.startswith("medmvl-demo-") and seen["upload_dir"].exists()
    for fn, args, kwargs in at_exit:  # what happens when the demo process exits
        fn(*args, **kwargs)
    assert not seen["upload_dir"].exists()


def test_demo_uploads_are_checked_for_type_size_and_zip_escapes(tmp_path: Path) -> None:
    from medmvl.apps.scans import UploadError, open_scan

    limits = {"work_dir": tmp_path / "work", "max_bytes": 1000, "max_unzipped_bytes": 10_000}
    (tmp_path / "work").mkdir()
    weights = _evil_pickle(tmp_path / "model.pkl", tmp_path / "pwned")
    with pytest.raises(UploadError, match="file type '.pkl' is not accepted"):
        open_scan(weights, **limits)
    big = tmp_path / "big.png"
    big.write_bytes(b"\0" * 5000)
    with pytest.raises(UploadError, match=r"big\.png is .* MB; the limit is"):
        open_scan(big, **limits)
    evil = tmp_path / "series.zip"
    with zipfile.ZipFile(evil, "w") as z:
        z.writestr("../../escaped.dcm", b"x")
    with pytest.raises(UploadError, match="would unpack outside its folder"):
        open_scan(evil, **limits)
    bomb = tmp_path / "bomb.zip"
    with zipfile.ZipFile(bomb, "w", compression=zipfile.ZIP_DEFLATED) as z:
        z.writestr("series/1.dcm", b"\0" * 200_000)
    assert bomb.stat().st_size < 1000
    with pytest.raises(UploadError, match="unpacks to"):
        open_scan(bomb, **limits)
    assert not (tmp_path / "escaped.dcm").exists() and not (tmp_path / "pwned").exists()
    assert list((tmp_path / "work").iterdir()) == []
