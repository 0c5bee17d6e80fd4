"""Progress you can watch, and defaults that say when they cannot learn: ``log_every_n_steps`` capped at an
epoch, one plain summary line per epoch, no stale ``train/loss`` on a step that trained nothing, and a loud
warning when a stage freezes a module that has random weights."""

from __future__ import annotations

import csv
import logging
import re
from pathlib import Path

import pytest

from medmvl.cli.train import train
from tests.conftest import compose_train
from tests.helpers.colour import write_colour_set

QUIET = ["save_model=false", "callbacks.rich_progress_bar=null", "callbacks.model_checkpoint=null"]


def _data(tmp_path: Path, val: bool = False) -> list[str]:
    ann = write_colour_set(tmp_path / "data")  # 8 samples
    out = [f"data.annotations={ann}", f"data.image_dir={tmp_path / 'data' / 'imgs'}"]
    return [*out, f"data.val_annotations={ann}"] if val else out


def _rows(run: Path, column: str) -> list[tuple[int, float]]:
    with open(run / "csv" / "metrics.csv") as f:
        return [(int(r["step"]), float(r[column])) for r in csv.DictReader(f) if r.get(column)]


def test_log_every_n_steps_is_capped_at_an_epoch(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    """8 samples in batches of 4 are 2 steps an epoch: log_every_n_steps=10 would log no train/loss."""
    run = tmp_path / "run"
    cfg = compose_train(
        [*_data(tmp_path), *QUIET, "trainer.max_epochs=2", "trainer.log_every_n_steps=10"], output_dir=run
    )
    with caplog.at_level(logging.INFO, logger="medmvl"):
        train(cfg)
    assert [s for s, _ in _rows(run, "train/loss")] == [1, 3]  # the last step of each epoch
    assert "trainer.log_every_n_steps=10 is more than the 2 optimizer steps of an epoch" in caplog.text
    assert "logging every 2 steps" in caplog.text


def test_each_epoch_ends_with_a_plain_summary_line(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    run = tmp_path / "run"
    cfg = compose_train(
        [*_data(tmp_path, val=True), *QUIET, "trainer.max_epochs=2", "trainer.log_every_n_steps=1"],
        output_dir=run,
    )
    with caplog.at_level(logging.INFO, logger="medmvl"):
        train(cfg)
    lines = [r.getMessage() for r in caplog.records if r.getMessage().startswith("epoch ")]
    summary = [line for line in lines if "tokens/s" in line]
    assert len(summary) == 2, lines
    pattern = (
        r"epoch (\d)/2 \(step (\d)/4\): loss (\d+\.\d{3}), val loss (\d+\.\d{3}), [\d,]+ tokens/s, "
        r"elapsed \d+:\d\d:\d\d, ETA \d+:\d\d:\d\d"
    )
    matches = [re.fullmatch(pattern, line) for line in summary]
    assert all(matches), summary
    assert [(m[1], m[2]) for m in matches] == [("1", "2"), ("2", "4")]
    # the summary's loss is the epoch's mean training loss, its val loss the validation epoch's
    losses = [v for _, v in _rows(run, "train/loss")]
    assert float(matches[0][3]) == pytest.approx(sum(losses[:2]) / 2, abs=1e-3)
    assert float(matches[1][4]) == pytest.approx(_rows(run, "val/loss")[-1][1], abs=1e-3)
    assert summary[-1].endswith("ETA 0:00:00")


def test_a_step_whose_batch_was_skipped_logs_no_train_loss(tmp_path: Path) -> None:
    """Two of eight images are unreadable (data.on_error=skip), batches of one: those two steps train
    nothing, so their rows hold no train/loss or tokens/s (not the previous step's values again)."""
    run = tmp_path / "run"
    data = _data(tmp_path)
    for i in (2, 5):
        (tmp_path / "data" / "imgs" / f"{i}.png").write_bytes(b"not a png any more")
    cfg = compose_train(
        [
            *data,
            *QUIET,
            "data.on_error=skip",
            "data.batch_size=1",
            "trainer.max_epochs=1",
            "trainer.log_every_n_steps=1",
        ],
        output_dir=run,
    )
    train(cfg)
    losses = _rows(run, "train/loss")
    assert len(losses) == 6, losses  # 8 steps, 2 of them skipped
    assert len(_rows(run, "train/tokens_per_s")) == 6
    assert len({v for _, v in losses}) == 6  # no value repeated on a skipped step


def _random_weight_warnings(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [
        r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING and "random" in r.getMessage()
    ]


def test_a_frozen_encoder_with_random_weights_is_warned_about(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """stage=finetune (the default) freezes the encoder; encoder=tiny2d (the default) has random weights."""
    cfg = compose_train(["debug=fast", *_data(tmp_path)], output_dir=tmp_path / "run")
    with caplog.at_level(logging.WARNING):
        train(cfg)
    (warning,) = [w for w in _random_weight_warnings(caplog) if "encoder" in w.split(" ")[0]]
    assert "stage.encoder.mode=full" in warning and "encoder.name_or_path=<folder>" in warning
    assert "frozen" in warning and "stage=scratch" in warning


def test_no_random_weight_warning_when_every_random_part_learns(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    cfg = compose_train(["debug=fast", "stage=scratch", *_data(tmp_path)], output_dir=tmp_path / "run")
    with caplog.at_level(logging.WARNING):
        train(cfg)
    assert not _random_weight_warnings(caplog)


@pytest.mark.parametrize(
    ("overrides", "random"),
    [
        ([], {"encoder", "llm"}),  # tiny2d + tiny: built from their configs
        (["encoder=siglip", "llm=qwen2.5"], set()),  # hub checkpoints
        (["encoder=siglip_slices"], {"llm"}),  # a slice-wise tower follows its 2D SigLIP
        (["encoder=patch"], {"encoder", "llm"}),
        (["encoder=siglip", "encoder3d=tiny3d", "connector3d=mlp"], {"encoder3d", "llm"}),
        (["experiment=demo"], set()),  # caption-pre-trained encoder + SmolLM2: no warning in the demos
        (["experiment=demo_3d"], set()),
    ],
)
def test_which_parts_have_random_weights(overrides: list[str], random: set[str]) -> None:
    from omegaconf import OmegaConf

    from medmvl.models.build import random_weight_parts
    from medmvl.training.stages import random_weight_warnings

    cfg = compose_train(overrides)
    parts = random_weight_parts(cfg)
    assert set(parts) == random
    stage = OmegaConf.to_container(cfg.stage, resolve=True)
    warned = {m.split(" ")[0] for m in random_weight_warnings(stage, parts, cfg.optimizer.lr)}
    assert warned == random  # frozen, LoRA on random weights, or a fine-tuning rate: each one warned
    assert not random_weight_warnings(OmegaConf.to_container(compose_train(["stage=scratch"]).stage), parts)
