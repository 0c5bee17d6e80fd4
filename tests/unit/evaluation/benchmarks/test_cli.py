"""``medmvl-data convert``: files and counts printed, bad rows and options reported, exit codes."""

from __future__ import annotations

import json

from medmvl.cli.data import main

from .helpers import png, write_json


def _release(src):
    png(src / "VQA_RAD Image Folder/synpic1.jpg")
    entry = {"qid": 1, "image_name": "synpic1.jpg", "question": "Is it normal?", "answer": "yes",
             "answer_type": "CLOSED", "question_type": "ABN", "phrase_type": "test_freeform"}  # fmt: skip
    write_json(src / "VQA_RAD Dataset Public.json", [entry, {**entry, "qid": 2, "answer": None}])


def test_convert_command(tmp_path, capsys):
    _release(tmp_path / "src")
    out = tmp_path / "out"
    assert main(["convert", "vqa_rad", str(tmp_path / "src"), str(out)]) == 1
    assert "row 1, field 'answer': missing or empty" in capsys.readouterr().err
    assert main(["convert", "vqa_rad", str(tmp_path / "src"), str(out), "--skip-bad", "--link"]) == 0
    printed = capsys.readouterr().out.splitlines()
    assert printed[0] == str(out / "convert_report.json")
    assert printed[1] == "train: 0 samples -> (no samples, not written)"
    assert printed[2] == f"test: 1 samples (closed: 1) -> {out / 'test.json'}"
    assert printed[3] == "skipped 1 bad row(s), listed in convert_report.json"
    assert json.loads((out / "convert_report.json").read_text())["options"] == {
        "link": True,
        "skip_bad": True,
    }
    assert main(["convert", "vqa_rad", str(tmp_path / "src"), str(out), "--lang", "en"]) == 1
    assert "unknown option(s) ['lang']" in capsys.readouterr().err
