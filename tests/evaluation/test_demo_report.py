"""demo_report as the post_train hook: held-out scores with and without images, files, stdout contract."""

from __future__ import annotations

import json
import time
from pathlib import Path

import pytest

from medmvl.data.datamodule import MedVLDataModule
from medmvl.demo.report import demo_report, process_start_time
from medmvl.inference import Generator
from medmvl.models.vlm import MedVLM
from tests.inference.conftest import record, write_records

KEYS = {
    "heldout_accuracy",
    "text_only_accuracy",
    "per_question_type",
    "n_closed",
    "minutes",
    "chance_accuracy",
    "open_recall",
    "text_only_open_recall",
    "predictions",
}


@pytest.fixture
def datamodule(talkative_model: MedVLM, image_dir: Path, tmp_path: Path) -> MedVLDataModule:
    records = [
        record(
            "p0",
            "Is the liver visible?",
            "0.png",
            "yes",
            question_type="organ_presence",
            answer_type="closed",
            choices=["yes", "no"],
        ),
        record(
            "p1",
            "Is the liver visible?",
            "1.png",
            "no",
            question_type="organ_presence",
            answer_type="closed",
            choices=["yes", "no"],
        ),
        record(
            "m0",
            "Is this image from MRI or CT?",
            "2.png",
            "CT",
            question_type="modality",
            answer_type="closed",
            choices=["MRI", "CT"],
        ),
        record(
            "o0",
            "What type of image is this?",
            "0.png",
            "CT",
            question_type="modality_open",
            answer_type="open",
        ),
    ]
    val = write_records(tmp_path / "val.json", records)
    return MedVLDataModule(
        annotations=val,
        val_annotations=val,
        image_dir=image_dir,
        max_length=256,
        tokenizer=talkative_model.tokenizer,
        image_token_counts=talkative_model.image_token_counts,
        image_config=talkative_model.encoder.preprocess,
    )


def test_writes_results_and_prints_path_last(
    talkative_model: MedVLM, datamodule: MedVLDataModule, tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    metrics = demo_report(
        model=talkative_model,
        datamodule=datamodule,
        output_dir=tmp_path / "run",
        batch_size=3,
        max_new_tokens=3,
    )
    path = tmp_path / "run" / "demo_results.json"
    assert capsys.readouterr().out.rstrip("\n").splitlines()[-1] == str(path)
    results = json.loads(path.read_text())
    assert KEYS <= set(results) and results["n_closed"] == 3 and results["n_open"] == 1
    assert set(results["per_question_type"]) == {"organ_presence", "modality", "modality_open"}
    assert {"accuracy", "text_only_accuracy", "n"} <= set(results["per_question_type"]["modality"])
    assert 0.0 <= results["minutes"] < 24 * 60
    predictions = json.loads(Path(results["predictions"]).read_text())
    assert [p["id"] for p in predictions] == ["p0", "p1", "m0", "o0"]
    assert {"prediction", "text_only_prediction", "correct", "text_only_correct"} <= set(predictions[0])
    assert metrics["demo_results"] == str(path) and metrics["n_closed"] == 3
    assert not talkative_model.training


def test_scores_with_and_without_image(
    talkative_model: MedVLM, datamodule: MedVLDataModule, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Golden values: an oracle with the image, a constant guess without it."""

    def fake_generate(self: Generator, queries, *, text_only: bool = False, **kwargs):  # noqa: ANN001, ANN202
        assert [q.id for q in queries] == ["p0", "p1", "m0", "o0"]
        return ["yes", "yes", "MRI", "an MRI"] if text_only else ["Yes.", "no", "CT", "a CT scan"]

    monkeypatch.setattr(Generator, "generate", fake_generate)
    metrics = demo_report(
        model=talkative_model, datamodule=datamodule, output_dir=tmp_path, started_at=time.time() - 120
    )
    assert metrics["heldout_accuracy"] == 1.0 and metrics["text_only_accuracy"] == pytest.approx(1 / 3)
    assert metrics["chance_accuracy"] == 0.5 and metrics["open_recall"] == 1.0
    assert metrics["text_only_open_recall"] == 0.0 and 2.0 <= metrics["minutes"] < 2.5
    per = json.loads((tmp_path / "demo_results.json").read_text())["per_question_type"]
    assert per["organ_presence"]["accuracy"] == 1.0 and per["organ_presence"]["text_only_accuracy"] == 0.5
    assert per["modality_open"]["text_only_exact_match"] == 0.0


def test_needs_a_heldout_file(talkative_model: MedVLM, tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="val_annotations"):
        demo_report(model=talkative_model, datamodule=None, output_dir=tmp_path)


def test_process_start_time_is_in_the_past() -> None:
    assert 0 < time.time() - process_start_time() < 24 * 3600


def test_a_later_report_in_the_same_process_counts_from_the_previous_one(
    talkative_model: MedVLM, datamodule: MedVLDataModule, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The jobs of a ``-m`` sweep share one process: job k's minutes must not include jobs 0..k-1."""
    from medmvl.demo import report as module

    monkeypatch.setattr(Generator, "generate", lambda self, queries, **kw: ["yes"] * len(queries))
    monkeypatch.setattr(module, "process_start_time", lambda: time.time() - 3600)  # job 0 began an hour ago
    monkeypatch.setitem(module._LAST_REPORT, "at", None)
    first = demo_report(model=talkative_model, datamodule=datamodule, output_dir=tmp_path / "0")
    second = demo_report(model=talkative_model, datamodule=datamodule, output_dir=tmp_path / "1")
    assert first["minutes"] >= 59.9 and second["minutes"] < 1.0
