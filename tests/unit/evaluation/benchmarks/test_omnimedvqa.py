"""OmniMedVQA: QA_information/<access>/<dataset>.json + Images/, the answer letter from gt_answer."""

from __future__ import annotations

import pytest

from medmvl.evaluation.benchmarks import ConversionError, convert

from .helpers import human, split_records, write_json
from .releases import omnimedvqa_qa as _qa
from .releases import write_omnimedvqa


@pytest.fixture
def release(tmp_path):
    return write_omnimedvqa(tmp_path)


def test_records(release, tmp_path):
    report = convert("omnimedvqa", release, tmp_path / "out")
    first, second = split_records(report, "open_access")
    assert first["id"] == "omnimedvqa-ACRIMA_0001"
    assert (first["answer_choice"], first["answer"], first["choices"]) == (
        "B",
        "B. Glaucoma",
        ["Normal", "Glaucoma", "Cataract", "Myopia"],
    )
    assert human(first).startswith("<image>\nWhat is the diagnosis?\nA. Normal\nB. Glaucoma")
    assert (first["dataset"], first["question_type"], first["modality"], first["split"]) == (
        "ACRIMA",
        "Disease Diagnosis",
        "Fundus Photography",
        "open_access",
    )
    assert second["choices"] == ["Yes", "No"] and second["answer_choice"] == "B"
    assert first["image"] == ["Images/ACRIMA/Im001.png"]
    assert (tmp_path / "out/images/Images/ACRIMA/Im001.png").is_file()


def test_answer_not_an_option(release, tmp_path):
    write_json(
        release / "QA_information/Open-access/Bad.json",
        [_qa("B1", "Images/ACRIMA/Im001.png", "Edema", ["Yes", "No"], "Bad")],
    )
    with pytest.raises(
        ConversionError, match=r"Bad.json: row 0, field 'gt_answer': 'Edema' is none of the options"
    ):
        convert("omnimedvqa", release, tmp_path / "out")
