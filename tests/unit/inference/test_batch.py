"""File inference: output format, multi-turn with the model's own answers, resuming after a kill or a crash,
and outputs that record the model and settings that wrote them (a resume with others is refused)."""

from __future__ import annotations

import hashlib
import json
import shutil
from pathlib import Path

import pytest

from medmvl.data.schema import AnnotationError, Sample, Turn
from medmvl.evaluation.predictions import load_predictions
from medmvl.inference import Generator
from medmvl.inference.batch import (
    META_KEY,
    answer_file,
    dialogue_prefix,
    meta_path,
    output_meta,
    partial_path,
)
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
    assert d0["prediction"] == p2["value"]  # the answer to the last turn, as a single-turn record has it
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
    # a killed run left its settings line, two finished records and a cut fourth line; no JSON yet
    done = [{**records[0], "conversations": [*records[0]["conversations"], {"from": "gpt", "value": "x0"}]},
            {**records[3], "conversations": [*records[3]["conversations"], {"from": "gpt", "value": "x3"}]}]  # fmt: skip
    meta = json.dumps({META_KEY: output_meta(generator, **GEN)})
    lines = [meta, *(json.dumps(r) for r in done)]
    partial_path(output).write_text("".join(line + "\n" for line in lines) + '{"id": "q1", "conv')
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


def _weights(folder: Path, content: bytes) -> Path:
    """A stand-in model folder: only its weights file matters to the output's record of the model."""
    folder.mkdir(parents=True)
    (folder / "model.safetensors").write_bytes(content)
    return folder


def _spy(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """The ids each later ``Generator.generate`` call answers."""
    seen: list[str] = []
    original = Generator.generate

    def spy(self: Generator, queries, **kwargs):  # noqa: ANN001, ANN202
        queries = list(queries)
        seen.extend(q.id for q in queries)
        return original(self, queries, **kwargs)

    monkeypatch.setattr(Generator, "generate", spy)
    return seen


def test_the_output_records_model_prompt_and_generation_settings(
    generator: Generator, image_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    model = _weights(tmp_path / "model", b"weights of model A")
    records = [
        record("a", "Is it a CT?", "0.png", gpt="yes"),
        record("b", "What is it?", "1.png", answer="CT"),
    ]
    ann = write_records(tmp_path / "test.json", records)
    output = tmp_path / "pred.json"
    partial_heads: list[dict] = []
    original = Generator.generate

    def look_at_the_side_file(self: Generator, queries, **kwargs):  # noqa: ANN001, ANN202
        if partial_path(output).exists():
            partial_heads.append(json.loads(partial_path(output).read_text().splitlines()[0]))
        return original(self, queries, **kwargs)

    monkeypatch.setattr(Generator, "generate", look_at_the_side_file)
    answer_file(generator, ann, output, model=model, image_dir=image_dir, batch_size=1, **GEN)
    meta = json.loads(meta_path(output).read_text())
    digest = hashlib.sha256(b"weights of model A").hexdigest()
    assert meta["model"] == {
        "path": str(model.resolve()),
        "weights": {"model.safetensors": f"sha256:{digest}"},
    }
    assert meta["prompt"] == {"format": "chat", "system_prompt": None, "max_length": 8192}
    assert meta["generation"] == {
        "max_new_tokens": 4, "temperature": 0.0, "top_p": 1.0, "num_beams": 1, "text_only": False,
        "multi_turn": False,
    }  # fmt: skip
    assert partial_heads and all(
        head == {META_KEY: meta} for head in partial_heads
    )  # the side file's first line
    assert json.loads(output.read_text())[0]["id"] == "a"  # the JSON output stays a plain list of records


def test_predictions_in_a_field_with_the_reference_kept(
    generator: Generator, image_dir: Path, tmp_path: Path
) -> None:
    records = [
        record("a", "Is it a CT?", "0.png", gpt="yes"),
        record("b", "What is it?", "1.png", answer="CT"),
        record("c", "Hello?"),
    ]
    ann = write_records(tmp_path / "test.json", records)
    a, b, c = json.loads(
        answer_file(generator, ann, tmp_path / "pred.json", image_dir=image_dir, **GEN).read_text()
    )
    assert a["conversations"][:2] == records[0]["conversations"]  # the reference turn as it was
    assert a["conversations"][2] == {"from": "gpt", "value": a["prediction"]} and a["answer"] == "yes"
    assert b["conversations"][-1] == {"from": "gpt", "value": b["prediction"]} and b["answer"] == "CT"
    assert c["answer"] is None and c["conversations"][-1]["value"] == c["prediction"]
    # scored against the reference, never against the prediction itself
    scored = write_records(tmp_path / "scored.json", [a, b])
    rows = load_predictions([scored])
    assert [(r.prediction, r.reference) for r in rows] == [(a["prediction"], "yes"), (b["prediction"], "CT")]
    with pytest.raises(AnnotationError, match="no reference answer"):
        load_predictions([write_records(tmp_path / "unscored.json", [c])])


def test_a_resume_with_other_settings_is_refused_naming_the_difference(
    generator: Generator, talkative_model: MedVLM, image_dir: Path, tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:  # fmt: skip
    model_a = _weights(tmp_path / "a", b"weights of model A")
    model_b = _weights(tmp_path / "b", b"weights of model B")
    ann = write_records(
        tmp_path / "test.json", [record(f"q{i}", f"Question {i}?", f"{i}.png") for i in range(3)]
    )
    output = tmp_path / "pred.json"
    kwargs = {"image_dir": image_dir, "batch_size": 2}
    answer_file(generator, ann, output, model=model_a, **kwargs, **GEN)
    first = output.read_text()
    with pytest.raises(AnnotationError, match=r"generation\.max_new_tokens: 4 -> 3\n.*overwrite=true"):
        answer_file(generator, ann, output, model=model_a, **kwargs, max_new_tokens=3)
    with pytest.raises(
        AnnotationError, match=r"model\.weights\[model\.safetensors\]: sha256:\w+… -> sha256:"
    ):
        answer_file(generator, ann, output, model=model_b, **kwargs, **GEN)
    briefly = Generator(talkative_model, system_prompt="Be brief.")
    with pytest.raises(AnnotationError, match=r"prompt\.system_prompt: None -> 'Be brief\.'"):
        answer_file(briefly, ann, output, model=model_a, **kwargs, **GEN)
    with pytest.raises(AnnotationError, match=r"multi_turn: False -> True"):
        answer_file(generator, ann, output, model=model_a, multi_turn=True, **kwargs, **GEN)
    assert output.read_text() == first  # nothing was touched
    # the same weights at another path resume (the path is recorded, the weights identify the model)
    seen = _spy(monkeypatch)
    moved = tmp_path / "moved"
    shutil.copytree(model_a, moved)
    answer_file(generator, ann, output, model=moved, **kwargs, **GEN)
    assert seen == [] and json.loads(meta_path(output).read_text())["model"]["path"] == str(moved.resolve())
    # a side file left by a killed run with other settings is refused too
    other = output_meta(generator, model=model_b, **GEN)
    output.unlink()
    meta_path(output).unlink()
    partial_path(output).write_text(json.dumps({META_KEY: other}) + "\n")
    with pytest.raises(AnnotationError, match=r"pred\.json\.partial\.jsonl.*\n.*model\.weights"):
        answer_file(generator, ann, output, model=model_a, **kwargs, **GEN)
    # overwrite=True starts afresh
    answer_file(generator, ann, output, model=model_a, overwrite=True, **kwargs, max_new_tokens=3)
    assert seen == ["q0", "q1", "q2"] and not partial_path(output).exists()
    assert json.loads(meta_path(output).read_text())["generation"]["max_new_tokens"] == 3


def test_an_output_that_does_not_say_where_it_came_from_is_not_resumed(
    generator: Generator, image_dir: Path, tmp_path: Path
) -> None:
    ann = write_records(tmp_path / "test.json", [record("q0", "Question?", "0.png")])
    output = write_records(tmp_path / "pred.json", [record("q0", "Question?", "0.png", gpt="old answer")])
    with pytest.raises(
        AnnotationError, match=r"pred\.json.*does not record.*pred\.json\.origin.*overwrite=true"
    ):
        answer_file(generator, ann, output, image_dir=image_dir, **GEN)
    output.unlink()
    partial_path(output).write_text(json.dumps(record("q0", "Question?", "0.png", gpt="old")) + "\n")
    with pytest.raises(AnnotationError, match=r"pred\.json\.partial\.jsonl.*does not record"):
        answer_file(generator, ann, output, image_dir=image_dir, **GEN)
    rows = json.loads(
        answer_file(generator, ann, output, image_dir=image_dir, overwrite=True, **GEN).read_text()
    )
    assert rows[0]["conversations"][-1]["value"] != "old" and meta_path(output).is_file()
