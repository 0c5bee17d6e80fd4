"""A map-style dataset over one annotation file: validated, tokenized and path-checked when built.

Everything that can be checked without decoding pixels is checked in ``__init__`` (schema, chat template,
length, image files), so a broken sample fails in seconds instead of mid-epoch. With ``on_error="skip"``
bad samples are dropped, counted per reason, and logged once as a summary on ``medmvl.data``; nothing
is dropped silently.
"""

from __future__ import annotations

import logging
import os
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import torch
from torch.utils.data import Dataset

from medmvl.data.conversation import ConversationEncoder, SampleTooLongError
from medmvl.data.images import ImageReadError, ImageTransform, load_image
from medmvl.data.schema import AnnotationError, Problem, Sample, raise_on_errors, read_annotations

log = logging.getLogger("medmvl.data")


@dataclass(frozen=True)
class _Item:
    sample: Sample
    input_ids: torch.Tensor  # [n]
    labels: torch.Tensor  # [n]
    images: tuple[Path, ...]


class AnnotationDataset(Dataset):
    """Samples of one MedM-VL/LLaVA annotation file, tokenized, with 2D images loaded on access.

    Args:
        annotations: The annotation JSON file.
        image_dir: Folder that relative image paths are resolved against (default: the annotation
            file's folder). Absolute paths are used as they are; a relative path that leaves the folder
            through ``..`` is an error.
        conversation: Tokenizes each sample (chat template, label mask, image token expansion).
        transform: Maps a loaded image to a FloatTensor [c, h, w].
        on_error: ``raise`` on the first bad sample, or ``skip`` bad samples (listed in ``skipped``).
        require_answer: Whether every conversation must end with a ``gpt`` turn.

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
        transform: ImageTransform,
        on_error: Literal["raise", "skip"] = "raise",
        require_answer: bool = True,
    ) -> None:
        if on_error not in ("raise", "skip"):
            raise ValueError(f"on_error must be 'raise' or 'skip', got {on_error!r}")
        self.source = str(annotations)
        self.image_dir = Path(image_dir) if image_dir is not None else Path(annotations).parent
        self.transform = transform
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
        if self.skipped:
            total = len(samples) + len({p.index for p in errors})
            log.warning("%s", summarize(self.skipped, total=total, source=self.source))

    def _prepare(self, sample: Sample, conversation: ConversationEncoder) -> _Item:
        if sample.images3d:
            raise _SampleError(
                sample, "image3d", "3D volumes need the 3D data module; this one reads 2D images", "image3d"
            )
        paths = tuple(self._resolve(p, k, sample) for k, p in enumerate(sample.images))
        encoded = conversation.encode(sample)
        return _Item(sample, encoded["input_ids"], encoded["labels"], paths)

    def _resolve(self, path: str, k: int, sample: Sample) -> Path:
        candidate = Path(path).expanduser()
        if not candidate.is_absolute():
            if os.path.normpath(path).split(os.sep)[0] == "..":
                raise _SampleError(
                    sample,
                    f"image[{k}]",
                    f"path {path!r} leaves image_dir {str(self.image_dir)!r}"
                    " through '..'; expected a path inside it or an absolute path",
                    "path_escape",
                )
            candidate = self.image_dir / candidate
        if not candidate.is_file():
            raise _SampleError(
                sample, f"image[{k}]", f"image file {str(candidate)!r} does not exist", "missing_image"
            )
        return candidate

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, index: int) -> dict[str, Any] | None:
        """Return ``id``, ``input_ids`` [n], ``labels`` [n] and ``pixel_values`` [k, c, h, w] (``None``
        without images); ``None`` for a sample whose image cannot be read when ``on_error="skip"``."""
        item = self.items[index]
        pixel_values = None
        if item.images:
            try:
                pixel_values = torch.stack(
                    [self.transform(load_image(p)) for p in item.images]
                )  # [k, c, h, w]
            except ImageReadError as err:
                if self.on_error == "raise":
                    raise ImageReadError(f"{item.sample.where()}: {err}") from err
                self.read_failures += 1
                log.warning("skipping %s: %s", item.sample.where(), err)
                return None
        return {
            "id": item.sample.id,
            "input_ids": item.input_ids,
            "labels": item.labels,
            "pixel_values": pixel_values,
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
