"""MedM-VL's prompt for training and its pixel paths besides those the reference fixture covers (CLIP
geometry, the M3D-CLIP and MedM-CLIP volume paths), against MedM-VL's steps written with MONAI."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from medmvl.interop.medm_vl.pixels import MEDMCLIP_STATS, MedmVlImageTransform, MedmVlVolumeTransform
from medmvl.interop.medm_vl.prompt import MedmVlPrompt, render
from medmvl.models.llm.tokenizer import load_tokenizer
from tests.helpers.medm_vl_reference import FIXTURE


@pytest.fixture(scope="module")
def tokenizer():
    return load_tokenizer(str(FIXTURE / "2d"), eos_token="<|im_end|>")


def test_prompt_keeps_text_as_written() -> None:
    text = render(["Is there a nodule?\n<image>", "And?"], ["  Yes. "], eos="<|im_end|>", system="S")
    assert text == "S USER: Is there a nodule?\n<image> ASSISTANT: Yes.<|im_end|>USER: And? ASSISTANT:"


def test_training_labels_follow_medm_vl_masks(tokenizer) -> None:
    prompt = MedmVlPrompt(tokenizer)
    turns = [("human", "<image>\nWhat is it?"), ("gpt", "A CT."), ("human", "Where?"), ("gpt", "Chest.")]
    ids, supervised = prompt.encode(turns, "s0")
    assert ids[: len(prompt.encode_prompt(turns[:1]))] == prompt.encode_prompt(turns[:1])
    kept = [t for t, s in zip(ids, supervised) if s]
    assert tokenizer.decode(kept) == " A CT.<|im_end|> Chest.<|im_end|>"
    assert ids.count(tokenizer.convert_tokens_to_ids("<image>")) == 1


def test_a_sample_medm_vl_would_mask_whole_is_an_error(tokenizer) -> None:
    from medmvl.data.schema import AnnotationError

    turns = [("human", "Say ASSISTANT: x"), ("gpt", "ok")]
    with pytest.raises(AnnotationError, match="s1: MedM-VL's label mask"):
        MedmVlPrompt(tokenizer).encode(turns, "s1")


def test_clip_processor_geometry_matches_transformers() -> None:
    """Shortest edge, then centre crop (CLIP's processor); values within the resize rounding of
    transformers 5's processor (which resizes with torchvision)."""
    from transformers import CLIPImageProcessor

    rng = np.random.default_rng(0)
    pil = Image.fromarray(rng.integers(0, 256, (50, 90, 3), dtype=np.uint8))
    mean, std = [0.48145466, 0.4578275, 0.40821073], [0.26862954, 0.26130258, 0.27577711]
    spec = {"processor": "clip", "size": 32, "crop": [32, 32], "resample": "bicubic"}
    ours = MedmVlImageTransform({**spec, "rescale_factor": 1 / 255, "image_mean": mean, "image_std": std})
    hf = CLIPImageProcessor(size={"shortest_edge": 32}, crop_size={"height": 32, "width": 32})
    expected = hf(pil, return_tensors="pt")["pixel_values"][0]
    got = ours.from_pil(pil)
    assert got.shape == expected.shape == (3, 32, 32)
    assert (got - expected).abs().mean() < 0.02


def _volume(tmp_path: Path) -> Path:
    rng = np.random.default_rng(1)
    hu = np.full((12, 20, 24), -1024, dtype=np.int16)
    hu[2:10, 3:17, 4:20] = rng.integers(-900, 1400, (8, 14, 16))
    path = tmp_path / "ct.npy"
    np.save(path, hu)
    return path


@pytest.mark.parametrize("family", ["m3dclip", "medmclip"])
def test_3d_clip_volume_paths_match_medm_vl_steps(tmp_path: Path, family: str) -> None:
    import monai.transforms as mtf

    path = _volume(tmp_path)
    x = (np.clip(np.load(path), -1000, 1000) + 1000) / 2000 * 255  # MedM-VL's dataset
    if family == "m3dclip":  # lvlm/model/encoder/m3dclip.py Image3DProcessor
        x = x.astype(np.float32) / 255.0
        x = x - x.min()
        x = x / np.clip(x.max(), a_min=1e-8, a_max=None)
    else:  # lvlm/model/encoder/medmclip.py Image3DProcessor
        x = (x - MEDMCLIP_STATS[0]) / MEDMCLIP_STATS[1]
    steps = [mtf.CropForeground(), mtf.Resize(spatial_size=[8, 16, 16], mode="bilinear"), mtf.ToTensor()]
    expected = torch.as_tensor(mtf.Compose(steps)(x[np.newaxis])).float()
    ours = MedmVlVolumeTransform({"volume_size": (8, 16, 16), "medm_vl": {"family": family}})(path)
    assert ours.shape == (1, 8, 16, 16)
    torch.testing.assert_close(ours, expected.as_subclass(torch.Tensor), atol=1e-5, rtol=0)
