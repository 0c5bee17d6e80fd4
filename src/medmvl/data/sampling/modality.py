"""Batches of one modality at a time, and the same modality on every rank at every step.

Why: a batch of 2D images must not carry zero volumes (MedM-VL pads them), and under DDP/FSDP every rank
must run the same towers at the same step — a rank whose batch has no volume leaves the 3D tower's
gradients unreduced while the others wait for them, and the job hangs. Samples are grouped by modality
(``text``, ``2d``, ``3d``, ``2d+3d``); every rank draws the same seeded schedule of groups and takes its own
shard of each group, so step ``t`` is a ``3d`` batch on all ranks or on none.

The sampler yields whole batches (lists of indices) and the loader runs with ``batch_size=None`` over
:class:`BatchFetch`, so batches may be short at the end of a group instead of mixing groups or repeating
samples. It is a ``DistributedSampler`` subclass that shards by rank itself: Lightning keeps such a
sampler as it is under DDP/FSDP (``use_distributed_sampler`` needs no change) and calls its ``set_epoch``.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from typing import Any

import numpy as np
from torch.utils.data import Dataset, DistributedSampler

GROUPS = ("text", "2d", "3d", "2d+3d")


def modality(n_images: int, n_volumes: int) -> str:
    """The modality group of a sample with ``n_images`` 2D images and ``n_volumes`` 3D volumes."""
    return GROUPS[(n_images > 0) + 2 * (n_volumes > 0)]


class ModalityBatchSampler(DistributedSampler):
    """Yield this rank's batches of dataset indices, each batch from one modality group.

    Per epoch (``set_epoch``), each group's indices are shuffled with ``seed + epoch`` (the same on every
    rank), padded by wrapping around to a multiple of ``num_replicas`` (as ``DistributedSampler`` does: up
    to ``num_replicas - 1`` repeats per group) and dealt to ranks round-robin; each rank cuts its shard into
    batches of ``batch_size``, so every rank has the same number of batches per group. The order of groups
    across steps is one shuffled schedule drawn from the same generator, identical on every rank.

    Args:
        groups: The modality group of every dataset index (see :func:`modality`).
        batch_size: Samples per batch on each rank.
        shuffle: Shuffle within groups and the group schedule (training); else file order, groups in
            ``GROUPS`` order (validation).
        seed: Base seed shared by all ranks.
        drop_last: Drop each group's last incomplete global batch (``batch_size * num_replicas``) instead
            of padding it.
        num_replicas: Number of ranks.
        rank: This rank.
    """

    def __init__(
        self,
        groups: Sequence[str],
        batch_size: int,
        *,
        shuffle: bool = True,
        seed: int = 0,
        drop_last: bool = False,
        num_replicas: int = 1,
        rank: int = 0,
    ) -> None:
        unknown = sorted(set(groups) - set(GROUPS))
        if unknown:
            raise ValueError(f"unknown modality group(s) {unknown}; expected {GROUPS}")
        if batch_size < 1 or num_replicas < 1 or not 0 <= rank < num_replicas:
            raise ValueError(f"need batch_size >= 1 and 0 <= rank < num_replicas, got {batch_size}, {rank}")
        self.groups = list(groups)
        super().__init__(
            self.groups, num_replicas=num_replicas, rank=rank, shuffle=shuffle, seed=seed, drop_last=drop_last
        )
        self.batch_size = batch_size
        self.members = {
            g: np.array([i for i, x in enumerate(self.groups) if x == g], dtype=np.int64) for g in GROUPS
        }

    def _shard_size(self, n: int) -> int:
        global_batch = self.batch_size * self.num_replicas
        if self.drop_last:
            return n // global_batch * self.batch_size
        return -(-n // self.num_replicas) if n else 0

    def _batches_in(self, n: int) -> int:
        return -(-self._shard_size(n) // self.batch_size)

    def schedule(self) -> list[str]:
        """The group of every step of this epoch (identical on every rank)."""
        return self._plan()[0]

    def _plan(self) -> tuple[list[str], dict[str, list[list[int]]]]:
        rng = np.random.default_rng([self.seed, self.epoch])
        batches: dict[str, list[list[int]]] = {}
        for g in GROUPS:
            idx = self.members[g]
            if self.shuffle:
                idx = idx[rng.permutation(len(idx))]
            size = self._shard_size(len(idx))
            total = size * self.num_replicas
            if len(idx):
                idx = np.resize(idx, total) if total > len(idx) else idx[:total]  # wrap-around padding
            shard = idx[self.rank : total : self.num_replicas].tolist()
            batches[g] = [shard[i : i + self.batch_size] for i in range(0, len(shard), self.batch_size)]
        order = [g for g in GROUPS for _ in batches[g]]
        if self.shuffle:
            order = [order[i] for i in rng.permutation(len(order))]
        return order, batches

    def __iter__(self) -> Iterator[list[int]]:
        order, batches = self._plan()
        position = dict.fromkeys(GROUPS, 0)
        for g in order:
            yield batches[g][position[g]]
            position[g] += 1

    def __len__(self) -> int:
        """Batches per epoch on every rank."""
        return sum(self._batches_in(len(self.members[g])) for g in GROUPS)


class BatchFetch(Dataset):
    """``dataset[[i, j, ...]] -> [dataset[i], dataset[j], ...]``: the dataset side of a batch sampler used as
    a ``DataLoader(sampler=...)`` with ``batch_size=None`` (the collate function gets the list)."""

    def __init__(self, dataset: Dataset) -> None:
        self.dataset = dataset

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, indices: Sequence[int]) -> list[Any]:
        return [self.dataset[i] for i in indices]
