"""Hydra sweeps: every job in its own folder, and medmvl-sweep-report's table and plot of them."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml
from PIL import Image

from medmvl.cli.sweep_report import main, report
from tests.conftest import run_entry


def _job(sweep: Path, name: str, num: int, overrides: list[str], csv_rows: list[str] | None = None) -> Path:
    job = sweep / name
    (job / ".hydra").mkdir(parents=True)
    (job / ".hydra" / "overrides.yaml").write_text(yaml.safe_dump(overrides))
    (job / ".hydra" / "hydra.yaml").write_text(yaml.safe_dump({"hydra": {"job": {"num": num}}}))
    if csv_rows is not None:
        (job / "csv").mkdir()
        (job / "csv" / "metrics.csv").write_text(
            "\n".join(["epoch,step,train/loss,val/loss", *csv_rows]) + "\n"
        )
    return job


def test_report_table_best_values_missing_jobs_and_plot(tmp_path: Path) -> None:
    sweep = tmp_path / "sweep"
    common = ["data.annotations=/data/train.json"]
    _job(sweep, "0_connector=mlp,stage=finetune", 0, [*common, "connector=mlp", "stage=finetune"],
         ["0,0,2.0,", "0,1,1.5,", "0,1,,1.40", "1,3,1.1,", "1,3,,1.20"])  # fmt: skip
    _job(sweep, "1_connector=attn_pool,stage=finetune", 1, [*common, "connector=attn_pool", "stage=finetune"],
         ["0,1,1.7,", "0,1,,1.30", "1,3,0.9,", "1,3,,0.95"])  # fmt: skip
    # a value with "/" nests the job folder one level deeper; the report still finds it
    nested = _job(sweep, "2_llm.name_or_path=Qwen/x", 2, [*common, "connector=mlp", "llm.name_or_path=Qwen/x"],
                  ["0,1,1.9,", "0,1,,1.60"])  # fmt: skip
    (nested / "demo_results.json").write_text(
        json.dumps(
            {
                "heldout_accuracy": 0.75,
                "text_only_accuracy": 0.5,
                "chance_accuracy": 0.5,
                "n_closed": 4,
                "ok": 1 > 0,
            }
        )
    )
    _job(sweep, "3_connector=attn_pool,stage=pretrain", 3, [*common, "connector=attn_pool", "stage=pretrain"])

    table, md, png = report(sweep)
    lines = table.splitlines()
    # counts (n_*), chance levels and booleans of result files are not outcomes: left out by default
    head = "| job | connector | llm.name_or_path | stage | val/loss | train/loss | heldout_accuracy | text_only_accuracy |"
    assert lines[0] == head
    assert lines[2] == "| 0 | mlp | - | finetune | 1.2 | 1.1 |  |  |"
    assert lines[3] == "| 1 | attn_pool | - | finetune | **0.95** | **0.9** |  |  |"  # lowest loss is best
    assert lines[4] == "| 2 | mlp | Qwen/x | - | 1.6 | 1.9 | **0.75** | **0.5** |"  # highest accuracy is best
    assert lines[5] == "| 3 | attn_pool | - | pretrain |  |  |  |  |"  # no metrics: listed, not dropped
    assert "No metrics (failed or running): 3_connector=attn_pool,stage=pretrain" in md.read_text()
    with Image.open(png) as image:
        assert image.format == "PNG" and image.width > 300 and image.height > 200

    out = tmp_path / "elsewhere"
    assert main([str(sweep), "--metric", "val/loss", "--metric", "n_closed", "--out", str(out)]) == 0
    assert (
        "| job | connector | llm.name_or_path | stage | val/loss | n_closed |\n"
        in (out / "sweep_report.md").read_text()
    )
    assert (out / "sweep_report.png").is_file()


def test_report_without_jobs_fails_clearly(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    assert main([str(tmp_path)]) == 2
    assert "no sweep jobs under" in capsys.readouterr().err


@pytest.mark.slow
def test_tiny_2x2_sweep_and_report(tmp_path: Path, colour_data: list[str]) -> None:
    sweep = tmp_path / "sweep"
    out = run_entry(
        "train.py",
        "-m",
        "encoder=tiny2d",
        "llm=tiny",
        "connector=mlp,attn_pool",
        "stage=finetune,pretrain",
        "trainer.max_steps=2",
        "trainer.log_every_n_steps=1",
        "trainer.limit_val_batches=1",
        "save_model=false",
        "callbacks.model_checkpoint=null",
        "+trainer.enable_checkpointing=false",
        f"hydra.sweep.dir={sweep}",
        *colour_data,
    )
    assert out.returncode == 0, out.stderr[-3000:]
    jobs = sorted(p.name for p in sweep.iterdir() if p.is_dir())
    # <num>_<overrides>; paths stay out of the folder names
    assert len(jobs) == 4 and all(name.startswith(f"{i}_") for i, name in enumerate(jobs))
    assert "connector=mlp" in jobs[0] and "stage=finetune" in jobs[0] and "stage=pretrain" in jobs[1]
    assert all("data.annotations" not in name for name in jobs)
    for name in jobs:
        assert (sweep / name / "csv" / "metrics.csv").is_file() and (sweep / name / ".hydra").is_dir()

    assert main([str(sweep)]) == 0
    table = (sweep / "sweep_report.md").read_text()
    rows = [ln for ln in table.splitlines() if ln.startswith("| ") and not ln.startswith("| job")]
    assert len(rows) == 4
    assert table.count("| job | connector | stage | val/loss | train/loss |") == 1
    configs = {tuple(c.strip() for c in row.split("|")[2:4]) for row in rows}
    assert configs == {
        ("mlp", "finetune"),
        ("mlp", "pretrain"),
        ("attn_pool", "finetune"),
        ("attn_pool", "pretrain"),
    }
    assert all(row.split("|")[4].strip() for row in rows), "every job reports val/loss"
    with Image.open(sweep / "sweep_report.png") as image:
        assert image.format == "PNG"
