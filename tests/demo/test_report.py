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
from tests.helpers.records import record, write_records

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


def _golden_file(tmp_path: Path) -> Path:
    """Closed yes/no (with and without choices), closed with four choices, closed without options, open
    (reference in ``answer`` and in the final gpt turn), a mixed question type and one without a type."""
    return write_records(
        tmp_path / "golden.json",
        [
            record("y1", "Is the liver visible?", "0.png", answer="yes", question_type="presence",
                   answer_type="closed", choices=["yes", "no"]),
            record("y2", "Is the heart visible?", "1.png", answer="no", question_type="presence"),
            record("c1", "Which organ is this?", "2.png", answer="liver", question_type="organ",
                   answer_type="closed", choices=["liver", "heart", "spleen", "lung"]),
            record("c2", "Which region?", "0.png", answer="abdomen", question_type="region", answer_type="closed"),
            record("o1", "Which region exactly?", "1.png", answer="upper abdomen", question_type="region",
                   answer_type="open"),
            record("o2", "What type of image?", "2.png", "colour fundus photography", question_type="modality"),
            record("t", "Is it a CT?", answer="yes"),
        ],
    )  # fmt: skip


WITH_IMAGE = ["Yes, it is.", "yes", "The liver.", "the abdomen", "abdomen", "fundus photography", "no"]
TEXT_ONLY = ["yes", "no", "heart", "abdomen", "upper abdomen", "photography", "yes"]


def test_results_equal_the_former_vqa_score(
    talkative_model: MedVLM, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The numbers ``evaluation.vqa.score`` gave for these answers, worked out by hand: the shared stack
    (``load_questions``, ``question_rows``, ``build_report``) must write the same files."""
    path = _golden_file(tmp_path)

    def fake_generate(self: Generator, queries, *, text_only: bool = False, **kwargs):  # noqa: ANN001, ANN202
        return TEXT_ONLY if text_only else WITH_IMAGE

    monkeypatch.setattr(Generator, "generate", fake_generate)
    demo_report(model=talkative_model, datamodule=None, annotations=str(path), output_dir=tmp_path / "run")
    results = json.loads((tmp_path / "run" / "demo_results.json").read_text())
    # with the image: y1 names yes (right), y2 says yes to "no", c1 liver, c2 "abdomen" equal, t says no;
    # o1 "abdomen" of "upper abdomen" (recall 1/2), o2 "fundus photography" of 3 words (recall 2/3).
    # text only: y1, y2, c2, t right, c1 names heart; o1 exact, o2 "photography" (recall 1/3).
    # chance: y1 and y2 yes/no (1/2), c1 four choices (1/4), t yes/no (1/2); c2 has no options.
    expected = {
        "annotations": str(path),
        "heldout_accuracy": 3 / 5,
        "text_only_accuracy": 4 / 5,
        "chance_accuracy": (0.5 + 0.5 + 0.25 + 0.5) / 4,
        "n_closed": 5,
        "n_open": 2,
        "open_exact_match": 0.0,
        "open_recall": (1 / 2 + 2 / 3) / 2,
        "text_only_open_exact_match": 1 / 2,
        "text_only_open_recall": (1 + 1 / 3) / 2,
        "per_question_type": {
            "all": {"answer_type": "closed", "n": 1, "accuracy": 0.0, "text_only_accuracy": 1.0},
            "modality": {"answer_type": "open", "n": 1, "exact_match": 0.0, "recall": 2 / 3,
                         "text_only_exact_match": 0.0, "text_only_recall": 1 / 3},
            "organ": {"answer_type": "closed", "n": 1, "accuracy": 1.0, "text_only_accuracy": 0.0},
            "presence": {"answer_type": "closed", "n": 2, "accuracy": 0.5, "text_only_accuracy": 1.0},
            "region": {"answer_type": "mixed", "n": 2, "accuracy": 1.0, "exact_match": 0.0, "recall": 0.5,
                       "text_only_accuracy": 1.0, "text_only_exact_match": 1.0, "text_only_recall": 1.0},
        },
    }  # fmt: skip
    minutes, predictions = results.pop("minutes"), results.pop("predictions")
    assert results == expected and list(results) == list(expected)  # same keys, values and order
    assert list(results["per_question_type"]["region"]) == list(expected["per_question_type"]["region"])
    assert minutes >= 0 and predictions == str(tmp_path / "run" / "demo_predictions.json")
    rows = json.loads(Path(predictions).read_text())
    assert rows[0] == {
        "id": "y1",
        "question_type": "presence",
        "answer_type": "closed",
        "question": "<image>\nIs the liver visible?",
        "answer": "yes",
        "choices": ["yes", "no"],
        "prediction": "Yes, it is.",
        "text_only_prediction": "yes",
        "correct": True,
        "text_only_correct": True,
    }
    assert rows[5] == {
        "id": "o2",
        "question_type": "modality",
        "answer_type": "open",
        "question": "<image>\nWhat type of image?",
        "answer": "colour fundus photography",
        "choices": None,
        "prediction": "fundus photography",
        "text_only_prediction": "photography",
        "exact_match": False,  # a JSON boolean, as before (evaluate.py's scores.jsonl writes 0.0)
        "recall": 2 / 3,
        "text_only_exact_match": False,
        "text_only_recall": 1 / 3,
    }
    assert [r.get("correct") for r in rows] == [True, False, True, True, None, None, False]
    assert [r.get("text_only_exact_match") for r in rows][4:6] == [True, False]
    assert [r["question_type"] for r in rows] == ["presence", "presence", "organ", "region", "region",
                                                  "modality", "all"]  # fmt: skip
    assert [r["answer_type"] for r in rows] == ["closed"] * 4 + ["open"] * 2 + ["closed"]


def test_refuses_multiple_choice_questions_before_generating(
    talkative_model: MedVLM, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = write_records(tmp_path / "mc.json", [record("mc", "Which? (a) .. (b) ..", answer="(b) Mild")])
    monkeypatch.setattr(Generator, "generate", lambda *a, **k: pytest.fail("generated"))
    with pytest.raises(ValueError, match=r"mc.json: sample 0 \(id 'mc'\): a multiple-choice question"):
        demo_report(model=talkative_model, datamodule=None, annotations=str(path), output_dir=tmp_path)


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
