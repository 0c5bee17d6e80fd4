"""train.py end to end on the tiny stack: fast_dev_run, saved outputs, overfitting, the CLI itself."""

from __future__ import annotations

import csv
import shlex
import time
from pathlib import Path

import pytest
import torch

from medmvl.cli.train import train
from medmvl.interop.serialization import from_pretrained
from medmvl.models.build import build_model
from tests.conftest import ROOT, compose_train, run_entry
from tests.helpers.colour import write_colour_set


def _losses(run_dir: Path) -> list[float]:
    with open(run_dir / "csv" / "metrics.csv") as f:
        return [float(r["train/loss"]) for r in csv.DictReader(f) if r.get("train/loss")]


def test_fast_dev_run(tmp_path: Path, colour_data: list[str]) -> None:
    cfg = compose_train(["debug=fast", *colour_data], output_dir=tmp_path / "run")
    metrics = train(cfg)
    assert "train/loss" in metrics and "val/loss" in metrics
    assert not (tmp_path / "run" / "model").exists()


def test_saves_checkpoint_metrics_and_model(tmp_path: Path, colour_data: list[str]) -> None:
    run = tmp_path / "run"
    cfg = compose_train(
        [
            "trainer.max_steps=3",
            "trainer.max_epochs=5",
            "trainer.log_every_n_steps=1",
            *colour_data,
        ],
        output_dir=run,
    )
    metrics = train(cfg)
    assert (run / "checkpoints" / "last.ckpt").exists()
    assert len(_losses(run)) == 3
    with open(run / "csv" / "metrics.csv") as f:
        columns = next(csv.reader(f))
    assert {"train/lr/connector", "train/lr/llm", "train/tokens_per_s"} <= set(columns)
    assert "train/lr/encoder" not in columns  # frozen in stage=finetune
    model = from_pretrained(metrics["model_dir"])
    assert model.image_token_counts == {"<image>": 16}
    # init_from takes the run's checkpoint as well as its saved folder: the same weights either way
    for source in (run / "checkpoints" / "last.ckpt", run):
        again = build_model(
            compose_train([f"init_from={source}", *colour_data], output_dir=tmp_path / "next")
        )
        state, saved = again.state_dict(), model.state_dict()
        assert state.keys() == saved.keys() and all(torch.equal(state[k], saved[k]) for k in saved), source


def test_overfits_eight_samples(tmp_path: Path, colour_data: list[str]) -> None:
    run = tmp_path / "run"
    cfg = compose_train(
        [
            "trainer.max_epochs=40",
            "trainer.log_every_n_steps=1",
            "data.batch_size=4",
            "stage.llm.lr=3e-3",
            "stage.connector.lr=3e-3",
            "stage.encoder.mode=full",
            "stage.encoder.lr=1e-3",
            "scheduler.warmup_ratio=0.05",
            "save_model=false",
            "callbacks.model_checkpoint=null",
            *colour_data,
        ],
        output_dir=run,
    )
    train(cfg)
    losses = _losses(run)
    first, last = sum(losses[:2]) / 2, sum(losses[-4:]) / 4
    assert last <= 0.2 * first, f"loss fell only from {first:.3f} to {last:.3f}"


def test_cfg_job_prints_3b_config_offline() -> None:
    out = run_entry("train.py", "encoder=siglip", "llm=qwen2.5", "--cfg", "job")
    assert out.returncode == 0, out.stderr
    assert "Qwen/Qwen2.5-3B-Instruct" in out.stdout and "siglip-base-patch16-256" in out.stdout


def test_typo_names_valid_choices() -> None:
    out = run_entry("train.py", "encoder=sigilp", "--cfg", "job")
    assert out.returncode != 0
    assert "sigilp" in out.stderr and "siglip" in out.stderr and "tiny2d" in out.stderr


def test_ckpt_path_last_resumes_the_run_folder(tmp_path: Path, colour_data: list[str]) -> None:
    run = tmp_path / "run"
    base = ["trainer.max_epochs=5", "trainer.log_every_n_steps=1", "save_model=false"]
    train(compose_train([*base, "trainer.max_steps=2", *colour_data], output_dir=run))
    assert (run / "checkpoints" / "last.ckpt").exists()
    metrics = train(
        compose_train([*base, "trainer.max_steps=4", "ckpt_path=last", *colour_data], output_dir=run)
    )
    assert "train/loss" in metrics
    steps = [int(r["step"]) for r in csv.DictReader(open(run / "csv" / "metrics.csv")) if r.get("train/loss")]
    # the resumed run did only the 2 missing optimizer steps and appended them to the first run's rows
    assert len(steps) == 4 and steps[:2] == [0, 1] and steps == sorted(set(steps))


def test_no_data_names_what_is_missing_and_the_ways_on(tmp_path: Path) -> None:
    out = run_entry("train.py", f"hydra.run.dir={tmp_path}")
    assert out.returncode == 2, out.stderr[-2000:]
    assert "data.annotations: give data.annotations=<train.json>" in out.stderr
    assert "make train (python train.py experiment=demo)" in out.stderr
    assert "Traceback" not in out.stderr and not (tmp_path / "checkpoints").exists()


def test_recipe_without_its_start_model_stops_before_building(tmp_path: Path) -> None:
    out = run_entry(
        "train.py", "experiment=medm_vl/2d_3b_lora", "data.annotations=x.json", f"hydra.run.dir={tmp_path}"
    )
    assert out.returncode == 2 and "init_from: give init_from=<model folder>" in out.stderr, out.stderr[
        -2000:
    ]


def _readme_toy_command() -> list[str]:
    """The overrides of the README's toy-size command (the command after ``# the same stack at toy size``)."""
    lines = (ROOT / "README.md").read_text().splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith("# the same stack at toy size"))
    command = ""
    for line in [line for line in lines[start + 1 :] if not line.startswith("#")]:
        command += line.rstrip("\\").strip() + " "
        if not line.endswith("\\"):
            break
    words = shlex.split(command)
    assert words[:2] == ["python", "train.py"], command
    return words[2:]


@pytest.mark.slow
def test_readme_toy_command_visibly_learns(tmp_path: Path) -> None:
    """The README's toy command on a toy set (8 colour images): the training loss falls from ln(vocabulary)
    to well under 1."""
    ann = write_colour_set(tmp_path / "data")
    paths = {"train.json": str(ann), "imgs/": str(tmp_path / "data" / "imgs")}
    args = [k + "=" + paths.get(v, v) for k, _, v in (a.partition("=") for a in _readme_toy_command())]
    assert any(a.startswith("data.annotations=") for a in args) and str(ann) in " ".join(args)
    run = tmp_path / "run"
    start = time.monotonic()
    train(compose_train([*args, "callbacks.rich_progress_bar=null"], output_dir=run))
    seconds = time.monotonic() - start
    losses = _losses(run)
    assert len(losses) >= 10, losses
    assert losses[0] > 10 and losses[-1] < 1.0, f"loss {losses[0]:.3f} -> {losses[-1]:.3f} in {seconds:.0f} s"
