"""The 3D demo's report path: reports from the mask labels, the labeller that reads them back, the
report splits of a build, and the held-out reports scored by protocol ct_rate through demo_report."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from hydra.utils import instantiate

from medmvl.data.schema import load_annotations
from medmvl.demo import build_3d as demo3d
from medmvl.demo.report import demo_report, heldout_questions, protocol_results
from medmvl.demo.reports_3d import organ_labels, report_3d, report_labels
from medmvl.evaluation.predictions import PredictionRow
from medmvl.evaluation.protocols.ct_rate import CtRateProtocol
from medmvl.models.vlm import MedVLM
from tests.conftest import compose_train

LAB = {
    "present": ["liver", "kidneys", "lungs"],
    "absent": ["heart", "spleen"],
    "visible": ["liver", "kidneys", "lungs", "stomach"],
    "sides": {"liver": "right"},
    "counts": {"liver": 900, "kidneys": 300, "lungs": 700, "stomach": 950, "heart": 0, "spleen": 0},
}
PARAMS = {"seed": 0, "n_train": 12, "n_val": 6, "depth": 6, "volume_size": [6, 32, 32]}


def test_report_names_settled_organs_only() -> None:
    # the stomach is visible (largest) but neither present nor absent: no sentence of its own
    assert report_3d(LAB) == (
        "The liver is seen on the right. No heart is seen. No spleen is seen. The kidneys are seen. "
        "The lungs are seen. The largest organ is the stomach."
    )


def test_labeller_reads_the_labels_back() -> None:
    assert organ_labels([report_3d(LAB)]) == [report_labels(LAB)]
    assert report_labels(LAB) == {
        "liver": 1, "heart": 0, "spleen": 0, "stomach": 0, "kidneys": 1, "lungs": 1
    }  # fmt: skip
    # "No heart is seen" is not a finding; case does not matter; an empty report finds nothing
    assert organ_labels(["No heart is seen. THE SPLEEN IS SEEN.", ""]) == [
        {"liver": 0, "heart": 0, "spleen": 1, "stomach": 0, "kidneys": 0, "lungs": 0},
        dict.fromkeys(report_labels(LAB), 0),
    ]


def test_experiment_composes_with_the_ct_rate_protocol(tmp_path: Path) -> None:
    cfg = compose_train(["experiment=demo_3d_report"], output_dir=tmp_path)
    base = compose_train(["experiment=demo_3d"], output_dir=tmp_path)
    assert cfg.data.task == "report" and cfg.encoder == base.encoder and cfg.llm == base.llm
    # as train.py builds it: the protocol (and its labeller) instantiated inside the post_train partial
    protocol = instantiate(cfg.post_train).keywords["protocol"]
    assert isinstance(protocol, CtRateProtocol)
    assert protocol.labeller([report_3d(LAB)]) == [report_labels(LAB)]
    assert set(protocol.unavailable()) <= {"meteor"}  # labels come from the labeller
    scored, _ = protocol.evaluate([_row(report_3d(LAB))])
    assert scored["overall"]["label_f1"] == pytest.approx(3 / 6) and scored["overall"]["crg"] == 1.0


def _row(report: str) -> PredictionRow:
    return PredictionRow("r", report, report, "open", "report_3d", "demo")


def test_unknown_task_refused(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="task must be one of"):
        demo3d.Demo3dDataModule(tmp_path, task="caption")


@pytest.fixture(scope="module")
def build(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return demo3d.build_demo_3d(tmp_path_factory.mktemp("demo3d_report") / "build", **PARAMS)


@pytest.mark.slow  # a small build from the real CT
def test_report_splits_describe_each_volume(build: Path) -> None:
    for split in demo3d.SPLITS:
        vqa = json.loads((build / f"{split}.json").read_text())
        reports = json.loads((build / f"{split}_reports.json").read_text())
        load_annotations(build / f"{split}_reports.json")
        assert [r["image3d"] for r in reports] == [s["image3d"] for s in vqa]
        for r, s in zip(reports, vqa):
            z0, z1 = s["z_range"]
            crop = s["crop"]
            lab = demo3d.labels(
                demo3d.Render(z0, z1 - z0 + 1, crop["x0"], crop["y0"], crop["side"], s["flipped"])
            )
            assert r["answer"] == r["conversations"][1]["value"] == report_3d(lab)
            assert r["answer_type"] == "open" and r["question_type"] == "report_3d"
            assert organ_labels([r["answer"]]) == [r["labels"]] == [report_labels(lab)]


@pytest.mark.slow
def test_perfect_and_empty_reports_by_the_protocol(build: Path) -> None:
    questions = heldout_questions(build / "val_reports.json")
    truth = [q.row.reference for q in questions]
    protocol = CtRateProtocol(labeller={"_target_": "medmvl.demo.reports_3d.organ_labels", "_partial_": True})
    out = protocol_results(protocol, questions, truth, [""] * len(truth))
    perfect, empty = out["with_image"], out["text_only"]
    assert perfect["bleu1"] == pytest.approx(1.0) and perfect["rouge_l"] == pytest.approx(1.0)
    # macro F1 counts an organ no held-out volume shows as 0 (undefined), as labels.label_metrics says
    shown = {o for q in questions for o, v in organ_labels([q.row.reference])[0].items() if v}
    assert perfect["label_f1"] == pytest.approx(len(shown) / 6) and perfect["crg"] == 1.0
    assert empty["label_recall"] == 0.0 and empty["crg"] == pytest.approx(1 / 3)  # all-negative: 1/3


@pytest.mark.slow
def test_demo_report_scores_generated_reports(
    build: Path,
    tmp_path: Path,
    talkative_model_3d: MedVLM,
) -> None:
    """Every held-out volume gets a generated report, with and without the volume, scored by ct_rate."""
    model = talkative_model_3d
    dm = demo3d.Demo3dDataModule(
        build,
        **PARAMS,
        task="report",
        max_length=256,
        volume={"intensity": "uint8", "crop_foreground": False},
        **model.data_parts(),
    )
    protocol = CtRateProtocol(labeller={"_target_": "medmvl.demo.reports_3d.organ_labels", "_partial_": True})
    out = demo_report(
        model=model, datamodule=dm, output_dir=tmp_path, batch_size=6, max_new_tokens=12, protocol=protocol
    )
    results = json.loads(Path(out["demo_results"]).read_text())
    assert results["n_open"] == PARAMS["n_val"] and results["n_closed"] == 0
    scored = results["protocol"]
    assert scored["name"] == "ct_rate" and set(scored["unavailable"]) <= {"meteor"}
    for side in ("with_image", "text_only"):
        entry = scored[side]
        assert entry["n_open"] == PARAMS["n_val"]
        for key in ("bleu1", "bleu4", "rouge_l", "label_precision", "label_recall", "label_f1", "crg"):
            assert isinstance(entry[key], float) and 0.0 <= entry[key] <= 1.0, (side, key, entry[key])
    rows = json.loads((tmp_path / "demo_predictions.json").read_text())
    assert [r["id"] for r in rows] == [f"demo3d-report-val-{i:05d}" for i in range(PARAMS["n_val"])]
