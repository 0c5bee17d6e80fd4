"""Per-batch RNG for exact resume: every training batch starts from a seed fixed by (run seed, batch index).

Lightning restores weights, optimizer, scheduler and the fit loop (epoch, batch position); the training
loader restores the data order and augmentations (:mod:`medmvl.data.sampling.resumable`); the CSV logger
appends to the interrupted run's rows (:class:`medmvl.training.loggers.CSVLogger`). What is left is the
global RNG that dropout (LoRA dropout, attention dropout) draws from. Rather than saving a snapshot whose
right moment is hard to pin down (validation, callbacks or a new DataLoader iterator may draw in between),
every training batch starts from a seed that is a function of the run's seed and the batch's index over
the whole run (:func:`seed_batch`): a resumed run draws exactly what the uninterrupted one drew, whatever
ran between two batches.
"""

from __future__ import annotations

import os
import random

import numpy as np
import torch


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
