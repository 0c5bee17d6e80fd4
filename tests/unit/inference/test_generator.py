"""Generator: left-padded batches answer exactly like one-by-one prompts; text-only prompts carry no image."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from medmvl.data.images import ImageReadError
from medmvl.data.schema import Sample, Turn
from medmvl.inference import Generator, as_sample, strip_images
from medmvl.models.vlm import MedVLM


@pytest.fixture(scope="module")
def generator(talkative_model: MedVLM) -> Generator:
    return Generator(talkative_model)


def _queries(image_dir: Path) -> list[tuple]:
    return [
        (image_dir / "0.png", "Is the liver visible?"),
        ([image_dir / "1.png"], "What modality is this image, in a few words, please?"),
        (None, "Hi"),
        (image_dir / "2.png", "Left or right?"),
        ([image_dir / "0.png", image_dir / "2.png"], "<image> and <image>: which one is brighter?"),
    ]


def test_batched_answers_equal_one_by_one(generator: Generator, image_dir: Path) -> None:
    queries = _queries(image_dir)
    one_by_one = [generator.generate([q], max_new_tokens=6)[0] for q in queries]
    assert all(one_by_one) and len(set(one_by_one)) > 2, one_by_one  # the comparison is not vacuous
    for batch_size in (2, 5):
        assert generator.generate(queries, batch_size=batch_size, max_new_tokens=6) == one_by_one


def test_batch_is_left_padded(generator: Generator, image_dir: Path) -> None:
    samples = [as_sample(q, i) for i, q in enumerate(_queries(image_dir))]
    prompts = [generator.prompt(s) for s in samples]
    batch = generator.batch(prompts)
    lengths = [len(p["input_ids"]) for p in prompts]
    assert batch["input_ids"].shape == (5, max(lengths))
    assert batch["attention_mask"].sum(1).tolist() == lengths
    assert bool(batch["attention_mask"][:, -1].all())  # every row ends at the last column
    for row, n in enumerate(lengths):
        assert torch.equal(batch["input_ids"][row, -n:], prompts[row]["input_ids"])
    assert batch["pixel_values"].shape == (5, 3, 32, 32)  # 1 + 1 + 0 + 1 + 2 images, encoder size


def test_prompt_expands_image_tokens(generator: Generator, talkative_model: MedVLM, image_dir: Path) -> None:
    prompt = generator.prompt(as_sample(_queries(image_dir)[4]))
    n_images = int((prompt["input_ids"] == talkative_model.image_token_id).sum())
    assert n_images == 2 * talkative_model.connector.num_tokens
    assert prompt["pixel_values"].shape == (2, 3, 32, 32)


def test_text_only_drops_images_and_placeholders(
    generator: Generator, talkative_model: MedVLM, image_dir: Path
) -> None:
    sample = as_sample(_queries(image_dir)[4])
    stripped = strip_images(sample)
    assert stripped.images == () and stripped.turns[0].text == "and : which one is brighter?"
    prompt = generator.prompt(sample, text_only=True)
    assert prompt["pixel_values"] is None
    assert not bool((prompt["input_ids"] == talkative_model.image_token_id).any())
    queries = _queries(image_dir)[:2]
    text_only = generator.generate(queries, text_only=True, max_new_tokens=5)
    assert text_only == generator.generate([(None, q) for _, q in queries], max_new_tokens=5)


def test_relative_paths_resolve_against_image_dir(generator: Generator, image_dir: Path) -> None:
    absolute = generator.generate([(image_dir / "1.png", "What is it?")], max_new_tokens=4)
    relative = generator.generate([("1.png", "What is it?")], image_dir=image_dir, max_new_tokens=4)
    sample = Sample(
        "s",
        (Turn("human", "<image>\nWhat is it?"), Turn("gpt", "ref")),
        ("1.png",),
        source=str(image_dir / "ann.json"),
    )
    assert absolute == relative == generator.generate([sample], max_new_tokens=4)  # final gpt turn dropped


def test_generation_options_pass_through(
    generator: Generator, talkative_model: MedVLM, image_dir: Path
) -> None:
    queries = _queries(image_dir)[:3]
    short = generator.generate(queries, max_new_tokens=1)
    assert all(len(talkative_model.tokenizer(a, add_special_tokens=False).input_ids) <= 2 for a in short)
    assert len(generator.generate(queries, num_beams=2, max_new_tokens=3)) == 3
    torch.manual_seed(0)
    sampled = generator.generate(queries, temperature=0.8, top_p=0.9, max_new_tokens=3)
    torch.manual_seed(0)
    assert generator.generate(queries, temperature=0.8, top_p=0.9, max_new_tokens=3) == sampled


def test_placeholder_count_mismatch_is_an_error() -> None:
    with pytest.raises(ValueError, match="1 <image> placeholder.*2 image"):
        as_sample((["a.png", "b.png"], "<image> what is it?"), 3)
    assert as_sample(("a.png", "What?")).turns[0].text == "<image>\nWhat?"


def test_missing_image_names_the_sample(generator: Generator, tmp_path: Path) -> None:
    with pytest.raises(ImageReadError, match=r"sample 0 \(id '0'\): image file .*nope.png"):
        generator.generate([(tmp_path / "nope.png", "What is it?")])
