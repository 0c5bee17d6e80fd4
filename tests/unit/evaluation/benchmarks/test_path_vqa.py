"""PathVQA: the HF parquet release (image bytes inside), yes/no closed, .pkl refused."""

from __future__ import annotations

import pytest

from medmvl.evaluation.benchmarks import ConversionError, convert

from .helpers import human, split_records
from .releases import path_vqa_parquet as _parquet
from .releases import write_path_vqa

pa = pytest.importorskip("pyarrow")
pq = pytest.importorskip("pyarrow.parquet")


@pytest.fixture
def release(tmp_path):
    return write_path_vqa(tmp_path)


def test_records_and_deduplicated_images(release, tmp_path):
    report = convert("path_vqa", release, tmp_path / "out")
    assert sorted(report["files"]) == ["test", "train", "validation"]
    train = split_records(report, "train")
    assert [r["id"] for r in train] == [
        "path_vqa-train-train-00000-of-00001-0",
        "path_vqa-train-train-00000-of-00001-1",
    ]
    assert human(train[0]) == "<image>\nwhat is present?"
    assert [(r["answer"], r["answer_type"]) for r in train] == [("fibrosis", "open"), ("no", "closed")]
    assert train[0]["image"] == train[1]["image"]  # one file per distinct image
    assert train[0]["image"][0].startswith("train/") and train[0]["image"][0].endswith(".jpg")
    assert len(list((tmp_path / "out/images/train").iterdir())) == 1
    assert split_records(report, "validation")[0]["answer_type"] == "closed"
    assert report["counts"]["test"] == {"total": 1, "answer_type": {"open": 1}}


def test_pickle_release_refused(tmp_path):
    src = tmp_path / "pvqa"
    (src / "qas/train").mkdir(parents=True)
    (src / "qas/train/train_qa.pkl").write_bytes(b"\x80\x04not to be opened")
    with pytest.raises(ConversionError, match="unpickling a downloaded file runs arbitrary code"):
        convert("path_vqa", src, tmp_path / "out")
    with pytest.raises(ConversionError, match=r"\.pkl release is not read"):
        convert("path_vqa", src / "qas/train/train_qa.pkl", tmp_path / "out")


def test_bad_image_bytes(release, tmp_path):
    _parquet(release / "data/test-00000-of-00001.parquet", [(b"GIF89a....", "what is this?", "cells")])
    with pytest.raises(
        ConversionError, match=r"test-00000-of-00001.parquet: row 0, field 'image': image bytes"
    ):
        convert("path_vqa", release, tmp_path / "out")
