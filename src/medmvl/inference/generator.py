"""Batched answer generation with a :class:`MedVLM`: samples in, decoded answers out.

Why a class: a prompt must be built exactly as in training (the LLM's chat template through
``ConversationEncoder.encode_prompt``, each ``<image>`` / ``<image3d>`` expanded to its connector's token
count, images and volumes preprocessed by their tower's own evaluation transform), and batches must be left-padded so every row's
new tokens start at the same position. ``Generator`` owns those three pieces so callers (the ``infer.py``
CLI, the demo report, notebooks) only pass samples. Decoding is ``transformers``' ``generate`` with its KV
cache; sampling and beam search are its own options passed through.

``text_only=True`` asks the same model the same questions with the images, volumes and their
placeholders removed: the baseline that shows how much of an answer comes from the image.
"""

from __future__ import annotations

import os
import re
from collections.abc import Callable, Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any, Literal

import torch

from medmvl.data.collate import Collator
from medmvl.data.conversation import ConversationEncoder
from medmvl.data.images import ImageReadError, ImageTransform, load_image
from medmvl.data.schema import IMAGE3D_TOKEN, IMAGE_TOKEN, PLACEHOLDERS, Sample, Turn
from medmvl.data.volumes import VolumeOptions, VolumeTransform
from medmvl.models.vlm import MedVLM

Query = Sample | tuple[Sequence[str | os.PathLike] | str | os.PathLike | None, str]
"""A ``Sample`` or an ``(image path(s) or None, question)`` pair."""

_PLACEHOLDER = re.compile(f"(?:{re.escape(IMAGE3D_TOKEN)}|{re.escape(IMAGE_TOKEN)})" + r"[ \t]*\n?")


def as_sample(
    query: Query,
    index: int = 0,
    *,
    images3d: Sequence[str | os.PathLike] | str | os.PathLike | None = None,
) -> Sample:
    """A ``Sample`` for ``query``; a pair's question gets one placeholder line per image if it has none.

    ``images3d`` adds 3D volumes (``<image3d>\n`` per volume, before the 2D ones' ``<image>\n``).
    """
    if isinstance(query, Sample):
        return query
    images, question = query
    paths, volumes = _path_list(images), _path_list(images3d)
    for token, given in ((IMAGE_TOKEN, paths), (IMAGE3D_TOKEN, volumes)):
        if given and token not in question:
            question = f"{token}\n" * len(given) + question
        if question.count(token) != len(given):
            raise ValueError(
                f"question {index} has {question.count(token)} {token} placeholder(s) but "
                f"{len(given)} {'volume' if token == IMAGE3D_TOKEN else 'image'}(s); expected one per "
                f"{'volume' if token == IMAGE3D_TOKEN else 'image'}"
            )
    return Sample(
        str(index),
        (Turn("human", question),),
        tuple(str(p) for p in paths),
        tuple(str(p) for p in volumes),
        index=index,
    )


def _path_list(value: Sequence[str | os.PathLike] | str | os.PathLike | None) -> list[str | os.PathLike]:
    if value is None:
        return []
    return [value] if isinstance(value, (str, os.PathLike)) else list(value)


def strip_images(sample: Sample) -> Sample:
    """The same conversation without images or volumes and without their placeholders (and newline)."""
    turns = tuple(Turn(t.role, _PLACEHOLDER.sub("", t.text).strip()) for t in sample.turns)
    return Sample(sample.id, turns, (), (), sample.index, sample.source, sample.answer)


class Generator:
    """Answer questions about images with a :class:`MedVLM`.

    Args:
        model: The model; its tokenizer holds the chat template, its encoder the preprocessing.
        max_length: Longest prompt in tokens, image tokens included (longer prompts raise).
        format: ``chat`` (the tokenizer's chat template), ``plain`` (pre-training format) or ``medm_vl``
            (MedM-VL's prompt, for imported MedM-VL models).
        system_prompt: System message, as used in training (``None``: the template's default).
        volume_options: How volume files are read (``medmvl.data.volumes.VolumeOptions`` fields, as
            ``data.volume`` in training); the size, channels, mean/std and HU window come from the model.
    """

    def __init__(
        self,
        model: MedVLM,
        *,
        max_length: int = 8192,
        format: Literal["chat", "plain", "medm_vl"] = "chat",
        system_prompt: str | None = None,
        volume_options: VolumeOptions | Mapping[str, Any] | None = None,
    ) -> None:
        self.model = model
        self.tokenizer = model.tokenizer
        self.conversation = ConversationEncoder(
            self.tokenizer,
            image_token_counts=model.image_token_counts,
            max_length=max_length,
            format=format,
            system_prompt=system_prompt,
        )
        image_cfg, volume_cfg = model.image_config, model.volume_config  # None: no such tower
        self.transform: Callable[[Any], torch.Tensor] | None = None
        if image_cfg is not None:
            self.transform = ImageTransform.from_preprocess(image_cfg, train=False)
        self.volume_transform: Callable[[Path], torch.Tensor] | None = None
        if volume_cfg is not None:
            self.volume_transform = VolumeTransform.from_preprocess(volume_cfg, options=volume_options)
        self.collator = Collator(self.tokenizer.pad_token_id, padding_side="left")

    def prompt(
        self,
        sample: Sample,
        *,
        image_dir: str | os.PathLike | None = None,
        image3d_dir: str | os.PathLike | None = None,
        text_only: bool = False,
    ) -> dict[str, Any]:
        """One prompt: ``id``, ``input_ids`` [n], ``pixel_values`` [k, c, h, w] and ``pixel_values_3d``
        [k3, c, d, h, w] (each ``None`` without images / volumes).

        Relative paths resolve against ``image_dir`` (2D) / ``image3d_dir`` (3D), else the sample's
        annotation file folder.
        """
        if text_only:
            sample = strip_images(sample)
        default = Path(sample.source).parent if sample.source else Path(".")
        roots = {"image": image_dir, "image3d": image3d_dir}
        readers = {"image": self.load_image, "image3d": self.load_volume}
        out: dict[str, Any] = {"id": sample.id}
        for placeholder in PLACEHOLDERS:  # pixel_values [k, c, h, w], pixel_values_3d [k3, c, d, h, w]
            given, read = sample.media(placeholder.field), readers[placeholder.field]
            try:
                paths = _resolve(given, roots[placeholder.field], default)
                out[placeholder.pixel_key] = torch.stack([read(p) for p in paths]) if given else None
            except ImageReadError as err:  # VolumeReadError included
                raise type(err)(f"{sample.where()}: {err}") from err
        out["input_ids"] = self.conversation.encode_prompt(sample)  # after the media: a missing tower first
        return out

    def load_image(self, path: Path) -> torch.Tensor:
        """A 2D image preprocessed for the 2D tower: [c, h, w]."""
        if self.transform is None:
            raise ValueError(f"this model has no 2D image tower; cannot answer about image {str(path)!r}")
        return self.transform(load_image(path))

    def load_volume(self, path: Path) -> torch.Tensor:
        """A 3D volume preprocessed for the 3D tower: [c, d, h, w]."""
        if self.volume_transform is None:
            raise ValueError(
                f"this model has no 3D (image3d) tower; cannot answer about volume {str(path)!r}"
            )
        return self.volume_transform(path)

    def batch(self, prompts: Sequence[dict[str, Any]]) -> dict[str, Any]:
        """Left-pad prompts: ``input_ids`` / ``attention_mask`` [b, n], ``pixel_values`` [N, c, h, w] and
        ``pixel_values_3d`` [N3, c, d, h, w] (each ``None`` when no prompt has one)."""
        batch = self.collator(prompts)
        device = next(self.model.parameters()).device
        out = {k: batch[k].to(device) for k in ("input_ids", "attention_mask")}
        for placeholder in PLACEHOLDERS:
            pixels = batch[placeholder.pixel_key]
            dtype = None if pixels is None else self._tower_dtype(placeholder.token)
            out[placeholder.pixel_key] = None if pixels is None else pixels.to(device, dtype)
        return out

    def _tower_dtype(self, token: str) -> torch.dtype:
        encoder = getattr(self.model, self.model.towers[token][0])
        return next(encoder.parameters()).dtype

    @torch.inference_mode()
    def generate(
        self,
        queries: Iterable[Query],
        *,
        image_dir: str | os.PathLike | None = None,
        image3d_dir: str | os.PathLike | None = None,
        text_only: bool = False,
        batch_size: int = 8,
        max_new_tokens: int = 64,
        temperature: float = 0.0,
        top_p: float = 1.0,
        num_beams: int = 1,
        on_batch: Callable[[list[Sample], list[str]], None] | None = None,
        **generate_kwargs: Any,
    ) -> list[str]:
        """Answer every query, in order.

        Args:
            queries: ``Sample`` objects (a final ``gpt`` turn is dropped) or ``(images, question)`` pairs.
            image_dir: Folder of relative image paths (default: each sample's annotation file folder).
            image3d_dir: Folder of relative volume paths (default: the same).
            text_only: Drop the images and their placeholders (the no-image baseline).
            batch_size: Prompts per ``generate`` call.
            max_new_tokens: Longest answer in tokens.
            temperature: ``0`` is greedy; above ``0`` samples with ``temperature`` and ``top_p``.
            top_p: Nucleus sampling mass (only when sampling).
            num_beams: Beam search width (``1``: none).
            on_batch: Called after each batch with its samples and answers (progress, incremental saves).
            **generate_kwargs: Passed on to ``transformers``' ``generate``.

        Returns:
            The decoded answers, special tokens removed, surrounding whitespace stripped.
        """
        samples = [as_sample(q, i) for i, q in enumerate(queries)]
        kwargs: dict[str, Any] = {"max_new_tokens": max_new_tokens, "num_beams": num_beams, "use_cache": True}
        if temperature > 0:
            kwargs.update(do_sample=True, temperature=temperature, top_p=top_p)
        else:
            kwargs.update(do_sample=False, temperature=None, top_p=None, top_k=None)
        kwargs.update(generate_kwargs)
        was_training = self.model.training
        self.model.eval()
        answers: list[str] = []
        try:
            for start in range(0, len(samples), batch_size):
                chunk = samples[start : start + batch_size]
                prompts = [
                    self.prompt(s, image_dir=image_dir, image3d_dir=image3d_dir, text_only=text_only)
                    for s in chunk
                ]
                new_tokens = self.model.generate(**self.batch(prompts), **kwargs)  # [b, t_new]
                decoded = self.tokenizer.batch_decode(new_tokens, skip_special_tokens=True)
                answers += [a.strip() for a in decoded]
                if on_batch is not None:
                    on_batch(chunk, answers[start:])
        finally:
            self.model.train(was_training)
        return answers

    def answer(
        self, images: Sequence[str | os.PathLike] | str | os.PathLike | None, question: str, **kwargs: Any
    ) -> str:
        """Answer one question about ``images`` (a path, a list of paths, or ``None``)."""
        return self.generate([(images, question)], **kwargs)[0]


def _resolve(paths: Sequence[str], folder: str | os.PathLike | None, default: Path) -> list[Path]:
    root = Path(folder) if folder is not None else default
    return [p if p.is_absolute() else root / p for p in (Path(q).expanduser() for q in paths)]
