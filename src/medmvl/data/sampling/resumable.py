"""A training DataLoader that resumes mid-epoch exactly: same order, same augmentations, no sample twice.

Why: a resumed run must see the batches the interrupted run would have seen next. Lightning 2.6 saves
``state_dict()`` of every training loader that has one (``_Stateful``) in the checkpoint's fit-loop state
and hands it back to ``load_state_dict`` before the first batch of the resumed run; this module gives it
a loader whose state is "epoch ``e``, ``k`` batches delivered". The order of an epoch is a pure function of
``(seed, epoch)`` (:class:`EpochSampler`, a ``DistributedSampler`` so Lightning keeps it under DDP and it
shards by rank itself), so skipping ``k * batch_size`` indices reproduces the rest of the epoch without
loading the skipped samples. Augmentations are made a pure function of ``(seed, epoch, index)`` too: each
sample is produced under its own seed (torch, numpy and Python ``random``), so they do not depend on the
worker that loads a sample, nor on how many samples a process loaded before — the global RNG state of
the training loop is left untouched by data loading.

A dataset whose transforms keep their own generators (MONAI ``Randomizable``) can define
``reseed(seed: int)``; it is called before each sample with that sample's seed.
"""

from __future__ import annotations

import random
from collections.abc import Callable, Iterator
from typing import Any

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset, DistributedSampler


class EpochSampler(DistributedSampler):
    """Indices of one epoch, shuffled from ``(seed, epoch)``, each paired with the seed of its sample.

    Yields ``(index, sample_seed)``; the loader's dataset wrapper unpacks them. With ``num_replicas > 1``
    each rank takes every ``num_replicas``-th index of the (padded) epoch order, as ``DistributedSampler``.

    Args:
        dataset: The map-style dataset (only its length is used).
        shuffle: Shuffle each epoch (else file order).
        seed: Seed of the orders and of the per-sample seeds.
        num_replicas: Data-parallel processes.
        rank: This process.
        arrange: Optional ``arrange(order, epoch) -> order`` applied to this rank's epoch order (a pure
            function, e.g. ``medmvl.data.sampling.bucketing.LengthBuckets``), so resuming still skips exactly.
    """

    def __init__(
        self,
        dataset: Dataset,
        *,
        shuffle: bool,
        seed: int,
        num_replicas: int = 1,
        rank: int = 0,
        arrange: Callable[[list[int], int], list[int]] | None = None,
    ) -> None:
        super().__init__(dataset, num_replicas=num_replicas, rank=rank, shuffle=shuffle, seed=seed)
        self.start = 0  # indices of this rank's epoch order to skip (set by the loader when resuming)
        self.arrange = arrange

    def sample_seeds(self) -> torch.Tensor:
        """``[len(dataset)]`` int64 seeds of this epoch's samples (a function of seed, epoch and index)."""
        g = torch.Generator().manual_seed(self.seed * 1_000_003 + self.epoch + 1)
        return torch.randint(0, 2**62, (len(self.dataset),), generator=g)

    def __iter__(self) -> Iterator[tuple[int, int]]:
        order = list(super().__iter__())
        if self.arrange is not None:
            order = self.arrange(order, self.epoch)
        order = order[self.start :]
        self.start = 0
        seeds = self.sample_seeds()
        return iter([(i, int(seeds[i])) for i in order])


class SeededItems(Dataset):
    """Wraps a dataset so ``item[(index, seed)]`` is ``dataset[index]`` produced under ``seed``.

    The global torch / numpy / Python RNG states are restored afterwards. Other attributes are the wrapped
    dataset's.
    """

    def __init__(self, dataset: Dataset) -> None:
        self.dataset = dataset

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, key: tuple[int, int]) -> Any:
        index, seed = key
        np_state, py_state = np.random.get_state(), random.getstate()
        try:
            with torch.random.fork_rng(devices=[]):
                torch.manual_seed(seed)
                np.random.seed(seed % 2**32)
                random.seed(seed)
                if callable(reseed := getattr(self.dataset, "reseed", None)):
                    reseed(seed)
                return self.dataset[index]
        finally:
            np.random.set_state(np_state)
            random.setstate(py_state)

    def __getattr__(self, name: str) -> Any:
        # "dataset" is not yet set while unpickling in a worker; dunders (``__getitems__``) must not reach
        # the wrapped dataset, or the DataLoader would fetch through it and skip the per-sample seeds
        if name == "dataset" or name.startswith("__"):
            raise AttributeError(name)
        return getattr(self.dataset, name)


class ResumableLoader(DataLoader):
    """A ``DataLoader`` over :class:`SeededItems` with an :class:`EpochSampler` and a resumable position.

    ``state_dict()`` is ``{"epoch": e, "batches": k}``: ``k`` batches of epoch ``e`` were delivered.
    After ``load_state_dict`` the next iteration over epoch ``e`` starts at batch ``k`` (an iteration over
    another epoch starts at its beginning).

    Args:
        dataset: The training dataset.
        batch_size: Samples per batch.
        shuffle: Shuffle each epoch.
        seed: Seed of orders and augmentations (the run's ``seed``).
        num_replicas: Data-parallel processes (``trainer.world_size``).
        rank: This process (``trainer.global_rank``).
        arrange: Reorders each epoch's indices (see :class:`EpochSampler`), e.g. length buckets.
        **kwargs: Other ``DataLoader`` arguments (``collate_fn``, ``num_workers``, ...).
    """

    def __init__(
        self,
        dataset: Dataset,
        *,
        batch_size: int,
        shuffle: bool = True,
        seed: int = 0,
        num_replicas: int = 1,
        rank: int = 0,
        arrange: Callable[[list[int], int], list[int]] | None = None,
        **kwargs: Any,
    ) -> None:
        sampler = EpochSampler(
            dataset, shuffle=shuffle, seed=seed, num_replicas=num_replicas, rank=rank, arrange=arrange
        )
        # its own generator: creating an iterator must not draw from the global RNG of the training loop
        generator = torch.Generator().manual_seed(seed)
        super().__init__(
            SeededItems(dataset), batch_size=batch_size, sampler=sampler, generator=generator, **kwargs
        )
        self._epoch = 0
        self._delivered = 0
        self._resume: dict[str, int] | None = None

    def __iter__(self) -> Iterator[Any]:
        # a generator: its body runs at the first ``next()``, after Lightning set the sampler's epoch
        sampler = self.sampler
        assert isinstance(sampler, EpochSampler)
        resume, self._resume = self._resume, None
        skip = resume["batches"] if resume and resume["epoch"] == sampler.epoch else 0
        self._epoch, self._delivered = sampler.epoch, skip
        if skip >= len(self):
            return
        sampler.start = skip * self.batch_size
        for batch in super().__iter__():
            self._delivered += 1
            yield batch

    def state_dict(self) -> dict[str, int]:
        """Where the training loop stands in the data: epoch and batches delivered in it."""
        return {"epoch": int(self._epoch), "batches": int(self._delivered)}

    def load_state_dict(self, state: dict[str, int]) -> None:
        """Resume at ``state`` on the next iteration over its epoch."""
        self._resume = {"epoch": int(state["epoch"]), "batches": int(state["batches"])}
        self._epoch, self._delivered = self._resume["epoch"], self._resume["batches"]
