"""Exact resume: a run interrupted twice and resumed with ``ckpt_path=last`` ends with the same weights
as an uninterrupted one, and its ``metrics.csv`` continues instead of starting over.

The run exercises everything that must be restored: LoRA dropout (RNG), shuffled data with random crops
and brightness (data order and augmentation), a warmup-cosine schedule and AdamW moments, one resume at
an epoch boundary and one mid-epoch, and a different number of DataLoader workers after the last resume.
"""

from __future__ import annotations

import csv
from pathlib import Path

import lightning as L
import pytest
import torch
from safetensors.torch import load_file

from medmvl.cli.train import train
from medmvl.data.sampling.resumable import EpochSampler, ResumableLoader
from tests.conftest import compose_train
from tests.helpers.colour import write_colour_set


class CrashAt(L.Callback):
    """Raise at the start of the batch that would make optimizer step ``step + 1`` (a simulated crash)."""

    def __init__(self, step: int) -> None:
        self.step = step

    def on_train_batch_start(
        self, trainer: L.Trainer, pl_module: L.LightningModule, batch, batch_idx
    ) -> None:
        if trainer.global_step == self.step:
            raise RuntimeError(f"simulated crash at step {self.step}")


def _rows(run: Path) -> list[tuple[int, float]]:
    with open(run / "csv" / "metrics.csv") as f:
        return [(int(r["step"]), float(r["train/loss"])) for r in csv.DictReader(f) if r.get("train/loss")]


@pytest.mark.slow
def test_interrupted_twice_resumed_run_matches_uninterrupted(tmp_path: Path) -> None:
    ann = write_colour_set(tmp_path / "data")  # 8 samples, batch 2: 4 batches per epoch
    base = [
        "stage=lora",
        "stage.llm.lora.r=8",
        "stage.llm.lora.alpha=16",
        "stage.llm.lora.dropout=0.1",
        "data.batch_size=2",
        "data.augment={crop_scale: [0.6, 1.0], brightness: 0.3}",
        "trainer.max_steps=9",
        "trainer.max_epochs=10",
        "trainer.log_every_n_steps=1",
        "callbacks.model_checkpoint.every_n_train_steps=2",
        "callbacks.val_predictions=null",
        "callbacks.rich_progress_bar=null",
        f"data.annotations={ann}",
        f"data.image_dir={tmp_path / 'data' / 'imgs'}",
    ]
    full, run = tmp_path / "full", tmp_path / "run"
    train(compose_train(base, output_dir=full))

    crash = ["+callbacks.crash._target_=tests.integration.test_resume.CrashAt"]
    with pytest.raises(RuntimeError, match="simulated crash at step 5"):
        train(compose_train([*base, *crash, "+callbacks.crash.step=5"], output_dir=run))
    last = torch.load(run / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=True)
    assert last["global_step"] == 4  # the end of epoch 0; step 5 was done but not checkpointed
    assert last["loops"]["fit_loop"]["state_dict"]["combined_loader"] == [{"epoch": 0, "batches": 4}]
    assert [s for s, _ in _rows(run)] == [0, 1, 2, 3, 4]

    with pytest.raises(RuntimeError, match="simulated crash at step 7"):
        train(compose_train([*base, *crash, "+callbacks.crash.step=7", "ckpt_path=last"], output_dir=run))
    last = torch.load(run / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=True)
    assert last["loops"]["fit_loop"]["state_dict"]["combined_loader"] == [{"epoch": 1, "batches": 2}]

    metrics = train(compose_train([*base, "ckpt_path=last", "data.num_workers=2"], output_dir=run))
    assert "model_dir" in metrics

    a, b = load_file(full / "model" / "model.safetensors"), load_file(run / "model" / "model.safetensors")
    assert a.keys() == b.keys()
    different = [k for k in a if not torch.equal(a[k], b[k])]
    assert not different, f"resumed weights differ from the uninterrupted run's: {different[:5]}"
    # the CSV continued across both resumes: every step once, the losses of the uninterrupted run
    assert _rows(run) == _rows(full)
    assert [s for s, _ in _rows(run)] == list(range(9))


def test_loader_resumes_mid_epoch_with_the_same_batches() -> None:
    data = [{"x": torch.rand(())} for _ in range(10)]  # random values: the per-sample seed decides them

    class Noisy(torch.utils.data.Dataset):
        def __len__(self) -> int:
            return len(data)

        def __getitem__(self, i: int) -> torch.Tensor:
            return torch.tensor([i, float(torch.rand(()))])  # index and an "augmentation" draw

    def loader() -> ResumableLoader:
        return ResumableLoader(Noisy(), batch_size=3, seed=7)

    ref = loader()
    ref.sampler.set_epoch(1)
    expected = list(ref)  # [[i, r], ...] x 4 batches, the last one short
    assert len(expected) == 4

    first = loader()
    first.sampler.set_epoch(1)
    it = iter(first)
    seen = [next(it), next(it)]
    state = first.state_dict()
    assert state == {"epoch": 1, "batches": 2}

    resumed = loader()
    resumed.load_state_dict(state)
    resumed.sampler.set_epoch(1)  # Lightning sets the epoch after loading the state
    rest = list(resumed)
    assert all(torch.equal(x, y) for x, y in zip(seen + rest, expected, strict=True))
    torch.manual_seed(0)
    before = torch.random.get_rng_state()
    list(loader())
    assert torch.equal(torch.random.get_rng_state(), before)  # data loading leaves the global RNG alone


def test_sampler_shards_by_rank_and_keeps_the_order_per_epoch() -> None:
    ds = list(range(7))
    ranks = [list(EpochSampler(ds, shuffle=True, seed=3, num_replicas=2, rank=r)) for r in (0, 1)]
    indices = [i for r in ranks for i, _ in r]
    assert len(ranks[0]) == len(ranks[1]) == 4 and set(indices) == set(ds)
    again = EpochSampler(ds, shuffle=True, seed=3, num_replicas=2, rank=0)
    assert list(again) == ranks[0]
    again.set_epoch(1)
    assert list(again) != ranks[0]
