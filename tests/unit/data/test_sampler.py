"""Modality batching: one modality per batch, the same modality on every rank at every step."""

from __future__ import annotations

import random
from collections import Counter

import lightning as L
import pytest
from torch.utils.data import DataLoader, DistributedSampler

from medmvl.data.sampling.modality import GROUPS, BatchFetch, ModalityBatchSampler, modality

# 11 2D, 7 3D, 3 text-only, 2 with both, interleaved as in a real mixed file
GROUP_OF = ["2d"] * 11 + ["3d"] * 7 + ["text"] * 3 + ["2d+3d"] * 2
random.Random(0).shuffle(GROUP_OF)


def test_modality_of_a_sample():
    assert [modality(0, 0), modality(2, 0), modality(0, 1), modality(1, 1)] == list(GROUPS)


def test_single_process_batches_are_pure_and_cover_every_sample_once():
    sampler = ModalityBatchSampler(GROUP_OF, 4, seed=0)
    batches = list(sampler)
    assert len(batches) == len(sampler) == 3 + 2 + 1 + 1  # ceil(11/4) + ceil(7/4) + 1 + 1
    assert all(len({GROUP_OF[i] for i in b}) == 1 and 1 <= len(b) <= 4 for b in batches)
    assert sorted(i for b in batches for i in b) == list(range(len(GROUP_OF)))


def test_epochs_reshuffle_deterministically():
    sampler = ModalityBatchSampler(GROUP_OF, 4, seed=0)
    sampler.set_epoch(0)
    first = list(sampler)
    assert list(sampler) == first  # same epoch, same order
    sampler.set_epoch(1)
    assert list(sampler) != first
    assert list(ModalityBatchSampler(GROUP_OF, 4, seed=1)) != first


@pytest.mark.parametrize("drop_last", [False, True])
def test_two_ranks_take_the_same_modality_at_every_step(drop_last):
    ranks = [
        ModalityBatchSampler(GROUP_OF, 3, seed=5, num_replicas=2, rank=r, drop_last=drop_last) for r in (0, 1)
    ]
    for epoch in (0, 1, 2):
        for s in ranks:
            s.set_epoch(epoch)
        runs = [list(s) for s in ranks]
        assert len(runs[0]) == len(runs[1]) == len(ranks[0]) > 0
        assert ranks[0].schedule() == ranks[1].schedule()
        for step, (a, b) in enumerate(zip(*runs)):
            ga, gb = {GROUP_OF[i] for i in a}, {GROUP_OF[i] for i in b}
            assert len(ga) == 1 and ga == gb, f"epoch {epoch} step {step}: rank 0 {ga}, rank 1 {gb}"
        seen = Counter(i for run in runs for b in run for i in b)
        if drop_last:  # only whole global batches (3 per rank x 2 ranks) of each group
            assert sum(seen.values()) == 6 * (11 // 6 + 7 // 6) and max(seen.values()) == 1
        else:  # every sample at least once; a group is padded by at most one repeat (2 ranks)
            assert set(seen) == set(range(len(GROUP_OF)))
            assert sum(seen.values()) - len(GROUP_OF) <= sum(n % 2 for n in (11, 7, 3, 2))


def test_validation_order_is_file_order_within_groups():
    sampler = ModalityBatchSampler(GROUP_OF, 4, shuffle=False)
    batches = list(sampler)
    for g in GROUPS:
        mine = [i for b in batches for i in b if GROUP_OF[i] == g]
        assert mine == [i for i, x in enumerate(GROUP_OF) if x == g]
    assert [GROUP_OF[b[0]] for b in batches] == sorted((GROUP_OF[b[0]] for b in batches), key=GROUPS.index)


def test_bad_arguments():
    with pytest.raises(ValueError, match=r"unknown modality group\(s\) \['4d'\]"):
        ModalityBatchSampler(["2d", "4d"], 2)
    with pytest.raises(ValueError, match="rank"):
        ModalityBatchSampler(GROUP_OF, 2, num_replicas=2, rank=2)


def test_lightning_keeps_it_under_ddp():
    """A ``DistributedSampler`` subclass: Lightning does not swap in its own sampler (which would shard
    the indices without regard to modality)."""
    sampler = ModalityBatchSampler(GROUP_OF, 2, num_replicas=2, rank=0)
    assert isinstance(sampler, DistributedSampler)
    trainer = L.Trainer(
        accelerator="cpu", devices=2, strategy="ddp", logger=False, enable_checkpointing=False
    )
    loader = DataLoader(BatchFetch(list(range(len(GROUP_OF)))), sampler=sampler, batch_size=None)
    assert not trainer._data_connector._requires_distributed_sampler(loader)  # Lightning's own test
    assert [len(b) for b in loader] == [len(b) for b in sampler]
