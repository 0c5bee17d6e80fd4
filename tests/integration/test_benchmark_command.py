"""evaluate.py benchmark=<name> and protocol=<name>: convert, answer, score, tabulate.

Every benchmark runs end to end with its real converter on the tiny release of its converter test
(``tests/unit/evaluation/benchmarks/releases.py``); one run with a fake converter checks the wiring.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from hydra import compose, initialize_config_dir
from hydra.core.global_hydra import GlobalHydra
from omegaconf import DictConfig, OmegaConf

import medmvl.evaluation.benchmarks as benchmarks
from medmvl.cli.evaluate import evaluate
from tests.conftest import CONF_DIR
from tests.helpers.records import record, write_records
from tests.unit.evaluation.benchmarks.releases import WRITERS


def compose_evaluate(overrides: list[str]) -> DictConfig:
    GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        return compose(config_name="evaluate", overrides=overrides)


def test_protocol_prints_both_scores(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    rows = [
        record("1", "Is there a lesion?", gpt="There is a nodule.", answer="no", answer_type="CLOSED"),
        record("2", "Which lung?", gpt="the left lung", answer="left lung", answer_type="OPEN"),
    ]
    out = tmp_path / "eval"
    path = write_records(tmp_path / "vqa.json", rows)
    evaluate(compose_evaluate([f"predictions={path}", f"output_dir={out}", "protocol=llava_med"]))
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["overall"]["closed_accuracy"] == 0.0  # medmvl: "There is a nodule." does not say no
    proto = metrics["protocol"]
    assert proto["name"] == "llava_med" and proto["metrics"]["overall"]["closed_accuracy"] == 1.0
    assert proto["references"][0] == {
        "repo": "microsoft/LLaVA-Med",
        "file": "llava/eval/run_eval_batch.py",
        "commit": "b9a98a736d2ef05bcf5ff345be6403fb3a664eaf",
    }
    printed = capsys.readouterr().out
    assert "| overall | 2 | 0.0 | - | 100.0 | 100.0 | 100.0 | 100.0 |" in printed
    scores = [json.loads(line) for line in (out / "scores.jsonl").read_text().splitlines()]
    assert scores[0]["correct"] is False and scores[0]["llava_med"] == {"closed_accuracy": 1.0}


def test_medmvl_protocol_changes_nothing(tmp_path: Path) -> None:
    path = write_records(tmp_path / "v.json", [record("1", "Is it?", gpt="yes", answer="yes")])
    evaluate(compose_evaluate([f"predictions={path}", f"output_dir={tmp_path}"]))
    metrics = json.loads((tmp_path / "metrics.json").read_text())
    assert "protocol" not in metrics and "Scored by" not in (tmp_path / "metrics.md").read_text()


def test_benchmark_needs_model_and_root(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="needs model="):
        evaluate(compose_evaluate(["benchmark=vqa_rad", f"output_dir={tmp_path}"]))
    with pytest.raises(ValueError, match="needs data.root="):
        evaluate(compose_evaluate(["benchmark=vqa_rad", f"model={tmp_path}", f"output_dir={tmp_path}"]))


def _fake_convert(image_dir: Path, seen: dict[str, Any]):
    def convert(name: str, src: Path, out: Path, **options: Any) -> dict[str, Any]:
        seen.update(name=name, src=src, out=out)
        rows = [
            record("c1", "Is the liver visible?", "0.png", answer="yes", answer_type="closed", dataset=name),
            record("o1", "What is this?", "1.png", answer="a CT scan", answer_type="open", dataset=name),
        ]
        path = write_records(Path(out) / "test.json", [{k: v for k, v in r.items()} for r in rows])
        return {"files": {"test": str(path)}, "image_dir": str(image_dir)}

    return convert


@pytest.mark.slow
def test_benchmark_command_end_to_end(
    saved_model: Path, image_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    seen: dict[str, Any] = {}
    (tmp_path / "out" / "converted").mkdir(parents=True)
    monkeypatch.setattr(benchmarks, "convert", _fake_convert(image_dir, seen))
    out = tmp_path / "out"
    cfg = compose_evaluate(
        [
            "benchmark=vqa_rad",
            f"model={saved_model}",
            f"data.root={tmp_path}",
            f"output_dir={out}",
            "max_new_tokens=3",
        ]
    )
    result = evaluate(cfg)
    assert seen["name"] == "vqa_rad" and seen["out"] == out / "converted"
    assert json.loads((out / "predictions.json").read_text())[0]["id"] == "c1"
    table = (out / "metrics.md").read_text()
    assert "**VQA-RAD test" in table and "| model | scored by | Open | Closed |" in table
    assert "| this model | llava_med |" in table and "| this model | medmvl (strict) |" in table
    assert result["protocol"]["name"] == "llava_med" and result["benchmark"]["split"] == "test"


# per benchmark: the writer's arguments, the overrides its tiny release needs, and whether it is 3D.
# Bad rows (kept for the converter tests) are skipped; CT-RATE's one valid volume has findings
# "Not given." but an impression, and its volumes hold HU values (inference refuses the converter test's
# all-zero ones); M3D-Cap's test caption file is written (the converter test leaves it out).
RUNS: dict[str, tuple[dict[str, Any], list[str], bool]] = {
    "vqa_rad": ({}, [], False),
    "slake": ({}, [], False),
    "path_vqa": ({}, [], False),
    "pmc_vqa": ({}, ["+benchmark.options.skip_bad=true"], False),
    "omnimedvqa": ({}, [], False),
    "m3d_vqa": ({}, ["+benchmark.options.skip_bad=true"], True),
    "m3d_cap": ({"test_caption": True}, [], True),
    "ct_rate": (
        {"hu": True},
        ["+benchmark.options.skip_bad=true", "+benchmark.options.report=impressions"],
        True,
    ),
}


def _group(report: dict[str, Any], group: str | None) -> dict[str, Any]:
    if not group:
        return report["overall"]
    kind, _, name = group.partition("/")
    return report.get(kind, {}).get(name, {})


def _cells(table: str, start: str) -> list[str]:
    (line,) = [line for line in table.splitlines() if line.startswith(start)]
    return [c.strip() for c in line.removeprefix(start).strip(" |").split("|")]


@pytest.mark.slow
@pytest.mark.parametrize("name", list(RUNS))
def test_every_benchmark_end_to_end(name: str, request: pytest.FixtureRequest, tmp_path: Path) -> None:
    kwargs, overrides, is_3d = RUNS[name]
    saved = request.getfixturevalue("saved_model_3d" if is_3d else "saved_model")
    root = WRITERS[name](tmp_path / "download", **kwargs)
    out = tmp_path / "out"
    cfg = compose_evaluate(
        [
            f"benchmark={name}",
            f"model={saved}",
            f"data.root={root}",
            f"output_dir={out}",
            "max_new_tokens=3",
            *overrides,
        ]
    )
    result = evaluate(cfg)
    spec = OmegaConf.load(CONF_DIR / "benchmark" / f"{name}.yaml")
    protocol = spec.defaults[0]["override /protocol@_global_.protocol"]

    split = out / "converted" / f"{spec.split}.json"
    converted = json.loads(split.read_text(encoding="utf-8"))
    assert converted
    predictions = json.loads((out / "predictions.json").read_text(encoding="utf-8"))
    assert [p["id"] for p in predictions] == [r["id"] for r in converted]
    assert all(isinstance(p["prediction"], str) for p in predictions)

    table = (out / "metrics.md").read_text(encoding="utf-8")
    titles = [c.title for c in spec.columns]
    assert f"**{spec.title}**" in table
    assert "| model | scored by | " + " | ".join(titles) + " |" in table
    ours, strict = (
        _cells(table, f"| this model | {protocol} |"),
        _cells(table, "| this model | medmvl (strict) |"),
    )
    assert len(ours) == len(strict) == len(titles)

    metrics = json.loads((out / "metrics.json").read_text(encoding="utf-8"))
    assert metrics["protocol"]["name"] == result["protocol"]["name"] == protocol
    references = OmegaConf.to_container(spec.references)
    assert metrics["benchmark"] == {"name": name, "split": spec.split, "references": references}
    assert metrics["overall"]["n"] == len(converted)
    unavailable = metrics["protocol"]["unavailable"]
    report = metrics["protocol"]["metrics"]
    for column, cell in zip(spec.columns, ours):  # a number, "-" (undefined) or n/a with its reason
        value = _group(report, column.get("group")).get(column.protocol)
        if column.protocol in unavailable:
            assert cell == "n/a" and unavailable[column.protocol]
            assert f"- {column.protocol}: unavailable — {unavailable[column.protocol]}" in table
        else:
            assert cell == ("-" if value is None else f"{100 * value:.1f}")
    for column, cell in zip(spec.columns, strict):  # medmvl's strict report, "-" where it has no column
        value = _group(metrics, column.get("group")).get(column.medmvl) if column.medmvl else None
        assert cell == ("-" if value is None else f"{100 * value:.1f}")

    if name == "ct_rate":
        labels = root / spec.reference_labels
        assert labels.is_file() and cfg.protocol.reference_labels == str(labels)
        assert cfg.protocol.predicted_labels is None  # no predicted labels: said so, not scored 0
        for key in ("label_precision", "label_recall", "label_f1", "crg"):
            assert unavailable[key].startswith("labeller not available")
            assert report["overall"].get(key) is None
