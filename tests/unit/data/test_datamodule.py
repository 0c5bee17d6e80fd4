"""MedVLDataModule and its Hydra node ``conf/data/llava_2d.yaml``."""

from __future__ import annotations

import inspect
from pathlib import Path

import pytest
import torch
from hydra.utils import get_class, instantiate
from omegaconf import OmegaConf
from torchvision.transforms import v2

import medmvl
from medmvl.data.datamodule import MedVLDataModule
from medmvl.data.sampling.modality import ModalityBatchSampler
from tests.helpers.files import vqa, write_png

NODE = Path(medmvl.__file__).parent / "conf" / "data" / "llava_2d.yaml"
IMAGE_CONFIG = {"image_size": (16, 16), "image_mean": [0.5] * 3, "image_std": [0.5] * 3, "channels": 3}


@pytest.fixture
def files(tmp_path, write_json) -> tuple[Path, Path, Path]:
    for k in range(4):
        write_png(tmp_path / "imgs" / f"{k}.png", 60 * k)
    train = write_json(
        [vqa(f"t{k}", "Modality?", f"Image {k}.", [f"{k}.png"]) for k in range(4)], "train.json"
    )
    val = write_json([vqa("v0", "Q?", "A.", ["0.png"]), vqa("v1", "Text?", "Yes.")], "val.json")
    return train, val, tmp_path / "imgs"


def built_parts(qwen) -> dict:
    return {"tokenizer": qwen, "image_token_counts": {"<image>": 4}, "image_config": IMAGE_CONFIG}


def test_node_keys_are_constructor_arguments():
    node = OmegaConf.load(NODE)
    assert get_class(node._target_) is MedVLDataModule and node._partial_ is True
    assert OmegaConf.is_missing(node, "annotations")
    values = {k: v for k, v in OmegaConf.to_container(node).items() if not k.startswith("_")}
    bound = inspect.signature(MedVLDataModule).bind_partial(**values)
    params = inspect.signature(MedVLDataModule).parameters
    missing = set(params) - set(bound.arguments)
    # completed by the training CLI from the built model
    assert missing == {"tokenizer", "image_token_counts", "image_config", "volume_config"}


def test_hydra_partial_completed_with_built_parts(files, qwen):
    train, val, imgs = files
    node = OmegaConf.load(NODE)
    node.merge_with({"annotations": str(train), "val_annotations": str(val), "image_dir": str(imgs)})
    dm = instantiate(node)(**built_parts(qwen))
    assert isinstance(dm, MedVLDataModule) and dm.hparams.batch_size == 4 and "tokenizer" not in dm.hparams
    dm.setup("fit")
    batch = next(iter(dm.train_dataloader()))
    assert batch["input_ids"].shape[0] == 4 and batch["pixel_values"].shape == (4, 3, 16, 16)
    assert sorted(batch["ids"]) == ["t0", "t1", "t2", "t3"]


def test_loaders_shuffle_train_only_and_validate_in_order(files, qwen):
    train, val, imgs = files
    dm = MedVLDataModule(train, val, imgs, batch_size=2, val_batch_size=8, **built_parts(qwen))
    dm.setup("fit")
    assert dm.train_dataloader().sampler.shuffle  # one modality: the resumable loader
    loader = dm.val_dataloader()
    assert isinstance(loader.sampler, ModalityBatchSampler) and not loader.sampler.shuffle
    assert not loader.pin_memory
    text, image = list(loader)  # one modality per batch (text-only first), file order within each
    assert text["ids"] == ["v1"] and text["pixel_values"] is None
    assert image["ids"] == ["v0"] and image["pixel_values"].shape == (1, 3, 16, 16)
    no_val = MedVLDataModule(train, image_dir=imgs, **built_parts(qwen))
    assert no_val.val_dataloader() == []


def test_augment_applies_to_training_only(files, qwen):
    train, val, imgs = files
    dm = MedVLDataModule(
        train, val, imgs, augment={"crop_scale": [0.5, 1.0], "hflip": 0.5}, **built_parts(qwen)
    )
    dm.setup("fit")
    train_steps = [type(t) for t in dm.train_set.transform.transform.transforms]
    val_steps = [type(t) for t in dm.val_set.transform.transform.transforms]
    assert v2.RandomResizedCrop in train_steps and v2.RandomHorizontalFlip in train_steps
    assert val_steps == [v2.Resize, v2.Normalize]


def test_worker_processes_and_plain_format(files, qwen):
    train, _, imgs = files
    dm = MedVLDataModule(train, image_dir=imgs, num_workers=1, format="plain", **built_parts(qwen))
    loader = dm.train_dataloader()
    assert loader.persistent_workers
    batch = next(iter(loader))
    first = batch["input_ids"][0, : batch["attention_mask"][0].sum()]
    assert qwen.decode(first[4:]).startswith("Image ") and qwen.decode(first).endswith("<|im_end|>")
    assert torch.equal(batch["labels"][0, :4], torch.full((4,), -100))


def test_image_config_must_come_from_the_encoder(files, qwen):
    with pytest.raises(ValueError, match=r"image_config lacks \['channels'\]"):
        MedVLDataModule(
            files[0],
            tokenizer=qwen,
            image_token_counts={"<image>": 1},
            image_config={"image_size": 8, "image_mean": [0.5], "image_std": [0.5]},
        )
