"""Every bad input of the corpus gives a clear error (file, sample index/id, reason) by default, a counted
skip under ``on_error=skip``, and a line in ``medmvl-data check --images``."""

from __future__ import annotations

import json
import logging
import re
from pathlib import Path

import pytest

from medmvl.cli.data import main as data_cli
from medmvl.data.collate import Collator
from medmvl.data.conversation import ConversationEncoder
from medmvl.data.dataset import AnnotationDataset
from medmvl.data.images import ImageReadError, ImageTransform
from medmvl.data.schema import AnnotationError
from medmvl.data.volumes import VolumeTransform
from tests.helpers.corpus import CASES, GOOD_PNG, Case, good, png, write_case
from tests.helpers.offline import family_tokenizer

IMAGES = ImageTransform(8, [0.0] * 3, [1.0] * 3)
VOLUMES = VolumeTransform((4, 8, 8), [0.0], [1.0], 1)
IDS = [c.name for c in CASES]


@pytest.fixture(scope="module")
def conversation() -> ConversationEncoder:
    tok = family_tokenizer("qwen2.5")
    return ConversationEncoder(tok, image_token_counts={"<image>": 4, "<image3d>": 4}, max_length=128)


def dataset(path: Path, conversation: ConversationEncoder, on_error: str = "raise") -> AnnotationDataset:
    return AnnotationDataset(
        path, conversation=conversation, transform=IMAGES, volume_transform=VOLUMES, on_error=on_error
    )


def assert_names_the_sample(message: str, path: Path, case: Case) -> None:
    assert str(path) in message, message
    if case.phase in ("load", "read"):
        assert "sample 1" in message, message
        if case.sid is not None:
            assert f"(id {case.sid!r})" in message, message
    assert re.search(case.match, message), f"{case.match!r} not in {message!r}"


def test_corpus_is_large_and_covers_every_phase() -> None:
    assert len(CASES) >= 20 and len(set(IDS)) == len(IDS)
    assert {c.phase for c in CASES} == {"file", "load", "read", "warn"}
    assert sum(c.volumes for c in CASES) >= 3


@pytest.mark.parametrize("case", CASES, ids=IDS)
def test_default_is_a_clear_error(case: Case, tmp_path: Path, conversation, caplog) -> None:
    path = write_case(case, tmp_path)
    if case.phase in ("file", "load"):
        with pytest.raises(AnnotationError) as err:
            dataset(path, conversation)
        assert_names_the_sample(str(err.value), path, case)
        return
    with caplog.at_level(logging.WARNING, logger="medmvl.data"):
        data = dataset(path, conversation)
    assert len(data) == 2 and data[0]["id"] == "good"
    if case.phase == "warn":
        assert re.search(case.match, caplog.text) and str(path) in caplog.text
        assert data[1]["id"] == case.sid
        return
    with pytest.raises(ImageReadError) as err:
        data[1]
    assert_names_the_sample(str(err.value), path, case)


@pytest.mark.parametrize("case", [c for c in CASES if c.phase != "warn"], ids=lambda c: c.name)
def test_skip_is_counted_and_reported(case: Case, tmp_path: Path, conversation, caplog) -> None:
    path = write_case(case, tmp_path)
    if case.phase == "file":  # nothing in the file can be trusted: still an error
        with pytest.raises(AnnotationError) as err:
            dataset(path, conversation, on_error="skip")
        assert str(path) in str(err.value)
        return
    with caplog.at_level(logging.WARNING, logger="medmvl.data"):
        data = dataset(path, conversation, on_error="skip")
    if case.phase == "load":
        assert len(data) == 1 and data[0]["id"] == "good"
        assert {p.index for p in data.skipped} == {1} and case.code in {p.code for p in data.skipped}
        assert f"{path}: skipped 1 of 2 samples; " in caplog.text and f"{case.code}: " in caplog.text
        return
    items = [data[0], data[1]]
    assert items[1] is None and data.read_failures == 1
    assert re.search(case.match, caplog.text) and "sample 1" in caplog.text
    batch = Collator(0)(items)
    assert batch["ids"] == ["good"] and batch["skipped"] == 1


@pytest.mark.parametrize("case", [c for c in CASES if c.in_check], ids=lambda c: c.name)
def test_check_cli_reports_it(case: Case, tmp_path: Path, capsys) -> None:
    path = write_case(case, tmp_path)
    status = data_cli(["check", str(path), "--images"])
    out = capsys.readouterr().out
    assert status == (0 if case.phase == "warn" else 1), out
    line = next((line for line in out.splitlines() if re.search(case.match, line)), None)
    assert line is not None, out
    assert str(path) in line
    if case.phase in ("load", "read"):
        assert "sample 1" in line and (case.sid is None or repr(case.sid) in line)


def test_check_without_images_only_checks_paths(tmp_path: Path, capsys) -> None:
    case = next(c for c in CASES if c.name == "corrupt_png")
    path = write_case(case, tmp_path)
    assert data_cli(["check", str(path)]) == 0  # the path is fine; decoding needs --images
    assert data_cli(["check", str(path), "--images"]) == 1
    out = capsys.readouterr().out
    assert "error: " in out and "1 error(s), 0 warning(s)" in out


def test_check_reports_every_problem_of_a_file_at_once(tmp_path: Path, capsys) -> None:
    """All sample-level cases in one file: one run of check lists each of them."""
    folder = tmp_path / "all"
    records, expected = [], []
    for case in CASES:
        if case.phase not in ("load", "read") or not case.in_check or case.name == "unpaired_surrogate":
            continue
        sub = tmp_path / case.name
        bad = json.loads(write_case(case, sub).read_text())[1]
        for key in ("image", "image3d"):
            if isinstance(bad, dict) and isinstance(bad.get(key), list):
                bad[key] = [str(sub / p) if not p.startswith("..") else p for p in bad[key]]
        if isinstance(bad, dict) and bad.get("id") == "bad":
            bad["id"] = case.name
        records.append(bad)
        expected.append(case)
    folder.mkdir()
    png(folder / GOOD_PNG)
    path = folder / "ann.json"
    path.write_text(json.dumps([good(), *records]))
    assert data_cli(["check", str(path), "--images"]) == 1
    out = capsys.readouterr().out
    errors = [line for line in out.splitlines() if line.startswith("error:")]
    for case in expected:
        assert any(re.search(case.match, line) for line in errors), (case.name, out)
    assert len(errors) >= len(expected) >= 18
