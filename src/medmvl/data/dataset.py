"""A map-style dataset over one annotation file: validated, tokenized and path-checked when built.

Everything that can be checked without decoding pixels is checked in ``__init__`` (schema, chat template,
length, image files), so a broken sample fails in seconds instead of mid-epoch. With ``on_error="skip"``
bad samples are dropped, counted per reason, and logged once as a summary on ``medmvl.data``; nothing
is dropped silently.
"""

from __future__ import annotations

import functools
import logging
import os
from collections import defaultdict
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import torch
from torch.utils.data import Dataset

from medmvl.data.conversation import ConversationEncoder, SampleTooLongError
from medmvl.data.images import ImageReadError, ImageTransform, load_image
from medmvl.data.media import MediaPathError, resolve_media_path
from medmvl.data.sampling.modality import modality
from medmvl.data.schema import (
    PLACEHOLDERS,
    AnnotationError,
    Problem,
    Sample,
    raise_on_errors,
    read_annotations,
)
from medmvl.data.volumes import VolumeTransform

log = logging.getLogger("medmvl.data")


@dataclass(frozen=True)
class _Item:
    sample: Sample
    input_ids: torch.Tensor  # [n]
    labels: torch.Tensor  # [n]
    media: dict[str, tuple[Path, ...]]  # annotation field (image, image3d) -> resolved paths

    @property
    def images(self) -> tuple[Path, ...]:
        return self.media.get("image", ())

    @property
    def volumes(self) -> tuple[Path, ...]:
        return self.media.get("image3d", ())


class AnnotationDataset(Dataset):
    """Samples of one MedM-VL/LLaVA annotation file, tokenized, with 2D images and 3D volumes loaded on access.

    Args:
        annotations: The annotation JSON file.
        image_dir: Folder that relative image paths are resolved against (default: the annotation
            file's folder). Absolute paths are used as they are; a relative path that leaves the folder
            through ``..`` is an error.
        conversation: Tokenizes each sample (chat template, label mask, image token expansion).
        transform: Maps a loaded image to a FloatTensor [c, h, w] (``None``: the model has no 2D tower,
            and a sample with ``image`` is an error).
        on_error: ``raise`` on the first bad sample, or ``skip`` bad samples (listed in ``skipped``).
        require_answer: Whether every conversation must end with a ``gpt`` turn.
        image3d_dir: Folder of relative ``image3d`` paths (default: the annotation file's folder); a path
            may be a file or a DICOM series folder.
        volume_transform: Maps a volume path to a FloatTensor [c, d, h, w] (``None``: the model has no 3D
            tower, and a sample with ``image3d`` is an error).

    Attributes:
        skipped: Problems that removed a sample at construction (``on_error="skip"``).
        read_failures: Samples whose image could not be read in ``__getitem__`` (this process only; with
            DataLoader workers each worker counts its own and logs a warning per failure).
    """

    def __init__(
        self,
        annotations: str | os.PathLike,
        *,
        image_dir: str | os.PathLike | None = None,
        conversation: ConversationEncoder,
        transform: ImageTransform | None,
        on_error: Literal["raise", "skip"] = "raise",
        require_answer: bool = True,
        image3d_dir: str | os.PathLike | None = None,
        volume_transform: VolumeTransform | None = None,
    ) -> None:
        if on_error not in ("raise", "skip"):
            raise ValueError(f"on_error must be 'raise' or 'skip', got {on_error!r}")
        self.source = str(annotations)
        self.image_dir = Path(image_dir) if image_dir is not None else Path(annotations).parent
        self.image3d_dir = Path(image3d_dir) if image3d_dir is not None else Path(annotations).parent
        self.transform = transform
        self.volume_transform = volume_transform
        # per placeholder field: where relative paths resolve, and file -> tensor (None: no such tower)
        self.roots = {"image": self.image_dir, "image3d": self.image3d_dir}
        self.readers: dict[str, Callable[[Path], torch.Tensor] | None] = {
            "image": None if transform is None else functools.partial(_read_image, transform),
            "image3d": volume_transform,
        }
        self.on_error = on_error
        self.read_failures = 0
        samples, problems = read_annotations(annotations, require_answer=require_answer)
        _log_warnings([p for p in problems if p.severity == "warning"], self.source)
        errors = [p for p in problems if p.severity == "error"]
        if on_error == "raise":
            raise_on_errors(errors)
        self.skipped: list[Problem] = list(errors)
        self.items: list[_Item] = []
        for sample in samples:
            try:
                self.items.append(self._prepare(sample, conversation))
            except AnnotationError as err:
                if on_error == "raise":
                    raise
                code = "too_long" if isinstance(err, SampleTooLongError) else getattr(err, "code", "encode")
                field = getattr(err, "field", "conversations")
                message = getattr(err, "detail", None) or str(err).removeprefix(f"{sample.where()}: ")
                self.skipped.append(Problem(self.source, sample.index, sample.id, field, message, code))
        total = len(samples) + len({p.index for p in errors if p.index is not None})
        if self.skipped:
            log.warning("%s", summarize(self.skipped, total=total, source=self.source))
        if not self.items:  # an empty loader would make a run that trains on nothing and "succeeds"
            reason = summarize(self.skipped, total=total, source=self.source) if self.skipped else ""
            raise AnnotationError(f"{self.source}: no usable samples; {reason or 'the file holds none'}")

    def _prepare(self, sample: Sample, conversation: ConversationEncoder) -> _Item:
        media = {}
        for field in (p.field for p in PLACEHOLDERS):
            if sample.media(field) and self.readers[field] is None:
                raise _SampleError(sample, field, NO_TOWER[field], field)
            media[field] = tuple(
                self._resolve(p, k, sample, field) for k, p in enumerate(sample.media(field))
            )
        encoded = conversation.encode(sample)
        return _Item(sample, encoded["input_ids"], encoded["labels"], media)

    def _resolve(self, path: str, k: int, sample: Sample, key: str) -> Path:
        try:  # the same rule as medmvl-data check --images
            return resolve_media_path(path, self.roots[key], key)
        except MediaPathError as err:
            raise _SampleError(sample, f"{key}[{k}]", str(err), err.code) from err

    @property
    def groups(self) -> list[str]:
        """The modality group of every item (``text``, ``2d``, ``3d``, ``2d+3d``), for batching by modality."""
        return [modality(len(item.images), len(item.volumes)) for item in self.items]

    def reseed(self, seed: int) -> None:
        """Seed the volume augmentation's own generator (MONAI ``Randomizable``) before producing a sample."""
        if self.volume_transform is not None:
            self.volume_transform.reseed(seed)

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, index: int) -> dict[str, Any] | None:
        """Return ``id``, ``input_ids`` [n], ``labels`` [n], ``pixel_values`` [k, c, h, w] and
        ``pixel_values_3d`` [k3, c, d, h, w] (each ``None`` without images / volumes); ``None`` for a sample
        whose image or volume cannot be read when ``on_error="skip"``."""
        item = self.items[index]
        try:  # pixel_values [k, c, h, w], pixel_values_3d [k3, c, d, h, w]
            pixels = {p.pixel_key: self._stack(item, p.field, item.media[p.field]) for p in PLACEHOLDERS}
        except ImageReadError as err:
            if self.on_error == "raise":
                raise
            self.read_failures += 1
            log.warning("skipping %s", err)
            return None
        return {
            "id": item.sample.id,
            "input_ids": item.input_ids,
            "labels": item.labels,
            **pixels,
        }

    def _stack(self, item: _Item, key: str, paths: tuple[Path, ...]) -> torch.Tensor | None:
        if not paths:
            return None
        out = []
        for k, path in enumerate(paths):
            try:
                out.append(self.readers[key](path))  # [c, (d,) h, w]
            except ImageReadError as err:
                raise type(err)(f"{item.sample.where()}, field '{key}[{k}]': {err}") from err
        return torch.stack(out)


def _read_image(transform: ImageTransform, path: Path) -> torch.Tensor:
    """A 2D file -> ``[c, h, w]`` (module level, so DataLoader workers can pickle the reader)."""
    return transform(load_image(path))


NO_TOWER = {
    "image": "2D images need a 2D encoder; this model has only a 3D one",
    "image3d": "3D volumes need a 3D encoder (encoder3d=... or a 3D encoder)",
}


class _SampleError(AnnotationError):
    def __init__(self, sample: Sample, field: str, message: str, code: str) -> None:
        super().__init__(f"{sample.where()}, field {field!r}: {message}")
        self.field, self.detail, self.code = field, message, code


def summarize(problems: Sequence[Problem], *, total: int, source: str, first: int = 3) -> str:
    """One-paragraph summary: how many samples were dropped, per reason, with the first few ids."""
    by_code: dict[str, list[Problem]] = defaultdict(list)
    for p in problems:
        by_code[p.code].append(p)
    parts = [
        f"{code}: {len(ps)} (e.g. {', '.join(repr(p.id) for p in ps[:first])}; first: {ps[0].message})"
        for code, ps in sorted(by_code.items(), key=lambda kv: -len(kv[1]))
    ]
    samples = len({p.index for p in problems})
    return f"{source}: skipped {samples} of {total} samples; " + "; ".join(parts)


def _log_warnings(warnings: Sequence[Problem], source: str) -> None:
    by_field: dict[str, int] = defaultdict(int)
    for p in warnings:
        by_field[p.field] += 1
    if by_field:
        log.warning("%s: ignored unknown keys %s", source, dict(by_field))
