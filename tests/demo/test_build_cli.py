"""``medmvl-data build-demo``: builds into ``--out``, prints the folder first and the counts after."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from medmvl.cli.data import build_parser, main


def test_build_demo_prints_folder_and_counts(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "demo"
    argv = ["build-demo", "--out", str(out), "--n-train", "20", "--n-val", "10", "--image-size", "16"]
    assert main([*argv, "--seed", "3"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0] == str(out)
    assert "train: 20 samples" in lines and "val: 10 samples" in lines
    meta = json.loads((out / "meta.json").read_text())
    assert meta["params"] == {
        "seed": 3,
        "n_train": 20,
        "n_val": 10,
        "image_size": 16,
        "turns": 4,
        "n_reading": 0,
    }
    assert any(line.strip().startswith("organ_presence") for line in lines)


def test_subcommand_is_required() -> None:
    with pytest.raises(SystemExit):
        build_parser().parse_args([])
