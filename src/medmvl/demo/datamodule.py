"""The demo data as a LightningDataModule: ``prepare_data`` builds the real-scan set (once, cached)."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from medmvl.data.datamodule import MedVLDataModule
from medmvl.demo.build_2d import build_demo_2d


class DemoDataModule(MedVLDataModule):
    """:class:`MedVLDataModule` over ``<root>/train.json`` and ``<root>/val.json`` built by ``build_demo_2d``.

    Args:
        root: build folder (``${paths.cache_dir}/demo_2d``); reused when it holds the same build.
        seed, n_train, n_val, image_size, turns, n_reading: build parameters (see :func:`medmvl.demo.build_2d.build_demo_2d`).
        train_file, val_file: the build's training and held-out annotation files.
        **kwargs: every other :class:`MedVLDataModule` argument (batch size, max length, built parts...).
    """

    def __init__(
        self,
        root: str | os.PathLike,
        *,
        seed: int = 0,
        n_train: int = 3000,
        n_val: int = 400,
        image_size: int = 128,
        turns: int = 4,
        n_reading: int = 0,
        train_file: str = "train.json",
        val_file: str = "val.json",
        **kwargs: Any,
    ) -> None:
        self.root = Path(root)
        self.train_file = train_file
        self.build_args = {
            "seed": seed,
            "n_train": n_train,
            "n_val": n_val,
            "image_size": image_size,
            "turns": turns,
            "n_reading": n_reading,
        }
        super().__init__(
            annotations=self.root / train_file,
            val_annotations=self.root / val_file,
            image_dir=self.root,
            **kwargs,
        )

    def prepare_data(self) -> None:
        """Build the demo set from the PyPI-shipped scans unless the same build is already there."""
        build_demo_2d(self.root, **self.build_args)

    def setup(self, stage: str | None = None) -> None:
        if not (self.root / self.train_file).exists():
            self.prepare_data()
        super().setup(stage)
