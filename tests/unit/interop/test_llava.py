"""HF Llava export: transformers loads the folder with no custom code and answers like medmvl.

Two tiny models (CLIP with CLS dropped at the penultimate layer, SigLIP at the last) are exported; then
``AutoModelForImageTextToText`` + ``AutoProcessor`` (offline, local folder) must give medmvl's pixels and
logits on an image + question and the same greedy answer, for images at the encoder's size and for others
it must resize (other sizes, aspect ratios, grey). Models Llava cannot hold are refused before any file is
written.
"""

from __future__ import annotations

import copy
import functools
from pathlib import Path

import lightning as L
import numpy as np
import pytest
import torch
from PIL import Image

from medmvl.inference.generator import Generator, as_sample
from medmvl.interop.llava import LlavaExportError, export_llava, llava_refusal
from medmvl.models.build import build_model
from medmvl.models.vlm import MedVLM
from medmvl.training.stages import apply_stage
from tests.conftest import compose_train

CLIP = [
    "encoder._target_=medmvl.models.encoders.clip.ClipEncoder",
    "encoder.select_layer=-2",
    "encoder.select_feature=patch",
]
VARIANTS = {
    "clip_patch": CLIP,
    "clip_cls_depth1": [*CLIP[:2], "encoder.select_feature=cls_patch", "connector.depth=1"],
    "siglip": ["encoder.select_layer=-1"],
    "siglip_bicubic": ["encoder.select_layer=-1", "+encoder.resample=bicubic"],  # a hub checkpoint's filter
}
QUESTION = "What colour is this?"


@functools.cache
def _built(variant: str) -> MedVLM:
    L.seed_everything(0)
    model = build_model(compose_train([*VARIANTS[variant]])).eval()
    with torch.no_grad():  # a trained-looking connector: random image tokens at text-embedding scale
        for p in model.connector.parameters():
            p.normal_(0, 0.5)
    return model


def _model(variant: str) -> MedVLM:
    """A fresh copy of the variant's model (built once per session)."""
    model = _built(variant)
    return copy.deepcopy(model, memo={id(model.tokenizer): model.tokenizer})  # tokenizer shared, read-only


IMAGES = {  # (h, w, channels): the encoder's size, and sizes and aspect ratios it must resize
    "32x32_rgb": (32, 32, 3),
    "37x53_rgb": (37, 53, 3),
    "300x200_grey": (300, 200, 1),
}


@pytest.fixture(params=list(IMAGES))
def image(request: pytest.FixtureRequest, tmp_path: Path) -> Path:
    h, w, c = IMAGES[request.param]
    rng = np.random.default_rng(1)
    yy, xx = np.mgrid[0:h, 0:w]
    smooth = 127 + 120 * np.sin(xx / 3.0)[..., None] * np.cos(yy / 5.0)[..., None]  # edges to resample
    pixels = np.clip(smooth + rng.integers(-40, 41, (h, w, c)), 0, 255).astype(np.uint8)
    path = tmp_path / "img.png"
    Image.fromarray(pixels[..., 0] if c == 1 else pixels).save(path)
    return path


@pytest.mark.slow
@pytest.mark.parametrize("variant", list(VARIANTS))
def test_llava_export_matches_medmvl(variant: str, image: Path, tmp_path: Path) -> None:
    from transformers import AutoModelForImageTextToText, AutoProcessor, LlavaForConditionalGeneration

    model = _model(variant)
    out = export_llava(model, tmp_path / "llava")
    assert (out / "model.safetensors").is_file() and not list(out.glob("*.bin"))

    hf = AutoModelForImageTextToText.from_pretrained(out, local_files_only=True).eval()
    processor = AutoProcessor.from_pretrained(out, local_files_only=True)
    assert isinstance(hf, LlavaForConditionalGeneration)
    messages = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": QUESTION}]}]
    text = processor.apply_chat_template(messages, add_generation_prompt=True)
    inputs = processor(images=Image.open(image), text=text, return_tensors="pt")

    gen = Generator(model)
    prompt = gen.prompt(as_sample((str(image), QUESTION)))
    pixels = prompt["pixel_values"]  # [1, c, h, w]
    assert inputs["input_ids"][0].tolist() == prompt["input_ids"].tolist()  # same prompt and image tokens
    ids, mask = inputs["input_ids"], inputs["attention_mask"]
    with torch.no_grad():
        ours = model(input_ids=ids, attention_mask=mask, pixel_values=pixels)["logits"]
        theirs = hf(**inputs).logits
    pixel_delta = float((inputs["pixel_values"] - pixels).abs().max())
    logit_delta = float((theirs - ours).abs().max())
    deltas = f"max |delta| pixels {pixel_delta:.4g}, logits {logit_delta:.4g}"
    assert pixel_delta <= 1e-6 and logit_delta <= 1e-5, f"exported processor + Llava vs medmvl: {deltas}"

    ours_text = gen.answer(str(image), QUESTION, max_new_tokens=8)
    new = hf.generate(**inputs, max_new_tokens=8, do_sample=False)[0, ids.shape[1] :]
    assert processor.decode(new, skip_special_tokens=True).strip() == ours_text


def test_system_prompt_is_baked_into_the_processor_template(tmp_path: Path) -> None:
    from transformers import AutoProcessor

    model = _model("siglip")
    out = export_llava(model, tmp_path / "llava", prompt={"system_prompt": "You read CT scans."})
    processor = AutoProcessor.from_pretrained(out, local_files_only=True)
    text = processor.apply_chat_template([{"role": "user", "content": "Hi"}], add_generation_prompt=True)
    assert "You read CT scans." in text


def test_unsupported_models_are_refused_before_writing(tmp_path: Path) -> None:
    model = _model("siglip")
    model.connector.norm = torch.nn.LayerNorm(64)  # connector.input_norm=true
    with pytest.raises(LlavaExportError, match="input_norm"):
        export_llava(model, tmp_path / "llava")
    assert not (tmp_path / "llava").exists()

    model = _model("siglip")
    lin = torch.nn.Linear(64, 64)
    model.connector.proj.extend([torch.nn.GELU(), lin])  # depth 3
    assert "depth 3" in llava_refusal(model)

    model = _model("siglip")
    apply_stage(model, {"llm": {"mode": "lora", "lora": {"r": 2, "alpha": 4}}})
    assert "lora=merge" in llava_refusal(model)

    class Pool(torch.nn.Module):  # stands for spatial_pool / attn_pool
        num_tokens = 4

    model = _model("siglip")
    model.connector = Pool()
    assert "pooling connectors" in llava_refusal(model)
    model = _model("siglip")
    model.encoder.spatial_dims = 3  # a 3D / slice-wise encoder
    assert "3D and slice-wise" in llava_refusal(model)
