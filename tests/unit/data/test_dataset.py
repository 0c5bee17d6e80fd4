"""AnnotationDataset (validation at construction, skip accounting) and the Collator."""

from __future__ import annotations

import logging
import re

import pytest
import torch

from medmvl.data.collate import Collator
from medmvl.data.conversation import IGNORE_INDEX, ConversationEncoder
from medmvl.data.dataset import AnnotationDataset
from medmvl.data.images import ImageReadError, ImageTransform
from medmvl.data.schema import AnnotationError, load_annotations
from tests.helpers.files import vqa, write_png

TRANSFORM = ImageTransform(8, [0.0] * 3, [1.0] * 3)


@pytest.fixture
def encoder(qwen) -> ConversationEncoder:
    return ConversationEncoder(qwen, image_token_counts={"<image>": 4}, max_length=128)


@pytest.fixture
def records(tmp_path) -> list[dict]:
    write_png(tmp_path / "imgs" / "a.png", 51)
    write_png(tmp_path / "imgs" / "sub" / "b.png", 153)
    absolute = str(write_png(tmp_path / "elsewhere" / "c.png", 255))
    return [
        vqa("one", "Modality?", "X-ray.", ["a.png"]),
        vqa("two", "Compare.", "Stable.", ["sub/b.png", absolute]),
        vqa("text", "What is a rib?", "A bone."),
    ]


def make(path, encoder, **kwargs) -> AnnotationDataset:
    return AnnotationDataset(path, conversation=encoder, transform=TRANSFORM, **kwargs)


def test_items_hold_tokens_and_images(tmp_path, write_json, encoder, records):
    path = write_json(records)
    data = make(path, encoder, image_dir=tmp_path / "imgs")
    assert len(data) == 3 and data.skipped == []
    one, two, text = data[0], data[1], data[2]
    expected = encoder.encode(load_annotations(path)[0])
    assert one["id"] == "one" and torch.equal(one["input_ids"], expected["input_ids"])
    assert torch.equal(one["labels"], expected["labels"])
    assert one["pixel_values"].shape == (1, 3, 8, 8)
    torch.testing.assert_close(one["pixel_values"], torch.full((1, 3, 8, 8), 0.2))
    assert two["pixel_values"].shape == (2, 3, 8, 8)
    assert [round(float(v), 2) for v in two["pixel_values"][:, 0, 0, 0]] == [0.6, 1.0]  # placeholder order
    assert text["pixel_values"] is None


def test_image_dir_defaults_to_the_annotation_folder(tmp_path, write_json, encoder):
    write_png(tmp_path / "x.png")
    assert len(make(write_json([vqa("a", "Q", "A", ["x.png"])]), encoder)) == 1


@pytest.mark.parametrize(
    ("image", "field", "message"),
    [("missing.png", "image[0]", "does not exist"), ("../a.png", "image[0]", "leaves image_dir")],
)
def test_bad_paths_raise_with_sample_and_field(tmp_path, write_json, encoder, records, image, field, message):
    path = write_json([*records, vqa("bad", "Q", "A", [image])])
    expected = re.escape(f"{path}: sample 3 (id 'bad'), field '{field}': ") + ".*" + message
    with pytest.raises(AnnotationError, match=expected):
        make(path, encoder, image_dir=tmp_path / "imgs")


def test_skip_drops_and_reports_every_bad_sample(tmp_path, write_json, encoder, records, caplog):
    bad = [
        vqa("no-file", "Q", "A", ["gone.png"]),
        vqa("escape", "Q", "A", ["../../etc/passwd"]),
        vqa("long", "Q " * 200, "A", ["a.png"]),
        {
            "id": "vol",
            "image3d": ["ct.nii.gz"],
            "conversations": vqa("x", "<image3d>Q", "A")["conversations"],
        },
        {"id": "broken", "conversations": [{"from": "gpt", "value": "A"}]},
        vqa("one", "duplicate", "A"),
    ]
    path = write_json(records + bad)
    with caplog.at_level(logging.WARNING, logger="medmvl.data"):
        data = make(path, encoder, image_dir=tmp_path / "imgs", on_error="skip")
    assert [data[i]["id"] for i in range(len(data))] == ["one", "two", "text"]
    codes = {p.id: p.code for p in data.skipped}
    assert codes == {
        "no-file": "missing_image",
        "escape": "path_escape",
        "long": "too_long",
        "vol": "image3d",
        "broken": "no_answer",
        "one": "duplicate_id",
    }
    (summary,) = [r.getMessage() for r in caplog.records if "skipped" in r.getMessage()]
    assert summary.startswith(f"{path}: skipped 6 of 9 samples; ")
    assert "missing_image: 1 (e.g. 'no-file'; first: image file" in summary
    assert re.search(r"too_long: 1 \(e.g. 'long'; first: \d+ tokens exceed max_length=128", summary)


def test_unreadable_image_at_getitem(tmp_path, write_json, encoder, records, caplog):
    (tmp_path / "imgs" / "a.png").write_bytes(b"not a png")
    path = write_json(records)
    strict = make(path, encoder, image_dir=tmp_path / "imgs")
    with pytest.raises(
        ImageReadError, match=r"sample 0 \(id 'one'\), field 'image\[0\]': cannot read image .*a.png"
    ):
        strict[0]
    lenient = make(path, encoder, image_dir=tmp_path / "imgs", on_error="skip")
    with caplog.at_level(logging.WARNING, logger="medmvl.data"):
        assert lenient[0] is None
    assert lenient.read_failures == 1 and "skipping" in caplog.text
    batch = Collator(0)([lenient[0], lenient[2]])
    assert batch["ids"] == ["text"] and batch["skipped"] == 1


def test_collator_pads_and_concatenates_images(tmp_path, write_json, encoder, records, qwen):
    data = make(write_json(records), encoder, image_dir=tmp_path / "imgs")
    items = [data[2], data[1], data[0]]
    lengths = [len(item["input_ids"]) for item in items]
    batch = Collator(qwen.pad_token_id)(items)
    n = max(lengths)
    assert batch["input_ids"].shape == batch["labels"].shape == batch["attention_mask"].shape == (3, n)
    assert batch["attention_mask"].sum(1).tolist() == lengths
    for row, (item, length) in enumerate(zip(items, lengths)):
        assert torch.equal(batch["input_ids"][row, :length], item["input_ids"])
        assert (batch["input_ids"][row, length:] == qwen.pad_token_id).all()
        assert (batch["labels"][row, length:] == IGNORE_INDEX).all()
    assert batch["pixel_values"].shape == (3, 3, 8, 8)
    assert [round(float(v), 2) for v in batch["pixel_values"][:, 0, 0, 0]] == [0.6, 1.0, 0.2]
    assert batch["ids"] == ["text", "two", "one"]
    image_id = qwen.convert_tokens_to_ids("<image>")
    assert int((batch["input_ids"] == image_id).sum()) == 4 * 3  # one placeholder block per image


def test_collator_left_padding_and_edge_cases(tmp_path, write_json, encoder, records):
    data = make(write_json(records), encoder, image_dir=tmp_path / "imgs")
    short, long = data[2], data[1]
    batch = Collator(7, padding_side="left")([short, long])
    pad = len(long["input_ids"]) - len(short["input_ids"])
    assert batch["input_ids"][0, :pad].tolist() == [7] * pad
    assert torch.equal(batch["input_ids"][0, pad:], short["input_ids"])
    assert batch["attention_mask"][0].tolist() == [0] * pad + [1] * len(short["input_ids"])
    assert Collator(0)([short])["pixel_values"] is None
    assert Collator(0)([None, None]) == {"skipped": 2}
    with pytest.raises(ValueError, match="padding_side"):
        Collator(0, padding_side="middle")
