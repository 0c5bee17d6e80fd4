"""``medmvl-data check`` reports every problem of a file at once and exits non-zero on errors."""

from __future__ import annotations

import json

from medmvl.cli.data import main


def test_check_reports_all_problems(tmp_path, capsys) -> None:
    records = [
        {
            "id": "a",
            "image": ["x.png"],
            "conversations": [{"from": "human", "value": "<image>\\nQ?"}, {"from": "gpt", "value": "A."}],
            "question_type": "modality",
        },
        {"id": "b", "conversations": [{"from": "gpt", "value": "starts with gpt"}]},
        {
            "id": "c",
            "image": ["1.png", "2.png"],
            "conversations": [{"from": "human", "value": "<image> one"}, {"from": "gpt", "value": "A."}],
            "oops": 1,
        },
    ]
    path = tmp_path / "ann.json"
    path.write_text(json.dumps(records))
    assert main(["check", str(path)]) == 1
    out = capsys.readouterr().out
    assert "id 'b'" in out or "'b'" in out
    assert "'c'" in out and "oops" in out
    assert "question_type" not in out  # a known metadata key is no warning
    errors = [line for line in out.splitlines() if line.startswith("error:")]
    assert {("'b'" in e, "'c'" in e) for e in errors} == {(True, False), (False, True)}
    assert f"{len(errors)} error(s), 1 warning(s)" in out


def test_check_clean_file_exits_zero(tmp_path, capsys) -> None:
    path = tmp_path / "ok.json"
    path.write_text(
        json.dumps(
            [
                {
                    "id": "0",
                    "conversations": [{"from": "human", "value": "Hi"}, {"from": "gpt", "value": "Hello."}],
                }
            ]
        )
    )
    assert main(["check", str(path)]) == 0
    assert "0 error(s), 0 warning(s)" in capsys.readouterr().out
