"""Loggers and callbacks: W&B offline runs and TensorBoard event files hold the config, the metrics, the
trainable-parameter table and the validation prediction table; the prediction prompt is the generation prompt."""

from __future__ import annotations

import contextlib
import json
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from hydra.utils import instantiate
from lightning.pytorch.loggers import CSVLogger
from PIL import Image

from medmvl.cli.train import train
from medmvl.data.conversation import IGNORE_INDEX
from medmvl.inference.generator import Generator
from medmvl.models.build import build_model
from medmvl.training import callbacks
from medmvl.training.callbacks import ValPredictionTable, preview, split_answer
from medmvl.training.loggers import resolve_wandb_mode
from tests.conftest import compose_train
from tests.helpers.colour import write_colour_set
from tests.helpers.wandb_offline import run_contents

RUN = [
    "trainer.max_steps=4",
    "trainer.max_epochs=2",  # 8 samples, batch 4: validation after steps 2 and 4
    "trainer.log_every_n_steps=1",
    "save_model=false",
    "callbacks.val_predictions.max_new_tokens=4",
]


@pytest.fixture
def colour(tmp_path: Path) -> list[str]:
    ann = write_colour_set(tmp_path / "data")
    return [
        f"data.annotations={ann}",
        f"data.val_annotations={ann}",
        f"data.image_dir={tmp_path / 'data' / 'imgs'}",
    ]


@pytest.fixture
def wandb_env(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """No key, no mode: the logger must choose offline; every W&B folder inside tmp_path."""
    monkeypatch.delenv("WANDB_API_KEY", raising=False)
    monkeypatch.delenv("WANDB_MODE", raising=False)
    for var in ("WANDB_DIR", "WANDB_DATA_DIR", "WANDB_CACHE_DIR", "WANDB_CONFIG_DIR"):
        monkeypatch.setenv(var, str(tmp_path / "wandb_home" / var.lower()))
    monkeypatch.setenv("WANDB_SILENT", "true")
    monkeypatch.setenv("WANDB_CONSOLE", "off")
    return tmp_path / "wandb_home"


def test_split_answer_cuts_before_the_last_answer() -> None:
    ids = torch.arange(10)
    labels = torch.tensor([IGNORE_INDEX] * 2 + [2, 3] + [IGNORE_INDEX] * 3 + [7, 8] + [IGNORE_INDEX])
    prompt, answer = split_answer(ids, labels)
    assert prompt.tolist() == list(range(7)) and answer.tolist() == [7, 8]
    with pytest.raises(ValueError, match="no supervised tokens"):
        split_answer(ids, torch.full((10,), IGNORE_INDEX))


def test_prediction_prompt_is_the_generation_prompt(tmp_path: Path, colour: list[str]) -> None:
    cfg = compose_train([*colour], output_dir=tmp_path / "run")
    model = build_model(cfg)
    dm = instantiate(cfg.data)(
        tokenizer=model.tokenizer,
        image_token_counts=model.image_token_counts,
        image_config=model.image_config,
    )
    dm.setup("fit")
    item, sample = dm.val_set[1], dm.val_set.items[1].sample
    prompt, answer = split_answer(item["input_ids"], item["labels"])
    expected = Generator(model).prompt(sample, image_dir=tmp_path / "data" / "imgs")
    assert torch.equal(prompt, expected["input_ids"])
    assert model.tokenizer.decode(answer, skip_special_tokens=True) == "It is green."


def test_ct_predictions_show_the_middle_slice(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """3D: a tiny CT model answers two volumes; the table's image is each volume's middle axial slice."""
    vols = tmp_path / "vols"
    vols.mkdir()
    records = []
    for i in range(2):
        hu = np.full((16, 32, 32), -1000, dtype=np.int16)  # [d, h, w] air
        hu[:, 8:24, 8:24] = 40  # soft tissue block (foreground) in every slice
        hu[8, 10:14, 10:14] = 1000  # bone only in the middle slice
        np.save(vols / f"ct{i}.npy", hu)
        records.append(
            {
                "id": f"ct{i}",
                "image3d": [f"ct{i}.npy"],
                "conversations": [
                    {"from": "human", "value": "<image3d>\nIs there bone?"},
                    {"from": "gpt", "value": "Yes."},
                ],
            }
        )
    ann = tmp_path / "ct.json"
    ann.write_text(json.dumps(records))
    overrides = ["encoder=tiny3d", "data=llava_3d", f"data.annotations={ann}"]
    cfg = compose_train([*overrides, f"data.val_annotations={ann}", f"data.image3d_dir={vols}"], tmp_path)
    model = build_model(cfg)
    dm = instantiate(cfg.data, _convert_="all")(
        tokenizer=model.tokenizer,
        image_token_counts=model.image_token_counts,
        image_config=model.image_config,
        volume_config=model.volume_config,
    )
    dm.setup("validate")
    logged = []
    monkeypatch.setattr("medmvl.training.callbacks.log_table", lambda *args: logged.append(args))
    trainer = SimpleNamespace(
        sanity_checking=False,
        current_epoch=0,
        global_step=7,
        loggers=[],
        datamodule=dm,
        precision_plugin=SimpleNamespace(val_step_context=contextlib.nullcontext),
        is_global_zero=True,
        world_size=1,
        default_root_dir=str(tmp_path / "run"),
    )
    module = SimpleNamespace(model=model, device=torch.device("cpu"))
    ValPredictionTable(max_new_tokens=3, enabled=True).on_validation_epoch_end(trainer, module)
    ((_, key, columns, rows, step),) = logged
    assert key == "val/predictions" and step == 7 and len(rows) == 2
    for row in rows:
        record = dict(zip(columns, row))
        assert record["question"] == "Is there bone?" and record["reference"] == "Yes."
        # [h, w, 3] uint8, min-max scaled: in the middle slice only the small bone patch reaches 255 (any
        # other slice would show the whole tissue block, hundreds of pixels, at 255)
        image = record["image"]
        brightest = int((image == 255).all(axis=2).sum())
        assert image.shape == (32, 32, 3) and 0 < brightest < 150, brightest
    written = json.loads((tmp_path / "run" / "val_predictions" / "epoch000_step000007.json").read_text())
    assert [r["id"] for r in written] == ["ct0", "ct1"] and all(
        isinstance(r["prediction"], str) for r in written
    )


def test_preview_2d_grey_and_3d_middle_slice() -> None:
    grey = torch.linspace(-1, 1, 16).reshape(1, 1, 4, 4)  # [k, c, h, w]
    img = preview(grey)
    assert img.shape == (4, 4, 3) and img.dtype.name == "uint8" and img.min() == 0 and img.max() == 255
    volume = torch.zeros(1, 1, 5, 4, 4)  # [k, c, d, h, w]
    volume[0, 0, 2, 0, 0] = 1.0  # only the middle slice has a bright voxel
    assert preview(volume)[0, 0].tolist() == [255, 255, 255] and preview(volume).sum() == 3 * 255


def test_wandb_mode(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("WANDB_API_KEY", raising=False)
    monkeypatch.delenv("WANDB_MODE", raising=False)
    assert resolve_wandb_mode(None) == "offline"
    monkeypatch.setenv("WANDB_API_KEY", "x" * 40)
    assert resolve_wandb_mode(None) == "online"
    assert resolve_wandb_mode(True) == "offline"
    monkeypatch.setenv("WANDB_MODE", "disabled")
    assert resolve_wandb_mode(None) == "disabled" and resolve_wandb_mode(False) == "online"


def test_csv_only_runs_generate_nothing(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    read: list[object] = []  # trainers whose validation samples the callback went on to read
    monkeypatch.setattr(callbacks, "_val_dataset", lambda trainer: read.append(trainer))
    trainer = SimpleNamespace(
        sanity_checking=False, current_epoch=0, loggers=[CSVLogger(tmp_path)], default_root_dir=str(tmp_path)
    )
    ValPredictionTable().on_validation_epoch_end(trainer, pl_module=None)
    assert read == [] and not (tmp_path / "val_predictions").exists()  # CSV shows no tables: no generation
    ValPredictionTable(enabled=True).on_validation_epoch_end(trainer, pl_module=None)
    assert read == [trainer]  # enabled=true: the same CSV-only run goes on to answer its samples


@pytest.mark.slow
def test_wandb_offline_run_holds_config_metrics_and_tables(
    tmp_path: Path, colour: list[str], wandb_env: Path
) -> None:
    import wandb

    run = tmp_path / "run"
    train(compose_train([*RUN, "logger=[csv,wandb]", *colour], output_dir=run))
    assert wandb.run is None, "the logger must finish its run (the next sweep job starts a new one)"
    wandb.teardown()  # wait for W&B's writer process to flush the run file (finish() may return before)
    (run_dir,) = (run / "wandb").glob("offline-run-*")
    contents = run_contents(run_dir)
    config = contents["config"]
    assert config["encoder"]["_target_"] == "medmvl.models.encoders.siglip.SiglipEncoder"
    assert config["stage"]["llm"]["mode"] == "full" and config["trainer"]["max_steps"] == 4
    assert config["params/connector/trainable"] == config["params/connector/total"] > 0
    history = contents["history"]
    assert sum("train/loss" in row for row in history) == 4
    assert sum("val/loss" in row for row in history) == 2
    tables = [row["val/predictions"] for row in history if "val/predictions" in row]
    assert len(tables) == 2 and all(t["_type"] == "table-file" and t["nrows"] == 4 for t in tables)
    assert any("params/trainable" in row for row in history)

    media = run_dir / "files" / "media" / "table"
    (params,) = (media / "params").glob("trainable_*.table.json")
    rows = {r[0]: r for r in json.loads(params.read_text())["data"]}
    assert rows["encoder"][2] == 0 and rows["llm"][2] == rows["llm"][1] > 0  # stage=finetune
    predictions = sorted((media / "val").glob("predictions_*.table.json"))
    assert len(predictions) == 2
    table = json.loads(predictions[-1].read_text())
    assert table["columns"] == ["epoch", "step", "id", "image", "question", "reference", "prediction"]
    assert [r[2] for r in table["data"]] == ["c0", "c2", "c5", "c7"]  # spread over the 8 samples
    assert {r[5] for r in table["data"]} == {"It is red.", "It is blue.", "It is green.", "It is yellow."}
    assert all(r[4] == "What colour is this?" and isinstance(r[6], str) for r in table["data"])
    # the images of the table are staged for `wandb sync` as PNGs at the encoder's input size
    pngs = [Image.open(p) for p in wandb_env.rglob("*") if p.is_file() and p.read_bytes()[:4] == b"\x89PNG"]
    assert len(pngs) >= 4 and {p.size for p in pngs} == {(32, 32)}
    files = sorted((run / "val_predictions").glob("*.json"))
    assert [f.name for f in files] == ["epoch000_step000002.json", "epoch001_step000004.json"]


@pytest.mark.slow
def test_tensorboard_run_with_lora(tmp_path: Path, colour: list[str]) -> None:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    run = tmp_path / "run"
    train(
        compose_train(
            [*RUN, "logger=tensorboard", "stage=lora", "stage.llm.lora.r=4", *colour], output_dir=run
        )
    )
    (events,) = (run / "tensorboard").glob("events.out.tfevents.*")
    acc = EventAccumulator(str(events), size_guidance={"images": 0, "tensors": 0, "scalars": 0})
    acc.Reload()
    tags = acc.Tags()
    assert {"train/loss", "val/loss", "train/lr/llm"} <= set(tags["scalars"])
    assert len(acc.Scalars("val/loss")) == 2
    assert {"params/trainable/text_summary", "val/predictions/text_summary"} <= set(tags["tensors"])
    text = acc.Tensors("val/predictions/text_summary")[-1].tensor_proto.string_val[0].decode()
    assert (
        "| epoch | step | id | image | question | reference | prediction |" in text and "It is red." in text
    )
    assert len([t for t in tags["images"] if t.startswith("val/predictions/")]) == 4
    assert len(list((run / "val_predictions").glob("*.json"))) == 2
