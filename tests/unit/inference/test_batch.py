"""File inference: output format, multi-turn with the model's own answers, resuming after a kill or a crash."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from medmvl.data.schema import Sample, Turn
from medmvl.inference import Generator
from medmvl.inference.batch import answer_file, dialogue_prefix, partial_path
from medmvl.models.vlm import MedVLM
from tests.helpers.records import record, write_records

GEN = {"max_new_tokens": 4}


@pytest.fixture(scope="module")
def generator(talkative_model: MedVLM) -> Generator:
    return Generator(talkative_model)


def _dialog(sid: str, image_dir: Path) -> dict:
    """Two human turns with a reference gpt turn between them; the second turn adds a second image."""
    return {
        "id": sid,
        "image": [str(image_dir / "0.png"), str(image_dir / "1.png")],
        "conversations": [
            {"from": "human", "value": "<image>\nWhat is this?"},
            {"from": "gpt", "value": "a CT"},
            {"from": "human", "value": "And this one? <image>"},
        ],
        "answer": "an MRI",
        "question_type": "modality",
    }


def test_multi_turn_uses_the_models_own_answers(
    generator: Generator, image_dir: Path, tmp_path: Path
) -> None:
    records = [_dialog("d0", image_dir), record("s", "Hello?")]
    ann = write_records(tmp_path / "dialog.json", records)
    out = answer_file(generator, ann, tmp_path / "pred.json", multi_turn=True, batch_size=2, **GEN)
    rows = json.loads(out.read_text())
    d0, single = rows
    h1, p1, h2, p2 = d0["conversations"]
    assert (h1, h2) == (records[0]["conversations"][0], records[0]["conversations"][2])
    assert p1["from"] == p2["from"] == "gpt" and p1["value"] != "a CT"
    assert d0["reference_turns"] == ["a CT", None] and d0["answer"] == "an MRI"
    assert d0["question_type"] == "modality" and d0["image"] == records[0]["image"]
    # turn 1 sees one image; turn 2 sees both and the model's own first answer (not the reference)
    sample = Sample("d0", tuple(Turn(t["from"], t["value"]) for t in records[0]["conversations"]),
                    tuple(records[0]["image"]))  # fmt: skip
    first = dialogue_prefix(sample, [])
    assert first.images == (str(image_dir / "0.png"),) and len(first.turns) == 1
    second = dialogue_prefix(sample, [p1["value"]])
    assert [t.text for t in second.turns] == ["<image>\nWhat is this?", p1["value"], "And this one? <image>"]
    assert second.images == sample.images
    assert generator.generate([first], **GEN) == [p1["value"]]
    assert generator.generate([second], **GEN) == [p2["value"]]
    assert single["conversations"][1]["value"] == generator.generate([(None, "Hello?")], **GEN)[0]
    assert single["reference_turns"] == [None]


def test_single_turn_keeps_earlier_turns_as_given(
    generator: Generator, image_dir: Path, tmp_path: Path
) -> None:
    ann = write_records(tmp_path / "dialog.json", [_dialog("d0", image_dir)])
    rows = json.loads(answer_file(generator, ann, tmp_path / "pred.json", **GEN).read_text())
    turns = rows[0]["conversations"]
    assert [t["value"] for t in turns[:3]] == ["<image>\nWhat is this?", "a CT", "And this one? <image>"]
    assert turns[3]["from"] == "gpt" and "reference_turns" not in rows[0] and rows[0]["answer"] == "an MRI"


def test_resume_after_a_kill_mid_write(
    generator: Generator, image_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    records = [record(f"q{i}", f"Question {i}?", f"{i % 3}.png", answer=f"a{i}") for i in range(5)]
    ann = write_records(tmp_path / "test.json", records)
    output = tmp_path / "out" / "pred.json"
    output.parent.mkdir()
    # a killed run left two finished records in the side file and a cut third line; no JSON yet
    done = [{**records[0], "conversations": [*records[0]["conversations"], {"from": "gpt", "value": "x0"}]},
            {**records[3], "conversations": [*records[3]["conversations"], {"from": "gpt", "value": "x3"}]}]  # fmt: skip
    partial_path(output).write_text("".join(json.dumps(r) + "\n" for r in done) + '{"id": "q1", "conv')
    seen: list[str] = []
    original = Generator.generate

    def spy(self: Generator, queries, **kwargs):  # noqa: ANN001, ANN202
        queries = list(queries)
        seen.extend(q.id for q in queries)
        return original(self, queries, **kwargs)

    monkeypatch.setattr(Generator, "generate", spy)
    answer_file(generator, ann, output, image_dir=image_dir, batch_size=2, **GEN)
    assert seen == ["q1", "q2", "q4"]
    rows = json.loads(output.read_text())
    assert [r["id"] for r in rows] == ["q0", "q1", "q2", "q3", "q4"]
    assert rows[0]["conversations"][-1]["value"] == "x0" and rows[3]["conversations"][-1]["value"] == "x3"
    assert all(r["answer"] == f"a{i}" for i, r in enumerate(rows))
    assert not partial_path(output).exists()


def test_a_crash_keeps_finished_batches(
    generator: Generator, image_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    records = [record(f"q{i}", f"Question {i}?", f"{i % 3}.png") for i in range(4)]
    ann = write_records(tmp_path / "test.json", records)
    output = tmp_path / "pred.json"
    calls = 0
    original = Generator.generate

    def crash_on_second_batch(self: Generator, queries, **kwargs):  # noqa: ANN001, ANN202
        nonlocal calls
        calls += 1
        if calls == 2:
            raise KeyboardInterrupt
        return original(self, queries, **kwargs)

    monkeypatch.setattr(Generator, "generate", crash_on_second_batch)
    with pytest.raises(KeyboardInterrupt):
        answer_file(generator, ann, output, image_dir=image_dir, batch_size=2, **GEN)
    assert [r["id"] for r in json.loads(output.read_text())] == ["q0", "q1"]  # valid JSON of what finished
    monkeypatch.setattr(Generator, "generate", original)
    progress: list[tuple[int, int]] = []
    answer_file(generator, ann, output, image_dir=image_dir, batch_size=2, on_progress=lambda *a: progress.append(a), **GEN)  # fmt: skip
    assert [r["id"] for r in json.loads(output.read_text())] == ["q0", "q1", "q2", "q3"]
    assert progress == [(0, 2), (2, 2)]
