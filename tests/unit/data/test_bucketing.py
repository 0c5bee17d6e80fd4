"""Length buckets: batches of similar length, a deterministic order, exact mid-epoch resume."""

from __future__ import annotations

import random

import torch
from torch.utils.data import Dataset

from medmvl.data.sampling.bucketing import LengthBuckets
from medmvl.data.sampling.resumable import ResumableLoader

_RNG = random.Random(0)
LENGTHS = [_RNG.randint(20, 300) for _ in range(203)]


def _batches(order: list[int], size: int) -> list[list[int]]:
    return [order[k : k + size] for k in range(0, len(order), size)]


def _padding(batches: list[list[int]]) -> int:
    return sum(len(b) * max(LENGTHS[i] for i in b) - sum(LENGTHS[i] for i in b) for b in batches)


def test_buckets_keep_every_index_and_cut_padding() -> None:
    order = list(range(len(LENGTHS)))
    random.Random(1).shuffle(order)
    arranged = LengthBuckets(LENGTHS, batch_size=8, seed=0, window=8)(order, epoch=0)
    assert sorted(arranged) == sorted(order)
    assert _padding(_batches(arranged, 8)) < 0.2 * _padding(_batches(order, 8))
    assert len(_batches(arranged, 8)[-1]) == len(order) % 8  # the partial batch stays last


def test_order_is_a_function_of_seed_and_epoch() -> None:
    order = list(range(len(LENGTHS)))
    buckets = LengthBuckets(LENGTHS, batch_size=4, seed=3)
    assert buckets(order, 1) == LengthBuckets(LENGTHS, batch_size=4, seed=3)(order, 1)
    assert buckets(order, 1) != buckets(order, 2)


class _Ids(Dataset):
    def __len__(self) -> int:
        return len(LENGTHS)

    def __getitem__(self, index: int) -> int:
        return index


def test_resumable_loader_resumes_bucketed_epochs_exactly() -> None:
    def loader() -> ResumableLoader:
        buckets = LengthBuckets(LENGTHS, batch_size=8, seed=5)
        return ResumableLoader(_Ids(), batch_size=8, seed=5, arrange=buckets, collate_fn=torch.tensor)

    full = [b.tolist() for b in loader()]
    spread = [max(LENGTHS[i] for i in b) - min(LENGTHS[i] for i in b) for b in full[:-1]]
    assert max(spread) < 60  # every full batch holds samples of similar length
    resumed = loader()
    resumed.load_state_dict({"epoch": 0, "batches": 7})
    assert [b.tolist() for b in resumed] == full[7:]
