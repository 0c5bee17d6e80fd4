"""DDP and FSDP2 on 2 CPU processes (gloo) follow one process on the same global batch.

The colour set has 8 samples; one process takes them as one batch of 8, two processes as 4 + 4, so every
optimizer step sees the same global batch (the sample-to-rank split does not matter: the loss is a mean
over the global batch's supervised tokens, see ``MedVLMModule._global_token_mean``). Tolerances: fp32
everywhere, only the order of reductions differs -- losses within 1e-4 (relative), exported weights
within 2e-5 (absolute; 4 Adam steps of lr 1e-3 move weights by ~4e-3).
"""

from __future__ import annotations

import csv
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from medmvl.cli.train import train
from tests.cli.conftest import write_colour_set
from tests.conftest import compose_train, run_entry

STEPS = 4
COMMON = [
    "experiment=none",
    "trainer.max_epochs=100",
    "trainer.log_every_n_steps=1",
    "stage.llm.lr=1e-3",
    "stage.connector.lr=1e-3",
    # a constant learning rate: a cosine schedule would depend on max_steps, which the resume test changes
    "~scheduler",
]
TWO_CPU = ["trainer.devices=2", "trainer.accelerator=cpu", "data.batch_size=4"]
LOSS_RTOL = 1e-4
WEIGHT_ATOL = 2e-5

pytestmark = pytest.mark.slow


def _losses(run: Path, after: int = -1) -> list[float]:
    """The training losses in the run's CSV logged after step ``after``, in step order."""
    with open(run / "csv" / "metrics.csv") as f:
        rows = [(int(r["step"]), float(r["train/loss"])) for r in csv.DictReader(f) if r.get("train/loss")]
    return [loss for step, loss in sorted(rows) if step > after]


def _last_step(run: Path) -> int:
    with open(run / "csv" / "metrics.csv") as f:
        return max(int(r["step"]) for r in csv.DictReader(f) if r.get("train/loss"))


def _weights(run: Path) -> dict[str, torch.Tensor]:
    return load_file(run / "model" / "model.safetensors")


def _assert_close_weights(got: dict[str, torch.Tensor], want: dict[str, torch.Tensor]) -> None:
    assert got.keys() == want.keys()
    worst = max((got[k] - want[k]).abs().max().item() for k in want)
    assert worst < WEIGHT_ATOL, f"exported weights differ by up to {worst:.2e}"


def _train_cli(run: Path, *args: str) -> None:
    out = run_entry("train.py", *COMMON, *args, f"hydra.run.dir={run}")
    assert out.returncode == 0, out.stderr[-4000:]


@pytest.fixture(scope="module")
def data(tmp_path_factory: pytest.TempPathFactory) -> list[str]:
    folder = tmp_path_factory.mktemp("colours")
    ann = write_colour_set(folder)
    return [f"data.annotations={ann}", f"data.image_dir={folder / 'imgs'}"]


@pytest.fixture(scope="module")
def single(tmp_path_factory: pytest.TempPathFactory, data: list[str]) -> Path:
    """The reference: one process, batch of 8, 4 steps, model exported."""
    run = tmp_path_factory.mktemp("single")
    train(compose_train([*COMMON, f"trainer.max_steps={STEPS}", "data.batch_size=8", *data], output_dir=run))
    losses = _losses(run)
    assert len(losses) == STEPS
    assert losses[-1] < losses[0] - 0.05, "the reference run must actually learn"
    return run


def _assert_follows(losses: list[float], ref: list[float]) -> None:
    assert losses == pytest.approx(ref, rel=LOSS_RTOL), f"{losses} vs single process {ref}"


def test_ddp_follows_single_process(tmp_path: Path, data: list[str], single: Path) -> None:
    run = tmp_path / "ddp"
    _train_cli(run, "trainer=ddp", "trainer.precision=32-true", f"trainer.max_steps={STEPS}", *TWO_CPU, *data)
    _assert_follows(_losses(run), _losses(single))
    _assert_close_weights(_weights(run), _weights(single))


def test_fsdp_save_resume_export(tmp_path: Path, data: list[str], single: Path) -> None:
    """FSDP2: 2 steps, sharded checkpoint, resume for 2 more, export one safetensors file."""
    run = tmp_path / "fsdp"
    fsdp = ["trainer=fsdp", "trainer.strategy.param_dtype=null", *TWO_CPU, *data]
    _train_cli(run, *fsdp, "trainer.max_steps=2", "save_model=false")
    last = run / "checkpoints" / "last.ckpt"
    assert last.is_dir() and len(list(last.glob("*.distcp"))) == 2, "one shard per rank"
    first, first_step = _losses(run), _last_step(run)
    _train_cli(run, *fsdp, f"trainer.max_steps={STEPS}", "ckpt_path=last")
    _assert_follows(first + _losses(run, after=first_step), _losses(single))
    assert sorted(_weights(run)) == sorted(_weights(single))
    _assert_close_weights(_weights(run), _weights(single))
