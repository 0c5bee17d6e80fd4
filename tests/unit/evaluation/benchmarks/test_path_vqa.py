"""PathVQA: the HF parquet release (image bytes inside), yes/no closed, .pkl refused."""

from __future__ import annotations

import pytest

from medmvl.evaluation.benchmarks import ConversionError, convert

from .helpers import human, jpeg_bytes, split_records

pa = pytest.importorskip("pyarrow")
pq = pytest.importorskip("pyarrow.parquet")


def _parquet(path, rows):
    path.parent.mkdir(parents=True, exist_ok=True)
    image = pa.struct([("bytes", pa.binary()), ("path", pa.string())])
    table = pa.table(
        {
            "image": pa.array([{"bytes": b, "path": None} for b, _, _ in rows], type=image),
            "question": [q for _, q, _ in rows],
            "answer": [a for _, _, a in rows],
        }
    )
    pq.write_table(table, path)


@pytest.fixture
def release(tmp_path):
    src = tmp_path / "path-vqa"
    one, two = jpeg_bytes(10), jpeg_bytes(200)
    _parquet(
        src / "data/train-00000-of-00001.parquet",
        [(one, "what is present?", "fibrosis"), (one, "is this tissue normal?", "no")],
    )
    _parquet(src / "data/validation-00000-of-00001.parquet", [(two, "does this show necrosis?", "yes")])
    _parquet(src / "data/test-00000-of-00001.parquet", [(two, "where is this from?", "liver")])
    return src


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
