"""Captions of the 3D demo's training sub-volumes, for LLM-free caption pre-training of a 3D encoder.

Why: a from-scratch encoder trained end-to-end through SmolLM2 stays at chance in a CPU budget (2D demo,
experiments/README.md); caption pre-training (``medmvl.demo.caption_pretrain``) first teaches
the encoder to emit, slot by slot, the words of a caption the LLM can read. The caption holds every fact
the 3D questions ask about, at fixed token positions: one sentence per organ of ``CAPTION_ORGANS`` (the
same number of tokens whatever its status), then the largest visible organ, e.g. ``The liver is seen on
the right. The heart is absent from this volume. ... The largest is the liver.``. Facts the labels do not
settle (an organ neither clearly present nor clearly absent, a side across the midline, a non-lateral
organ's side) are the word ``unknown``, which pre-training leaves unsupervised.
"""

from __future__ import annotations

from typing import Any

from medmvl.demo import sources as src

CAPTION_ORGANS = tuple(src.ORGAN_LABELS)  # liver, heart, spleen, stomach, kidneys, lungs
UNKNOWN = "unknown"
PLURAL = {"kidneys", "lungs"}


def caption_3d(lab: dict[str, Any]) -> str:
    """The caption of one rendering from its labels (``demo3d.labels``: sides already mirrored)."""
    sentences = []
    for organ in CAPTION_ORGANS:
        verb = "are" if organ in PLURAL else "is"
        if organ in lab["present"]:
            sentences.append(f"The {organ} {verb} seen on the {lab['sides'].get(organ, UNKNOWN)}.")
        elif organ in lab["absent"]:
            sentences.append(f"The {organ} {verb} absent from this volume.")
        else:
            sentences.append(f"The {organ} {verb} {' '.join([UNKNOWN] * 4)}.")
    visible = [o for o in CAPTION_ORGANS if o in lab["visible"]]
    largest = max(visible, key=lambda o: lab["counts"][o]) if visible else None
    sentences.append(f"The largest is the {largest}." if largest else f"The largest is {UNKNOWN}.")
    return " ".join(sentences)


def caption_record(sample: dict[str, Any], text: str) -> dict[str, Any]:
    """The volume–caption pair of a training sample (LLaVA pre-training format, ``<image3d>``)."""
    return {
        "id": sample["id"].replace("-train-", "-caption-"),
        "image3d": list(sample["image3d"]),
        "conversations": [{"from": "human", "value": "<image3d>"}, {"from": "gpt", "value": text}],
        "z_range": sample["z_range"],
        "crop": sample["crop"],
        "flipped": sample["flipped"],
    }
