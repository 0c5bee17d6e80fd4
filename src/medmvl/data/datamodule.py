"""Lightning DataModule for MedM-VL/LLaVA annotation files with 2D images and/or 3D volumes.

The Hydra node (``conf/data/llava_2d.yaml``, ``llava_3d.yaml``) is ``_partial_``: it holds only plain
values, and the training CLI completes it with the parts built from the model config — the tokenizer, the
number of tokens each placeholder expands to (``connector.num_tokens`` per tower), and each tower's
preprocessing — so image/volume size and normalisation cannot drift from the encoders (STYLE.md:
dimensions flow from built objects).

Batches hold one modality (``text``, ``2d``, ``3d`` or ``2d+3d``, see :mod:`medmvl.data.sampling.modality`) whenever a
file mixes them, with the same modality on every rank at every step.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Mapping
from typing import Any, Literal

import lightning as L
import torch
from torch.utils.data import DataLoader
from transformers import PreTrainedTokenizerBase

from medmvl.data.collate import Collator
from medmvl.data.conversation import ConversationEncoder
from medmvl.data.dataset import AnnotationDataset
from medmvl.data.images import ImageTransform
from medmvl.data.packing import PackingCollator
from medmvl.data.sampling.bucketing import LengthBuckets
from medmvl.data.sampling.modality import BatchFetch, ModalityBatchSampler
from medmvl.data.sampling.resumable import ResumableLoader
from medmvl.data.volumes import VolumeTransform

IMAGE_CONFIG_KEYS = ("image_size", "image_mean", "image_std", "channels")
VOLUME_CONFIG_KEYS = ("volume_size", "image_mean", "image_std", "channels")
log = logging.getLogger("medmvl.data")


class MedVLDataModule(L.LightningDataModule):
    """Train/val loaders over annotation JSON files with 2D images (``image``) and 3D volumes (``image3d``).

    Args:
        annotations: Training annotation file.
        val_annotations: Validation annotation file (``None``: no validation).
        image_dir: Folder of relative image paths (default: each annotation file's folder).
        max_length: Longest token sequence, image tokens included.
        batch_size: Training batch size.
        val_batch_size: Validation batch size (default: ``batch_size``).
        num_workers: DataLoader workers (persistent when > 0).
        on_error: ``raise`` on a bad sample or ``skip`` it (counted and logged on ``medmvl.data``).
        format: ``chat`` (the LLM's chat template), ``plain`` (image-caption pre-training) or ``medm_vl``
            (MedM-VL's prompt: fine-tuning a model imported from MedM-VL as MedM-VL would).
        system_prompt: System message for ``chat`` (``None``: the template's default, if any).
        augment: Training augmentation, fields of ``medmvl.data.images.Augment`` (``None``: none).
        image3d_dir: Folder of relative ``image3d`` paths (default: each annotation file's folder).
        volume: How volumes are read, fields of ``medmvl.data.volumes.VolumeOptions`` (intensity kind,
            HU window override, axis layout, foreground crop, cache folder); ``None``: defaults.
        augment3d: Training augmentation of volumes, fields of ``medmvl.data.volumes.VolumeAugment``.
        packing: Pack several samples into each row, without padding between them (see
            :mod:`medmvl.data.packing`); ``False``: one sample per row, right-padded.
        pack_length: Tokens per packed row; ``None``: the batch's longest sample.
        bucket_by_length: Batch training samples of similar length together (see
            :mod:`medmvl.data.sampling.bucketing`; files of one modality; mixed files batch by modality).
        tokenizer: Built by the CLI with ``medmvl.models.llm.tokenizer.load_tokenizer``.
        image_token_counts: Placeholder -> tokens per image, e.g. ``{"<image>": 64, "<image3d>": 256}``.
        image_config: The 2D encoder's preprocessing (``image_size``, ``image_mean``, ``image_std``,
            ``channels``); ``None`` when the model has no 2D tower.
        volume_config: The 3D encoder's preprocessing (``volume_size``, ``image_mean``, ``image_std``,
            ``channels``, optional ``hu_window``); ``None`` when the model has no 3D tower.
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
        format: Literal["chat", "plain", "medm_vl"] = "chat",
        system_prompt: str | None = None,
        augment: Mapping[str, Any] | None = None,
        image3d_dir: str | os.PathLike | None = None,
        volume: Mapping[str, Any] | None = None,
        augment3d: Mapping[str, Any] | None = None,
        packing: bool = False,
        pack_length: int | None = None,
        bucket_by_length: bool = False,
        *,
        tokenizer: PreTrainedTokenizerBase,
        image_token_counts: Mapping[str, int],
        image_config: Mapping[str, Any] | None,
        volume_config: Mapping[str, Any] | None = None,
    ) -> None:
        super().__init__()
        for name, config, keys in (
            ("image_config", image_config, IMAGE_CONFIG_KEYS),
            ("volume_config", volume_config, VOLUME_CONFIG_KEYS),
        ):
            missing = [k for k in keys if config is not None and k not in config]
            if missing:
                raise ValueError(f"{name} lacks {missing}; expected keys {list(keys)}")
        self.save_hyperparameters(ignore=["tokenizer"])
        self.tokenizer = tokenizer
        self.conversation = ConversationEncoder(
            tokenizer,
            image_token_counts=dict(image_token_counts),
            max_length=max_length,
            format=format,
            system_prompt=system_prompt,
        )
        self.collator = (
            PackingCollator(tokenizer.pad_token_id, pack_length)
            if packing
            else Collator(tokenizer.pad_token_id)
        )
        self.train_set: AnnotationDataset | None = None
        self.val_set: AnnotationDataset | None = None

    def transform(self, train: bool) -> ImageTransform | None:
        """The 2D encoder's preprocessing, with ``augment`` when ``train`` (``None``: no 2D tower)."""
        cfg = self.hparams.image_config
        if cfg is None:
            return None
        return ImageTransform.from_preprocess(
            cfg, train=train, augment=self.hparams.augment if train else None
        )

    def volume_transform(self, train: bool) -> VolumeTransform | None:
        """The 3D encoder's preprocessing, with ``augment3d`` when ``train`` (``None``: no 3D tower)."""
        cfg = self.hparams.volume_config
        if cfg is None:
            return None
        augment = self.hparams.augment3d if train else None
        return VolumeTransform.from_preprocess(cfg, options=self.hparams.volume, train=train, augment=augment)

    def _dataset(self, annotations: str | os.PathLike, train: bool) -> AnnotationDataset:
        return AnnotationDataset(
            annotations,
            image_dir=self.hparams.image_dir,
            conversation=self.conversation,
            transform=self.transform(train),
            on_error=self.hparams.on_error,
            image3d_dir=self.hparams.image3d_dir,
            volume_transform=self.volume_transform(train),
        )

    def setup(self, stage: str | None = None) -> None:
        """Build (once) the datasets the stage needs; validation and tokenization happen here."""
        if stage in ("fit", None) and self.train_set is None:
            self.train_set = self._dataset(self.hparams.annotations, train=True)
        if stage in ("fit", "validate", None) and self.val_set is None and self.hparams.val_annotations:
            self.val_set = self._dataset(self.hparams.val_annotations, train=False)

    def _grouped_loader(self, dataset: AnnotationDataset, batch_size: int, shuffle: bool) -> DataLoader:
        """Batches of one modality each, the same modality on every rank at every step (see ``sampler``)."""
        trainer, workers, seed = self.trainer, self.hparams.num_workers, self._seed()
        sampler = ModalityBatchSampler(
            dataset.groups,
            batch_size,
            shuffle=shuffle,
            seed=seed,
            num_replicas=trainer.world_size if trainer is not None else 1,
            rank=trainer.global_rank if trainer is not None else 0,
        )
        return DataLoader(
            BatchFetch(dataset),
            sampler=sampler,
            batch_size=None,  # the sampler yields whole batches
            num_workers=workers,
            collate_fn=self.collator,
            persistent_workers=workers > 0,
            generator=torch.Generator().manual_seed(seed),  # iterators must not draw from the global RNG
        )

    @staticmethod
    def _seed() -> int:
        return int(os.environ.get("PL_GLOBAL_SEED", "0"))  # set by seed_everything

    def train_dataloader(self) -> DataLoader:
        """Shuffled training batches (see ``Collator`` for the batch layout).

        One modality in the file: a :class:`~medmvl.data.sampling.resumable.ResumableLoader`: the order and
        augmentations follow from the run's seed (``seed_everything`` sets ``PL_GLOBAL_SEED``), and a resumed
        run continues mid-epoch exactly. Several modalities (e.g. 2D and 3D samples, or text-only samples
        among them): batches grouped by modality (``ModalityBatchSampler``); a resumed run restarts its
        epoch.
        """
        if self.train_set is None:
            self.setup("fit")
        groups = set(self.train_set.groups)
        if len(groups) > 1:
            log.info("%s mixes %s samples: one modality per batch", self.train_set.source, sorted(groups))
            if self.hparams.bucket_by_length:
                log.warning("data.bucket_by_length is not applied to a file that mixes modalities")
            return self._grouped_loader(self.train_set, self.hparams.batch_size, shuffle=True)
        workers = self.hparams.num_workers
        trainer = self.trainer
        return ResumableLoader(
            self.train_set,
            batch_size=self.hparams.batch_size,
            shuffle=True,
            seed=self._seed(),
            num_replicas=trainer.world_size if trainer is not None else 1,
            rank=trainer.global_rank if trainer is not None else 0,
            num_workers=workers,
            collate_fn=self.collator,
            persistent_workers=workers > 0,
            arrange=self._buckets(),
        )

    def _buckets(self) -> LengthBuckets | None:
        """Length buckets of the training set under ``bucket_by_length`` (else ``None``)."""
        if not self.hparams.bucket_by_length:
            return None
        lengths = [len(item.input_ids) for item in self.train_set.items]
        return LengthBuckets(lengths, self.hparams.batch_size, seed=self._seed())

    def val_dataloader(self) -> DataLoader | list:
        """Validation batches in file order, grouped by modality; ``[]`` when there is no validation file."""
        if self.val_set is None and self.hparams.val_annotations:
            self.setup("validate")
        if self.val_set is None:
            return []
        batch_size = self.hparams.val_batch_size or self.hparams.batch_size
        return self._grouped_loader(self.val_set, batch_size, shuffle=False)
