"""One preprocessing for training, inference and export: HF-family encoders see the processor's pixels.

A CLIP/SigLIP tower's ``ImageTransform`` must give exactly what the transformers image processor written
by ``format=llava`` gives (``AutoProcessor``), on images of any size and aspect ratio, 8-bit grey and RGB,
and on 16-bit / DICOM display values quantised to 8 bits where medmvl quantises them. Encoders without an
HF processor (``patch``, the demo's ``caption_slots`` backbone) keep the float resize, bit for bit.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from hydra.utils import instantiate
from PIL import Image
from pydicom.data import get_testdata_file
from torchvision.transforms import v2
from transformers import (
    AutoProcessor,
    CLIPImageProcessor,
    CLIPVisionConfig,
    CLIPVisionModel,
    SiglipImageProcessor,
)
from transformers.image_utils import PILImageResampling

from medmvl.data.images import ImageTransform, load_image
from medmvl.models.encoders.clip import ClipEncoder
from medmvl.models.encoders.patch import PatchEncoder
from medmvl.models.encoders.siglip import SiglipEncoder
from tests.conftest import compose_train

PROCESSORS = {"SiglipImageProcessor": SiglipImageProcessor, "CLIPImageProcessor": CLIPImageProcessor}
STATS = {
    "SiglipImageProcessor": ((0.5,) * 3, (0.5,) * 3),
    "CLIPImageProcessor": ((0.1, 0.2, 0.3), (0.9, 0.8, 0.7)),
}
TINY = dict(
    image_size=32,
    patch_size=8,
    hidden_size=32,
    intermediate_size=64,
    num_hidden_layers=2,
    num_attention_heads=4,
)


def preprocess_for(kind: str, size: int, resample: str) -> dict:
    mean, std = STATS[kind]
    return {
        "image_size": (size, size),
        "image_mean": mean,
        "image_std": std,
        "channels": 3,
        "hf_processor": {"class": kind, "resample": resample, "rescale_factor": 1 / 255},
    }


def reference_processor(kind: str, size: int, resample: str, folder: Path):
    """The processor the export writes for these settings, saved and read back by ``AutoProcessor``."""
    mean, std = STATS[kind]
    kwargs = dict(size={"height": size, "width": size}, resample=PILImageResampling[resample.upper()])
    if kind == "CLIPImageProcessor":
        kwargs.update(do_center_crop=False, crop_size={"height": size, "width": size})
    PROCESSORS[kind](**kwargs, image_mean=list(mean), image_std=list(std)).save_pretrained(folder)
    return AutoProcessor.from_pretrained(folder, local_files_only=True)


def write_image(path: Path, shape: tuple[int, int], mode: str, seed: int = 0) -> Path:
    rng = np.random.default_rng(seed)
    h, w = shape
    yy, xx = np.mgrid[0:h, 0:w]
    smooth = (127 + 120 * np.sin(xx / 3.0) * np.cos(yy / 5.0)).astype(np.float64)  # edges + gradients
    noise = rng.integers(-40, 41, (h, w, 3))
    arr = np.clip(smooth[..., None] + noise, 0, 255).astype(np.uint8)
    Image.fromarray(arr[..., 0] if mode == "L" else arr, mode=mode).save(path)
    return path


def max_delta(a: torch.Tensor, b: torch.Tensor) -> float:
    assert a.shape == b.shape, (a.shape, b.shape)
    return float((a - b).abs().max())


@pytest.mark.parametrize("kind", list(PROCESSORS))
@pytest.mark.parametrize("size", [32, 224])
@pytest.mark.parametrize("shape", [(37, 53), (300, 200), (32, 32)])
@pytest.mark.parametrize("mode", ["L", "RGB"])
@pytest.mark.parametrize("resample", ["bilinear", "bicubic"])
def test_hf_transform_equals_the_exported_processor(kind, size, shape, mode, resample, tmp_path) -> None:
    path = write_image(tmp_path / "img.png", shape, mode)
    processor = reference_processor(kind, size, resample, tmp_path / "proc")
    theirs = processor(images=Image.open(path), return_tensors="pt")["pixel_values"][0]
    ours = ImageTransform.from_preprocess(preprocess_for(kind, size, resample))(load_image(path))
    delta = max_delta(ours, theirs)
    assert delta <= 1e-6, f"max |delta| {delta:.4g} against {type(processor).__name__}"


def test_16bit_and_dicom_display_values_are_quantised_where_the_processor_takes_them(tmp_path) -> None:
    """The processor takes 8-bit images: fed medmvl's 8-bit display image, it gives medmvl's pixels."""
    rng = np.random.default_rng(3)
    Image.fromarray(rng.integers(0, 65536, (41, 29), dtype=np.uint16)).save(tmp_path / "w.png")
    images = {"png16": load_image(tmp_path / "w.png"), "dicom": load_image(get_testdata_file("CT_small.dcm"))}
    for kind in PROCESSORS:
        processor = reference_processor(kind, 32, "bicubic", tmp_path / kind)
        transform = ImageTransform.from_preprocess(preprocess_for(kind, 32, "bicubic"))
        for name, floats in images.items():
            assert floats.dtype == np.float32 and 0 <= floats.min() and floats.max() <= 1
            eight_bit = np.rint(floats[..., 0].astype(np.float64) * 255).astype(np.uint8)
            theirs = processor(images=Image.fromarray(eight_bit), return_tensors="pt")["pixel_values"][0]
            delta = max_delta(transform(floats), theirs)
            assert delta <= 1e-6, f"{kind} {name}: max |delta| {delta:.4g}"


def test_to_uint8_is_the_quantisation_point() -> None:
    from medmvl.data.images import to_uint8

    floats = np.array(
        [[[-0.1], [0.4 / 255], [0.6 / 255], [0.2], [254.4 / 255], [1.0], [1.5]]], dtype=np.float32
    )
    assert to_uint8(floats).dtype == np.uint8
    assert to_uint8(floats)[0, :, 0].tolist() == [0, 0, 1, 51, 254, 255, 255]  # nearest level, clipped
    eight_bit = np.arange(256, dtype=np.uint8).reshape(16, 16, 1)
    assert np.array_equal(to_uint8(eight_bit.astype(np.float32) / 255), eight_bit)  # 8-bit PNGs are exact


def test_training_augmentations_run_on_the_processor_pixels(tmp_path) -> None:
    image = load_image(write_image(tmp_path / "img.png", (37, 53), "RGB"))
    pre = preprocess_for("SiglipImageProcessor", 32, "bicubic")
    plain = ImageTransform.from_preprocess(pre)
    assert torch.equal(ImageTransform.from_preprocess(pre, train=True)(image), plain(image))  # no augment
    flip = ImageTransform.from_preprocess(pre, train=True, augment={"hflip": 1.0})
    assert torch.equal(flip(image), plain(image).flip(-1))  # the flip of the processor's output, exactly
    augment = {"crop_scale": [0.3, 0.6], "vflip": 0.5, "rotation": 10, "brightness": 0.3, "contrast": 0.3}
    heavy = ImageTransform.from_preprocess(pre, train=True, augment=augment)
    torch.manual_seed(0)
    a, b = heavy(image), heavy(image)
    assert a.shape == b.shape == (3, 32, 32) and not torch.equal(a, b)
    assert float(a.min()) >= -1 and float(a.max()) <= 1  # still 8-bit levels through the processor's scale
    levels = a * 127.5 + 127.5
    torch.testing.assert_close(levels, levels.round(), atol=1e-4, rtol=0)


def test_patch_encoders_keep_the_float_resize_bit_for_bit() -> None:
    """Encoders without an HF processor (patch, the demo's caption_slots backbone): today's pixels exactly."""
    rng = np.random.default_rng(5)
    image = rng.random((37, 53, 3), dtype=np.float32)
    grey = rng.random((300, 200, 1), dtype=np.float32)
    patch = PatchEncoder(image_size=64, patch_size=16, num_channels=3, hidden_size=32, num_layers=0)
    assert "hf_processor" not in patch.preprocess
    transform = ImageTransform.from_preprocess(patch.preprocess)
    pre = patch.preprocess
    before = v2.Compose(
        [v2.Resize((64, 64), antialias=True), v2.Normalize(list(pre["image_mean"]), list(pre["image_std"]))]
    )
    for x in (image, grey):
        t = torch.from_numpy(x).permute(2, 0, 1)
        assert torch.equal(transform(x), before(t.expand(3, -1, -1).contiguous()))
    single = ImageTransform(32, [0.25], [0.5], channels=1)
    weights = torch.tensor([0.299, 0.587, 0.114]).view(3, 1, 1)
    lum = (torch.from_numpy(image).permute(2, 0, 1) * weights).sum(0, keepdim=True)
    old = v2.Compose([v2.Resize((32, 32), antialias=True), v2.Normalize([0.25], [0.5])])
    assert torch.equal(single(image), old(lum.contiguous()))
    demo = instantiate(compose_train(["encoder=patch"]).encoder)
    assert "hf_processor" not in demo.preprocess


def test_encoders_carry_their_processor_settings(tmp_path) -> None:
    torch.manual_seed(0)
    CLIPVisionModel(CLIPVisionConfig(**TINY)).save_pretrained(tmp_path)
    CLIPImageProcessor(resample=PILImageResampling.BILINEAR, rescale_factor=1 / 256).save_pretrained(tmp_path)
    loaded = ClipEncoder(str(tmp_path), select_layer=-1)
    assert loaded.preprocess["hf_processor"] == {
        "class": "CLIPImageProcessor",
        "resample": "bilinear",
        "rescale_factor": 1 / 256,
    }
    scratch = SiglipEncoder(config=TINY)  # a from-scratch tower (tiny2d): medmvl's bilinear resize
    assert scratch.preprocess["hf_processor"] == {
        "class": "SiglipImageProcessor",
        "resample": "bilinear",
        "rescale_factor": 1 / 255,
    }
    twin = instantiate(json.loads(json.dumps(loaded.export_config())))  # a saved model rebuilds offline
    assert twin.preprocess == loaded.preprocess
    tiny2d = instantiate(compose_train([]).encoder)
    assert tiny2d.preprocess["hf_processor"]["class"] == "SiglipImageProcessor"
