"""evaluate.py: score a prediction file in-process; answer-then-score from a saved model end to end."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from hydra import compose, initialize_config_dir
from hydra.core.global_hydra import GlobalHydra
from omegaconf import DictConfig

from medmvl.cli.evaluate import evaluate
from medmvl.data.schema import AnnotationError
from tests.conftest import CONF_DIR, run_entry
from tests.helpers.records import record, write_records


def compose_evaluate(overrides: list[str]) -> DictConfig:
    GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        return compose(config_name="evaluate", overrides=overrides)


def _predictions(tmp_path: Path) -> Path:
    rows = [
        record("1", "Is it a CT?", gpt="Yes.", answer="yes", question_type="presence"),
        record("2", "Is it an MRI?", gpt="yes", answer="no", question_type="presence"),
        record("3", "What organ?", gpt="the liver", answer="liver", question_type="organ"),
    ]
    return write_records(tmp_path / "val.json", rows)


def test_scores_a_prediction_file(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "eval"
    result = evaluate(compose_evaluate([f"predictions={_predictions(tmp_path)}", f"output_dir={out}"]))
    metrics = json.loads((out / "metrics.json").read_text())
    assert result["metrics_file"] == str(out / "metrics.json")
    assert metrics["overall"]["closed_accuracy"] == 0.5 and metrics["overall"]["exact_match"] == 1.0
    assert metrics["by_question_type"]["presence"]["n"] == 2 and list(metrics["by_dataset"]) == ["val"]
    table = (out / "metrics.md").read_text()
    assert "| overall | 3 | 50.0 | - | 100.0 | 100.0 |" in table and table in capsys.readouterr().out
    scores = [json.loads(line) for line in (out / "scores.jsonl").read_text().splitlines()]
    assert [s["id"] for s in scores] == ["1", "2", "3"] and scores[1]["correct"] is False


def test_needs_predictions_or_a_model(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="give predictions="):
        evaluate(compose_evaluate([f"output_dir={tmp_path}"]))
    with pytest.raises(ValueError, match="needs data.annotations"):
        evaluate(compose_evaluate([f"output_dir={tmp_path}", f"model={tmp_path}"]))


def test_names_every_bad_record_at_once(tmp_path: Path) -> None:
    """Issue 16: evaluate.py named the first bad record and "(N more problem(s))"; now each one."""
    rows = [
        record("1", "Is it a CT?", gpt="Yes.", answer="yes"),
        record("no_ref", "What organ?", gpt="liver"),
        record("bad_type", "Is it?", gpt="yes", answer="yes", answer_type="yesno"),
        record("no_pred", "Which?", answer="left"),
    ]
    path = write_records(tmp_path / "val.json", rows)
    with pytest.raises(AnnotationError) as info:
        evaluate(compose_evaluate([f"predictions={path}", f"output_dir={tmp_path / 'eval'}"]))
    message = str(info.value)
    assert message.startswith(f"3 problem(s) in {path}:") and "more problem" not in message
    for index, rid, what in [
        (1, "no_ref", "no reference"),
        (2, "bad_type", "answer_type"),
        (3, "no_pred", "no prediction"),
    ]:
        assert f"{path}: record {index} (id {rid!r}): " in message and what in message
    assert not (tmp_path / "eval" / "metrics.json").exists()


@pytest.mark.slow
def test_model_to_score_table_in_one_command(saved_model: Path, image_dir: Path, tmp_path: Path) -> None:
    ann = write_records(
        tmp_path / "heldout.json",
        [
            record("a", "Is the liver visible?", "0.png", answer="yes", question_type="presence"),
            record("b", "What is this?", "1.png", answer="a CT scan", question_type="modality"),
        ],
    )
    out = tmp_path / "eval"
    args = [
        f"model={saved_model}",
        f"data.annotations={ann}",
        f"data.image_dir={image_dir}",
        f"output_dir={out}",
        "max_new_tokens=3",
        f"hydra.run.dir={tmp_path / 'run'}",
    ]
    proc = run_entry("evaluate.py", *args)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert proc.stdout.splitlines()[-1] == str(out / "metrics.json")
    assert "| overall | 2 |" in proc.stdout and "| type: modality | 1 |" in proc.stdout
    assert "| dataset: heldout | 2 |" in proc.stdout  # named after the annotation file, not predictions.json
    predictions = json.loads((out / "predictions.json").read_text())
    assert [p["id"] for p in predictions] == ["a", "b"] and predictions[1]["answer"] == "a CT scan"
    assert predictions[0]["conversations"][-1]["from"] == "gpt"
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["files"] == [str(out / "predictions.json")] and metrics["overall"]["n_open"] == 1
