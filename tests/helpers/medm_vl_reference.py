"""The MedM-VL reference fixture (``tests/fixtures/medm_vl_reference``): checkpoints saved by MedM-VL's own
code and what MedM-VL's inference computed from them (README.md there). Helpers to run medmvl's import on
one reference sample and measure how far it is from MedM-VL."""

from __future__ import annotations

import functools
import json
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file

FIXTURE = Path(__file__).resolve().parents[1] / "fixtures" / "medm_vl_reference"
SOURCES = {
    "llm": str(FIXTURE / "hub" / "qwen2.5_tiny"),
    "encoder_image": str(FIXTURE / "hub" / "siglip_tiny"),
}
PLACEHOLDER_IDS = {-200: "<image>", -201: "<image3d>"}


@functools.cache
def reference() -> tuple[dict[str, Any], dict[str, torch.Tensor]]:
    """``reference.json`` and the tensors of ``reference.safetensors``."""
    return json.loads((FIXTURE / "reference.json").read_text()), load_file(FIXTURE / "reference.safetensors")


def samples() -> list[dict[str, Any]]:
    return reference()[0]["samples"]


@functools.cache
def generator(checkpoint: str | Path) -> Any:
    """A Generator on a model folder (a fixture checkpoint ``2d`` / ``ct``, or an exported one), with the
    prompt settings it came with."""
    from medmvl.inference.generator import Generator
    from medmvl.inference.loading import load_model

    loaded = load_model(FIXTURE / checkpoint, medmvl_sources=SOURCES)
    prompt = loaded.prompt
    return Generator(loaded.model, max_length=prompt["max_length"], format=prompt["format"])


def expected_ids(sample: dict[str, Any], gen: Any) -> list[int]:
    """MedM-VL's prompt ids with each placeholder id expanded to medmvl's image-token block."""
    out: list[int] = []
    for tid in reference()[1][f"{sample['key']}/input_ids"].tolist():
        if tid in PLACEHOLDER_IDS:
            token = PLACEHOLDER_IDS[tid]
            out += [gen.tokenizer.convert_tokens_to_ids(token)] * gen.model.image_token_counts[token]
        else:
            out.append(tid)
    return out


def run(sample: dict[str, Any], model: str | Path | None = None) -> dict[str, Any]:
    """medmvl on one reference sample (with its checkpoint, or ``model``): its ids, pixels, logits and
    greedy tokens, and MedM-VL's."""
    from medmvl.data.schema import load_annotations

    gen = generator(model or sample["checkpoint"].rstrip("/"))
    record = load_annotations(FIXTURE / sample["annotations"], require_answer=False)[sample["index"]]
    prompt = gen.prompt(record, image_dir=FIXTURE / "data", image3d_dir=FIXTURE / "data")
    batch = gen.batch([prompt])
    tensors = reference()[1]
    key = sample["key"]
    pixel_key = "pixel_values_3d" if "image3d" in sample["media"] else "pixel_values"
    with torch.no_grad():
        logits = gen.model(
            input_ids=batch["input_ids"],
            attention_mask=batch["attention_mask"],
            **{k: batch[k] for k in ("pixel_values", "pixel_values_3d")},
        )["logits"][0, :, : tensors[f"{key}/logits_last"].numel()]  # [t, v_medm_vl]
        greedy = gen.model.generate(**batch, max_new_tokens=10, do_sample=False, num_beams=1)[0]
    return {
        "ids": prompt["input_ids"].tolist(),
        "expected_ids": expected_ids(sample, gen),
        "pixels": (batch[pixel_key].float() - tensors[f"{key}/pixel_values"]).abs().max().item(),
        "logits_last": (logits[-1] - tensors[f"{key}/logits_last"]).abs().max().item(),
        "logits_last8": (logits[-8:, ::8] - tensors[f"{key}/logits_last8"]).abs().max().item(),
        "greedy": greedy.tolist(),
        "expected_greedy": tensors[f"{key}/greedy_ids"].tolist(),
        "answer": gen.tokenizer.decode(greedy, skip_special_tokens=True).strip(),
    }
