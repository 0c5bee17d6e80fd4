"""PMC-VQA: the HF release CSVs, options A-D kept as choices and answer_choice, scored by letter."""

from __future__ import annotations

import pytest

from medmvl.evaluation.benchmarks import ConversionError, convert
from medmvl.evaluation.predictions import load_questions

from .helpers import gpt, human, split_records, write_csv
from .releases import PMC_VQA_ROW as ROW
from .releases import write_pmc_vqa


@pytest.fixture
def release(tmp_path):
    return write_pmc_vqa(tmp_path)


def test_choice_records(release, tmp_path):
    report = convert("pmc_vqa", release, tmp_path / "out", skip_bad=True)
    rec = split_records(report, "train")[0]
    assert rec["id"] == "pmc_vqa-train-0"
    assert rec["choices"] == [
        "Diffuse uptake pattern",
        "Focal uptake pattern",
        "No uptake pattern",
        "Cannot determine from the information given",
    ]
    assert rec["answer_choice"] == "B" and rec["answer_type"] == "choice"
    assert human(rec).splitlines() == [
        "<image>",
        "What is the uptake pattern in the breast?",
        "A. Diffuse uptake pattern",
        "B. Focal uptake pattern",
        "C. No uptake pattern",
        "D. Cannot determine from the information given",
        "Answer with the option's letter from the given choices directly.",
    ]
    assert gpt(rec) == rec["answer"] == "B. Focal uptake pattern"
    assert rec["image"] == ["PMC1064097_F1.jpg"]
    row = load_questions(report["files"]["train"])[0].row
    assert (row.kind, row.letter, row.choices) == ("choice", "b", tuple(rec["choices"]))
    assert [(s["row"], s["line"], s["field"]) for s in report["skipped"]] == [
        (1, 3, "Answer_label"),
        (2, 4, "Figure_path"),
    ]
    assert report["counts"]["test"] == {"total": 1, "answer_type": {"choice": 1}}


def test_bad_rows_and_header(release, tmp_path):
    with pytest.raises(ConversionError, match=r"test.csv: row 1 \(line 3\), field 'Answer_label'"):
        convert("pmc_vqa", release, tmp_path / "out")
    write_csv(release / "train.csv", ["Figure_path", "Question"], [ROW[:2]])
    with pytest.raises(ConversionError, match=r"header lacks column\(s\) \['Answer_label'"):
        convert("pmc_vqa", release, tmp_path / "out", skip_bad=True)
