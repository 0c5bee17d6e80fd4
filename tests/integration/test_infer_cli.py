"""infer.py end to end on a saved tiny model: one question, a file, resuming a file, refusing to resume another
model's file, clear errors."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import pytest
from hydra import compose, initialize_config_dir
from hydra.core.global_hydra import GlobalHydra
from omegaconf import DictConfig

from medmvl.cli.infer import infer
from medmvl.data.schema import AnnotationError
from medmvl.evaluation.predictions import load_predictions
from medmvl.inference import Generator
from medmvl.inference.batch import meta_path
from medmvl.inference.loading import resolve_model_path
from medmvl.models.vlm import MedVLM
from tests.conftest import CONF_DIR, run_entry
from tests.helpers.records import record, write_records


def compose_infer(overrides: list[str]) -> DictConfig:
    GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        return compose(config_name="infer", overrides=overrides)


def test_one_question_prints_the_answer(
    saved_model: Path, talkative_model: MedVLM, image_dir: Path, tmp_path: Path
) -> None:
    question = "Is the liver visible?"
    args = [
        f"model={saved_model}",
        f"image={image_dir / '0.png'}",
        f"question={question}",
        "max_new_tokens=5",
        f"hydra.run.dir={tmp_path / 'run'}",
    ]
    out = run_entry("infer.py", *args)
    assert out.returncode == 0, out.stderr
    expected = Generator(talkative_model).answer(image_dir / "0.png", question, max_new_tokens=5)
    assert expected and out.stdout.splitlines()[-1] == expected


def test_file_inference_appends_answers_and_resumes(
    saved_model: Path, image_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    first = [
        record("a", "Is the liver visible?", "0.png", gpt="yes"),
        record("b", "What is this?", "1.png"),
        record("c", "Hello?"),
    ]
    first[1]["answer"] = "CT"
    ann = write_records(tmp_path / "test.json", first)
    output = tmp_path / "out" / "pred.json"
    overrides = [
        f"model={saved_model}",
        f"data.annotations={ann}",
        f"data.image_dir={image_dir}",
        f"output={output}",
        "batch_size=2",
        "max_new_tokens=4",
    ]
    assert infer(compose_infer(overrides)) == str(output)
    rows = json.loads(output.read_text())
    assert [r["id"] for r in rows] == ["a", "b", "c"]
    assert rows[0]["answer"] == "yes" and rows[1]["answer"] == "CT" and rows[2]["answer"] is None
    for row, rec in zip(rows, first):
        *given, gpt = row["conversations"]
        assert given == rec["conversations"] and gpt == {"from": "gpt", "value": row["prediction"]}
        assert gpt["value"] and row.get("image") == rec.get("image")

    seen: list[str] = []
    original = Generator.generate

    def spy(self: Generator, queries, **kwargs):  # noqa: ANN001, ANN202
        queries = list(queries)
        seen.extend(q.id for q in queries)
        return original(self, queries, **kwargs)

    monkeypatch.setattr(Generator, "generate", spy)
    write_records(ann, [*first[:2], record("d", "Where?", "2.png"), first[2]])
    infer(compose_infer(overrides))
    assert seen == ["d"]
    resumed = json.loads(output.read_text())
    assert [r["id"] for r in resumed] == ["a", "b", "d", "c"]
    assert resumed[:2] == rows[:2] and resumed[3] == rows[2]


def test_another_models_output_is_not_resumed(
    saved_model: Path, saved_model_3d: Path, image_dir: Path, tmp_path: Path
) -> None:
    """Rerunning with ``output=`` at a file another model wrote refuses, naming what differs; overwrite=true
    answers afresh. The file records the resolved model folder (a run folder's model/) and its weights' hash."""
    ann = write_records(tmp_path / "test.json", [record("a", "Is it a CT?", "0.png", answer="yes")])
    output = tmp_path / "pred.json"
    common = [
        f"data.annotations={ann}",
        f"data.image_dir={image_dir}",
        f"output={output}",
        "max_new_tokens=4",
    ]
    infer(compose_infer([f"model={saved_model_3d.parent}", *common]))
    before = output.read_text()
    meta = json.loads(meta_path(output).read_text())
    digest = hashlib.sha256((saved_model_3d / "model.safetensors").read_bytes()).hexdigest()
    assert meta["model"] == {
        "path": str(saved_model_3d.resolve()),
        "weights": {"model.safetensors": f"sha256:{digest}"},
    }
    assert meta["prompt"]["format"] == "chat" and meta["generation"]["max_new_tokens"] == 4
    with pytest.raises(
        AnnotationError,
        match=r"(?s)pred\.json.*model\.weights\[model\.safetensors\]: sha256:.*overwrite=true",
    ):
        infer(compose_infer([f"model={saved_model}", *common]))
    assert output.read_text() == before
    infer(compose_infer([f"model={saved_model}", *common, "overwrite=true"]))
    assert json.loads(meta_path(output).read_text())["model"]["path"] == str(saved_model.resolve())
    (row,) = load_predictions([output])
    assert row.reference == "yes" and row.prediction == json.loads(output.read_text())[0]["prediction"]


def test_not_a_model_folder_is_a_clear_error(tmp_path: Path, saved_model: Path) -> None:
    with pytest.raises(FileNotFoundError, match="is not a saved medmvl model.*medmvl_config.json"):
        resolve_model_path(tmp_path)
    with pytest.raises(FileNotFoundError, match="does not exist"):
        infer(compose_infer([f"model={tmp_path / 'nope'}", "question=hi"]))
    assert resolve_model_path(saved_model.parent) == ("medmvl", saved_model)  # a run folder holding model/


def test_question_or_file_not_both(saved_model: Path, tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="either question"):
        infer(
            compose_infer([f"model={saved_model}", "question=hi", f"data.annotations={tmp_path / 'x.json'}"])
        )
    with pytest.raises(ValueError, match="either question"):
        infer(compose_infer([f"model={saved_model}"]))
