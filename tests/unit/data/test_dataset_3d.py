"""3D samples through the real data module: image3d paths, placeholder expansion, batches by modality."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from medmvl.data.datamodule import MedVLDataModule
from medmvl.data.images import ImageReadError
from medmvl.data.schema import AnnotationError
from tests.helpers.ct import small_ct, write_dicom_series, write_nifti
from tests.helpers.files import vqa, write_png

IMAGE_CONFIG = {"image_size": (16, 16), "image_mean": [0.5] * 3, "image_std": [0.5] * 3, "channels": 3}
VOLUME_CONFIG = {"volume_size": (8, 16, 16), "image_mean": [0.5], "image_std": [0.5], "channels": 1}
COUNTS = {"<image>": 4, "<image3d>": 6}


def vqa3d(sid: str, volumes: list[str], images: list[str] | None = None) -> dict:
    record = vqa(sid, "Which organs?", f"Answer {sid}.", images)
    record["image3d"] = volumes
    record["conversations"][0]["value"] = "<image3d>\n" * len(volumes) + record["conversations"][0]["value"]
    return record


@pytest.fixture
def mixed(tmp_path, write_json):
    hu, _, affine = small_ct()
    vols = tmp_path / "vols"
    write_nifti(vols / "ct.nii.gz", hu[:, :, :16], affine)
    write_dicom_series(vols / "series", hu[:, :, 8:24], affine)
    np.save(vols / "ct.npy", np.round(np.clip((hu.T[:16] + 1000) / 2000, 0, 1) * 255).astype(np.uint8))
    write_png(tmp_path / "imgs" / "x.png", 90)
    records = [
        vqa3d("nii", ["ct.nii.gz"]),
        vqa("xray", "Modality?", "X-ray.", ["x.png"]),
        vqa3d("dicom", ["series"]),
        vqa3d("both", ["ct.npy", "series"], ["x.png"]),
        vqa("text", "What is a rib?", "A bone."),
        vqa3d("npy", ["ct.npy"]),
    ]
    return write_json(records), tmp_path / "imgs", vols


def module(qwen, ann, imgs, vols, **kwargs) -> MedVLDataModule:
    parts = {"image_config": IMAGE_CONFIG, "volume_config": VOLUME_CONFIG, "image_token_counts": COUNTS}
    parts.update(kwargs)
    return MedVLDataModule(
        ann,
        ann,
        imgs,
        batch_size=2,
        image3d_dir=vols,
        volume={"crop_foreground": True},
        tokenizer=qwen,
        **parts,
    )


def test_batches_hold_one_modality_with_the_right_tensors(qwen, mixed):
    ann, imgs, vols = mixed
    dm = module(qwen, ann, imgs, vols)
    dm.setup("fit")
    assert dm.train_set.groups == ["3d", "2d", "3d", "2d+3d", "text", "3d"]
    group = {item.sample.id: g for item, g in zip(dm.train_set.items, dm.train_set.groups)}
    image3d_id = qwen.convert_tokens_to_ids("<image3d>")
    image_id = qwen.convert_tokens_to_ids("<image>")
    seen = []
    for batch in dm.train_dataloader():
        ids, px, px3 = batch["input_ids"], batch["pixel_values"], batch["pixel_values_3d"]
        n2, n3 = (0 if p is None else p.shape[0] for p in (px, px3))
        assert int((ids == image_id).sum()) == 4 * n2 and int((ids == image3d_id).sum()) == 6 * n3
        if px3 is not None:
            assert px3.shape[1:] == (1, 8, 16, 16) and px3.dtype == torch.float32
            assert -1.0 <= float(px3.min()) and float(px3.max()) <= 1.0  # [0, 1] normalised by 0.5 / 0.5
        if px is not None:
            assert px.shape[1:] == (3, 16, 16)
        seen.append(batch["ids"])
        assert len({group[i] for i in batch["ids"]}) == 1, batch["ids"]
    assert sorted(i for ids in seen for i in ids) == sorted(group) and len(seen) == 5
    val = [sorted(b["ids"]) for b in dm.val_dataloader()]
    assert val == [["text"], ["xray"], ["dicom", "nii"], ["npy"], ["both"]]  # file order, groups in order


def test_a_3d_only_model_rejects_2d_samples_and_the_reverse(qwen, mixed):
    ann, imgs, vols = mixed
    with pytest.raises(AnnotationError, match=r"sample 1 \(id 'xray'\), field 'image': 2D images need a 2D"):
        module(qwen, ann, imgs, vols, image_config=None, image_token_counts={"<image3d>": 6}).setup("fit")
    with pytest.raises(
        AnnotationError, match=r"sample 0 \(id 'nii'\), field 'image3d': 3D volumes need a 3D"
    ):
        module(qwen, ann, imgs, vols, volume_config=None, image_token_counts={"<image>": 4}).setup("fit")


def test_volume_errors_name_sample_and_field(qwen, mixed, write_json):
    ann, imgs, vols = mixed
    np.save(vols / "nan.npy", np.full((4, 8, 8), np.nan, np.float32))
    bad = write_json([vqa3d("gone", ["missing.nii.gz"]), vqa3d("nan", ["ct.npy", "nan.npy"])], "bad.json")
    with pytest.raises(
        AnnotationError, match=r"sample 0 \(id 'gone'\), field 'image3d\[0\]': volume file or"
    ):
        module(qwen, bad, imgs, vols).setup("fit")
    dm = module(qwen, bad, imgs, vols, on_error="skip")
    dm.setup("fit")
    assert [p.code for p in dm.train_set.skipped] == ["missing_image3d"]
    assert dm.train_set[0] is None and dm.train_set.read_failures == 1
    strict = module(qwen, write_json([vqa3d("nan", ["ct.npy", "nan.npy"])], "nan.json"), imgs, vols)
    strict.setup("fit")
    with pytest.raises(
        ImageReadError, match=r"sample 0 \(id 'nan'\), field 'image3d\[1\]': volume .*nan.npy"
    ):
        strict.train_set[0]
