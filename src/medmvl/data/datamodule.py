"""Lightning DataModule for 2D MedM-VL/LLaVA annotation files.

The Hydra node (``conf/data/llava_2d.yaml``) is ``_partial_``: it holds only plain values, and the
training CLI completes it with the parts built from the model config — the tokenizer, the number of
tokens each image placeholder expands to (``connector.num_tokens``), and the encoder's preprocessing —
so image size and normalisation cannot drift from the encoder (STYLE.md: dimensions flow from built
objects).
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from typing import Any, Literal

import lightning as L
from torch.utils.data import DataLoader
from transformers import PreTrainedTokenizerBase

from medmvl.data.collate import Collator
from medmvl.data.conversation import ConversationEncoder
from medmvl.data.dataset import AnnotationDataset
from medmvl.data.images import ImageTransform

IMAGE_CONFIG_KEYS = ("image_size", "image_mean", "image_std", "channels")


class MedVLDataModule(L.LightningDataModule):
    """Train/val loaders over annotation JSON files with 2D images.

    Args:
        annotations: Training annotation file.
        val_annotations: Validation annotation file (``None``: no validation).
        image_dir: Folder of relative image paths (default: each annotation file's folder).
        max_length: Longest token sequence, image tokens included.
        batch_size: Training batch size.
        val_batch_size: Validation batch size (default: ``batch_size``).
        num_workers: DataLoader workers (persistent when > 0).
        on_error: ``raise`` on a bad sample or ``skip`` it (counted and logged on ``medmvl.data``).
        format: ``chat`` (the LLM's chat template) or ``plain`` (image-caption pre-training).
        system_prompt: System message for ``chat`` (``None``: the template's default, if any).
        augment: Training augmentation, fields of ``medmvl.data.images.Augment`` (``None``: none).
        tokenizer: Built by the CLI with ``medmvl.models.tokenizer.load_tokenizer``.
        image_token_counts: Placeholder -> tokens per image, e.g. ``{"<image>": connector.num_tokens}``.
        image_config: The encoder's preprocessing: ``image_size``, ``image_mean``, ``image_std``,
            ``channels``.
    """

    def __init__(
        self,
        annotations: str | os.PathLike,
        val_annotations: str | os.PathLike | None = None,
        image_dir: str | os.PathLike | None = None,
        max_length: int = 2048,
        batch_size: int = 4,
        val_batch_size: int | None = None,
        num_workers: int = 0,
        on_error: Literal["raise", "skip"] = "raise",
        format: Literal["chat", "plain"] = "chat",
        system_prompt: str | None = None,
        augment: Mapping[str, Any] | None = None,
        *,
        tokenizer: PreTrainedTokenizerBase,
        image_token_counts: Mapping[str, int],
        image_config: Mapping[str, Any],
    ) -> None:
        super().__init__()
        missing = [k for k in IMAGE_CONFIG_KEYS if k not in image_config]
        if missing:
            raise ValueError(f"image_config lacks {missing}; expected keys {list(IMAGE_CONFIG_KEYS)}")
        self.save_hyperparameters(ignore=["tokenizer"])
        self.tokenizer = tokenizer
        self.conversation = ConversationEncoder(
            tokenizer,
            image_token_counts=dict(image_token_counts),
            max_length=max_length,
            format=format,
            system_prompt=system_prompt,
        )
        self.collator = Collator(tokenizer.pad_token_id)
        self.train_set: AnnotationDataset | None = None
        self.val_set: AnnotationDataset | None = None

    def transform(self, train: bool) -> ImageTransform:
        """The encoder's preprocessing, with ``augment`` when ``train``."""
        cfg = self.hparams.image_config
        return ImageTransform(
            cfg["image_size"],
            cfg["image_mean"],
            cfg["image_std"],
            channels=cfg["channels"],
            train=train,
            augment=self.hparams.augment if train else None,
        )

    def _dataset(self, annotations: str | os.PathLike, train: bool) -> AnnotationDataset:
        return AnnotationDataset(
            annotations,
            image_dir=self.hparams.image_dir,
            conversation=self.conversation,
            transform=self.transform(train),
            on_error=self.hparams.on_error,
        )

    def setup(self, stage: str | None = None) -> None:
        """Build (once) the datasets the stage needs; validation and tokenization happen here."""
        if stage in ("fit", None) and self.train_set is None:
            self.train_set = self._dataset(self.hparams.annotations, train=True)
        if stage in ("fit", "validate", None) and self.val_set is None and self.hparams.val_annotations:
            self.val_set = self._dataset(self.hparams.val_annotations, train=False)

    def _loader(self, dataset: AnnotationDataset, batch_size: int, shuffle: bool) -> DataLoader:
        workers = self.hparams.num_workers
        return DataLoader(
            dataset,
            batch_size=batch_size,
            shuffle=shuffle,
            num_workers=workers,
            collate_fn=self.collator,
            persistent_workers=workers > 0,
        )

    def train_dataloader(self) -> DataLoader:
        """Shuffled training batches (see ``Collator`` for the batch layout)."""
        if self.train_set is None:
            self.setup("fit")
        return self._loader(self.train_set, self.hparams.batch_size, shuffle=True)

    def val_dataloader(self) -> DataLoader | list:
        """Validation batches in file order; an empty list when there is no validation file."""
        if self.val_set is None and self.hparams.val_annotations:
            self.setup("validate")
        if self.val_set is None:
            return []
        return self._loader(
            self.val_set, self.hparams.val_batch_size or self.hparams.batch_size, shuffle=False
        )
