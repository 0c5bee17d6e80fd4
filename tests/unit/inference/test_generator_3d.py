"""3D volumes through the Generator and infer.py: the <image3d> tower, mixed 2D + 3D batches, multi-turn."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from medmvl.cli.infer import infer
from medmvl.data.volumes import VolumeReadError
from medmvl.inference import Generator, as_sample
from medmvl.inference.batch import answer_file
from medmvl.models.vlm import MedVLM
from tests.helpers.records import record, write_records
from tests.integration.test_infer_cli import compose_infer

GEN = {"max_new_tokens": 4}


@pytest.fixture(scope="module")
def generator(talkative_model_3d: MedVLM) -> Generator:
    return Generator(talkative_model_3d)


def _queries(image_dir: Path, volume_dir: Path) -> list:
    return [
        as_sample((None, "Is there a nodule?"), 0, images3d=volume_dir / "0.npy"),
        as_sample((image_dir / "0.png", "Is the liver visible?"), 1),
        as_sample((None, "Hi"), 2),
        as_sample((image_dir / "1.png", "Same patient?"), 3, images3d=[volume_dir / "2.nii.gz"]),
        as_sample((None, "<image3d> or <image3d>: which is larger?"), 4, images3d=[volume_dir / "1.npy", volume_dir / "2.nii.gz"]),
    ]  # fmt: skip


def test_volume_prompt_expands_image3d_tokens(
    generator: Generator, talkative_model_3d: MedVLM, image_dir: Path, volume_dir: Path
) -> None:
    sample = _queries(image_dir, volume_dir)[3]
    assert sample.turns[0].text == "<image3d>\n<image>\nSame patient?"
    prompt = generator.prompt(sample)
    ids = prompt["input_ids"]
    assert int((ids == talkative_model_3d.image3d_token_id).sum()) == 64
    assert int((ids == talkative_model_3d.image_token_id).sum()) == 16
    assert prompt["pixel_values"].shape == (1, 3, 32, 32)
    assert prompt["pixel_values_3d"].shape == (1, 1, 16, 32, 32)  # the tiny3d volume_size
    text_only = generator.prompt(sample, text_only=True)
    assert text_only["pixel_values_3d"] is None and text_only["pixel_values"] is None


def test_mixed_2d_3d_batches_answer_like_one_by_one(
    generator: Generator, image_dir: Path, volume_dir: Path
) -> None:
    queries = _queries(image_dir, volume_dir)
    one_by_one = [generator.generate([q], **GEN)[0] for q in queries]
    assert len(set(one_by_one)) > 2, one_by_one
    batch = generator.batch([generator.prompt(q) for q in queries])
    assert batch["pixel_values"].shape[0] == 2 and batch["pixel_values_3d"].shape == (4, 1, 16, 32, 32)
    assert generator.generate(queries, batch_size=5, **GEN) == one_by_one
    # the volume changes the answer: same question, other volume
    other = as_sample((None, "Is there a nodule?"), 0, images3d=volume_dir / "1.npy")
    logits = [
        generator.model(**{k: v for k, v in generator.batch([generator.prompt(q)]).items()})["logits"][0, -1]
        for q in (queries[0], other)
    ]
    assert not torch.allclose(logits[0], logits[1])


def test_unreadable_volume_names_the_sample(generator: Generator, tmp_path: Path, image_dir: Path) -> None:
    with pytest.raises(VolumeReadError, match=r"sample 0 \(id '0'\): .*2D image"):
        generator.generate([as_sample((None, "What?"), images3d=image_dir / "0.png")])
    with pytest.raises(ValueError, match="1 <image3d> placeholder.*2 volume"):
        as_sample((None, "<image3d> what?"), images3d=["a.npy", "b.npy"])


def test_a_2d_only_model_refuses_volumes(talkative_model: MedVLM, volume_dir: Path) -> None:
    with pytest.raises(ValueError, match="no 3D"):
        Generator(talkative_model).generate([as_sample((None, "What?"), images3d=volume_dir / "0.npy")])


def test_file_with_volumes_single_and_multi_turn(
    generator: Generator, image_dir: Path, volume_dir: Path, tmp_path: Path
) -> None:
    vol = {"id": "v", "image3d": ["0.npy"], "answer": "yes",
           "conversations": [{"from": "human", "value": "<image3d>\nIs there a nodule?"},
                             {"from": "gpt", "value": "no"}, {"from": "human", "value": "Where?"}]}  # fmt: skip
    ann = write_records(tmp_path / "ct.json", [vol, record("p", "What is it?", "1.png")])
    kwargs = {"image_dir": image_dir, "image3d_dir": volume_dir, **GEN}
    rows = json.loads(answer_file(generator, ann, tmp_path / "single.json", **kwargs).read_text())
    assert rows[0]["conversations"][-1]["from"] == "gpt" and len(rows[0]["conversations"]) == 4
    dialog = json.loads(
        answer_file(generator, ann, tmp_path / "multi.json", multi_turn=True, **kwargs).read_text()
    )
    turns = dialog[0]["conversations"]
    assert [t["from"] for t in turns] == ["human", "gpt", "human", "gpt"] and turns[1]["value"] != "no"
    assert dialog[0]["reference_turns"] == ["no", None] and dialog[0]["image3d"] == ["0.npy"]


def test_infer_cli_one_volume_question(
    saved_model_3d: Path, volume_dir: Path, talkative_model_3d: MedVLM
) -> None:
    overrides = [
        f"model={saved_model_3d}",
        f"image3d={volume_dir / '2.nii.gz'}",
        "question=Is it a CT?",
        "max_new_tokens=4",
    ]
    answer = infer(compose_infer(overrides))
    expected = Generator(talkative_model_3d).generate(
        [as_sample((None, "Is it a CT?"), images3d=volume_dir / "2.nii.gz")], **GEN
    )
    assert answer == expected[0]
