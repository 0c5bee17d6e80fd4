"""Batched answer generation with a :class:`MedVLM`: samples in, decoded answers out.

Why a class: a prompt must be built exactly as in training (the LLM's chat template through
``ConversationEncoder.encode_prompt``, each ``<image>`` expanded to the connector's token count, images
preprocessed by the encoder's own evaluation transform), and batches must be left-padded so every row's
new tokens start at the same position. ``Generator`` owns those three pieces so callers (the ``infer.py``
CLI, the demo report, notebooks) only pass samples. Decoding is ``transformers``' ``generate`` with its KV
cache; sampling and beam search are its own options passed through.

``text_only=True`` asks the same model the same questions with the images and their ``<image>``
placeholders removed: the baseline that shows how much of an answer comes from the image.
"""

from __future__ import annotations

import os
import re
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import Any, Literal

import torch

from medmvl.data.collate import Collator
from medmvl.data.conversation import ConversationEncoder
from medmvl.data.images import ImageReadError, ImageTransform, load_image
from medmvl.data.schema import IMAGE_TOKEN, Sample, Turn
from medmvl.models.vlm import MedVLM

Query = Sample | tuple[Sequence[str | os.PathLike] | str | os.PathLike | None, str]
"""A ``Sample`` or an ``(image path(s) or None, question)`` pair."""

_PLACEHOLDER = re.compile(re.escape(IMAGE_TOKEN) + r"[ \t]*\n?")


def as_sample(query: Query, index: int = 0) -> Sample:
    """A ``Sample`` for ``query``; a pair's question gets one ``<image>\\n`` per image if it has none."""
    if isinstance(query, Sample):
        return query
    images, question = query
    paths = [] if images is None else [images] if isinstance(images, (str, os.PathLike)) else list(images)
    if paths and IMAGE_TOKEN not in question:
        question = f"{IMAGE_TOKEN}\n" * len(paths) + question
    if question.count(IMAGE_TOKEN) != len(paths):
        raise ValueError(
            f"question {index} has {question.count(IMAGE_TOKEN)} {IMAGE_TOKEN} placeholder(s) but "
            f"{len(paths)} image(s); expected one per image"
        )
    return Sample(str(index), (Turn("human", question),), tuple(str(p) for p in paths), index=index)


def strip_images(sample: Sample) -> Sample:
    """The same conversation without images and without ``<image>`` placeholders (and their newline)."""
    turns = tuple(Turn(t.role, _PLACEHOLDER.sub("", t.text).strip()) for t in sample.turns)
    return Sample(sample.id, turns, (), (), sample.index, sample.source, sample.answer)


class Generator:
    """Answer questions about images with a :class:`MedVLM`.

    Args:
        model: The model; its tokenizer holds the chat template, its encoder the preprocessing.
        max_length: Longest prompt in tokens, image tokens included (longer prompts raise).
        format: ``chat`` (the tokenizer's chat template) or ``plain`` (pre-training format).
        system_prompt: System message, as used in training (``None``: the template's default).
    """

    def __init__(
        self,
        model: MedVLM,
        *,
        max_length: int = 8192,
        format: Literal["chat", "plain"] = "chat",
        system_prompt: str | None = None,
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
        pre = model.encoder.preprocess
        self.transform = ImageTransform(
            pre["image_size"], pre["image_mean"], pre["image_std"], channels=pre["channels"], train=False
        )
        self.collator = Collator(self.tokenizer.pad_token_id, padding_side="left")

    def prompt(
        self, sample: Sample, *, image_dir: str | os.PathLike | None = None, text_only: bool = False
    ) -> dict[str, Any]:
        """One prompt: ``id``, ``input_ids`` [n] and ``pixel_values`` [k, c, h, w] (``None`` without images).

        Relative image paths resolve against ``image_dir``, else the sample's annotation file folder.
        """
        if sample.images3d:
            raise ValueError(f"{sample.where()}: 3D volumes (image3d) are not supported by this generator")
        if text_only:
            sample = strip_images(sample)
        if image_dir is not None:
            root = Path(image_dir)
        else:
            root = Path(sample.source).parent if sample.source else Path(".")
        pixels = None
        if sample.images:
            paths = [
                p if p.is_absolute() else root / p for p in (Path(q).expanduser() for q in sample.images)
            ]
            try:
                pixels = torch.stack([self.transform(load_image(p)) for p in paths])  # [k, c, h, w]
            except ImageReadError as err:
                raise ImageReadError(f"{sample.where()}: {err}") from err
        return {"id": sample.id, "input_ids": self.conversation.encode_prompt(sample), "pixel_values": pixels}

    def batch(self, prompts: Sequence[dict[str, Any]]) -> dict[str, Any]:
        """Left-pad prompts: ``input_ids`` / ``attention_mask`` [b, n], ``pixel_values`` [N, c, h, w] | None."""
        batch = self.collator(prompts)
        param = next(self.model.parameters())
        enc_dtype = next(self.model.encoder.parameters()).dtype
        out = {k: batch[k].to(param.device) for k in ("input_ids", "attention_mask")}
        pixels = batch["pixel_values"]
        out["pixel_values"] = None if pixels is None else pixels.to(param.device, enc_dtype)
        return out

    @torch.inference_mode()
    def generate(
        self,
        queries: Iterable[Query],
        *,
        image_dir: str | os.PathLike | None = None,
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
                prompts = [self.prompt(s, image_dir=image_dir, text_only=text_only) for s in chunk]
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
