"""What an exact resume needs besides Lightning's own checkpoint state: per-batch RNG, appended CSV logs.

Lightning restores weights, optimizer, scheduler and the fit loop (epoch, batch position); the training
loader restores the data order and augmentations (:mod:`medmvl.data.resumable`). What is left is the
global RNG that dropout (LoRA dropout, attention dropout) draws from. Rather than saving a snapshot whose
right moment is hard to pin down (validation, callbacks or a new DataLoader iterator may draw in between),
every training batch starts from a seed that is a function of the run's seed and the batch's index over
the whole run (:func:`seed_batch`): a resumed run draws exactly what the uninterrupted one drew, whatever
ran between two batches.

``CSVLogger`` writes ``metrics.csv`` afresh in each process, deleting the rows of the interrupted run;
:class:`CSVLogger` here keeps them, drops the rows past the checkpoint (the resumed run logs those steps
again) and appends.
"""

from __future__ import annotations

import csv
import os
import random
from typing import Any

import numpy as np
import torch
from lightning.fabric.loggers.csv_logs import _ExperimentWriter
from lightning.pytorch.loggers import CSVLogger as _LightningCSVLogger
from lightning.pytorch.loggers.csv_logs import ExperimentWriter
from lightning.pytorch.utilities import rank_zero_only


def batch_seed(seed: int, batch_index: int) -> int:
    """An independent 63-bit seed for training batch ``batch_index`` (counted over the whole run)."""
    return int(
        np.random.SeedSequence([seed, batch_index]).generate_state(2, np.uint32).view(np.uint64)[0] >> 1
    )


def seed_batch(seed: int, batch_index: int) -> None:
    """Seed torch (CPU and CUDA), numpy and Python ``random`` for training batch ``batch_index``."""
    s = batch_seed(seed, batch_index)
    torch.manual_seed(s)
    np.random.seed(s % 2**32)
    random.seed(s)


def run_seed() -> int:
    """The seed ``lightning.seed_everything`` was given in this process (``PL_GLOBAL_SEED``), else 0."""
    return int(os.environ.get("PL_GLOBAL_SEED", "0"))


class _AppendingWriter(ExperimentWriter):
    """Lightning's CSV writer that keeps an existing ``metrics.csv`` and appends to it."""

    def _check_log_dir_exists(self) -> None:
        if self._fs.isfile(self.metrics_file_path):
            with self._fs.open(self.metrics_file_path, "r", newline="") as f:
                self.metrics_keys = list(next(csv.reader(f), []))


class CSVLogger(_LightningCSVLogger):
    """Lightning's ``CSVLogger`` whose ``metrics.csv`` survives a resume (same arguments).

    A resumed run calls :meth:`resume_at` with the checkpoint's step: rows logged after it by the
    interrupted run are dropped (the resumed run logs them again), earlier rows stay, new rows append.
    """

    @property
    def experiment(self) -> _ExperimentWriter:  # noqa: D102 - Lightning's
        if self._experiment is None:
            self._fs.makedirs(self.root_dir, exist_ok=True)
            self._experiment = _AppendingWriter(log_dir=self.log_dir)
        return self._experiment

    @rank_zero_only
    def after_save_checkpoint(self, checkpoint_callback: Any) -> None:
        """Flush the rows logged so far, so ``metrics.csv`` holds every step a checkpoint holds."""
        self.save()

    @rank_zero_only
    def resume_at(self, step: int) -> None:
        """Drop the rows of ``metrics.csv`` with ``step >= step`` (logged after the checkpoint)."""
        path = os.path.join(self.log_dir, _ExperimentWriter.NAME_METRICS_FILE)
        if not os.path.isfile(path):
            return
        with open(path, newline="") as f:
            reader = csv.DictReader(f)
            fields, rows = reader.fieldnames or [], list(reader)
        kept = [r for r in rows if not r.get("step") or int(float(r["step"])) < step]
        with open(path, "w", newline="") as f:
            writer = csv.DictWriter(f, fieldnames=fields)
            writer.writeheader()
            writer.writerows(kept)
