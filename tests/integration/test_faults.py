"""Faults during training: preemption signals, NaN losses, unreadable images under on_error=skip, and the
checkpoint writer's atomicity. Training runs are child processes (``runner``) so they can be signalled."""

from __future__ import annotations

import csv
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from medmvl.training.checkpoint_io import TMP_MARK, AtomicCheckpointIO
from tests.conftest import ROOT
from tests.helpers import runner
from tests.helpers.colour import write_colour_set


def _data(tmp_path: Path, unreadable: tuple[int, ...] = (), missing: bool = False) -> list[str]:
    ann = write_colour_set(tmp_path / "data")
    for i in unreadable:
        (tmp_path / "data" / "imgs" / f"{i}.png").write_bytes(b"not a png any more")
    if missing:  # one more sample whose image does not exist: removed when the dataset is built
        records = json.loads(ann.read_text())
        ann.write_text(json.dumps([*records, {**records[0], "id": "gone", "image": ["gone.png"]}]))
    return [f"data.annotations={ann}", f"data.image_dir={tmp_path / 'data' / 'imgs'}"]


def _csv(run: Path, column: str) -> list[float]:
    with open(run / "csv" / "metrics.csv") as f:
        return [float(r[column]) for r in csv.DictReader(f) if r.get(column)]


def _run(args: list[str], run: Path, timeout: float = 240.0) -> int:
    proc = runner.start(args, run, daemon=False)  # not a daemon: DataLoader workers are its children
    try:
        proc.join(timeout)
    finally:
        if proc.is_alive():
            proc.kill()
    return proc.exitcode


def _finished(run: Path) -> int:
    """Optimizer steps done by a stopped run (the probe runs after PreemptionCheckpoint: a step that
    ended with the stop is still marked as started)."""
    step, phase = runner.progress(run)
    return step + 1 if phase == "start" else step


# ---------------------------------------------------------------- checkpoint writes


def test_atomic_save_writes_whole_files_and_no_temporaries(tmp_path: Path) -> None:
    io, path = AtomicCheckpointIO(), tmp_path / "ck" / "last.ckpt"
    io.save_checkpoint({"w": torch.arange(4.0)}, path)
    io.save_checkpoint({"w": torch.arange(5.0)}, path)
    assert torch.equal(io.load_checkpoint(path)["w"], torch.arange(5.0))
    assert [p.name for p in path.parent.iterdir()] == ["last.ckpt"]


def test_a_failed_write_keeps_the_previous_checkpoint(tmp_path: Path, monkeypatch) -> None:
    io, path = AtomicCheckpointIO(), tmp_path / "last.ckpt"
    io.save_checkpoint({"w": torch.ones(3)}, path)

    def crash(obj, f, *args, **kwargs):
        f.write(b"PK\x03\x04 half a checkpoint")
        raise OSError("disk full")

    monkeypatch.setattr(torch, "save", crash)
    with pytest.raises(OSError, match="disk full"):
        io.save_checkpoint({"w": torch.zeros(3)}, path)
    monkeypatch.undo()
    assert torch.equal(io.load_checkpoint(path)["w"], torch.ones(3))
    assert [p.name for p in tmp_path.iterdir()] == ["last.ckpt"]


def test_a_killed_writers_temporary_is_removed_by_the_next_save(tmp_path: Path) -> None:
    io, path = AtomicCheckpointIO(), tmp_path / "last.ckpt"
    stale = tmp_path / f".last.ckpt{TMP_MARK}99999"
    stale.write_bytes(b"PK\x03\x04 torn")
    io.save_checkpoint({"w": torch.ones(2)}, path)
    assert not stale.exists() and path.exists()


# ---------------------------------------------------------------- signals


@pytest.mark.slow
def test_sigusr1_saves_last_ckpt_and_exits(tmp_path: Path) -> None:
    run = tmp_path / "run"
    proc = runner.start(runner.overrides(run, _data(tmp_path), "trainer.max_steps=500"), run)
    runner.wait_for(proc, run, 2)
    os.kill(proc.pid, signal.SIGUSR1)
    proc.join(120)
    log = runner.log_tail(run)
    assert proc.exitcode == 128 + signal.SIGUSR1, log
    saved = torch.load(run / "checkpoints" / "last.ckpt", weights_only=True)
    assert saved["global_step"] == _finished(run) >= 3  # the step in flight finished, then nothing more ran
    assert "SIGUSR1 received: saved" in log and "ckpt_path=last" in log
    assert "Traceback" not in log and not (run / "model").exists()


@pytest.mark.slow
def test_sigterm_stops_the_cli_cleanly_with_a_checkpoint(tmp_path: Path) -> None:
    """The real ``train.py``: exit status 143, ``last.ckpt`` of the last finished step, no traceback."""
    run = tmp_path / "run"
    args = runner.overrides(run, _data(tmp_path), "trainer.max_steps=500", f"hydra.run.dir={run}")
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "PYTHONPATH": str(ROOT)}
    with open(tmp_path / "out.log", "w") as out:
        proc = subprocess.Popen(
            [sys.executable, str(ROOT / "train.py"), *args], cwd=ROOT, env=env, stdout=out, stderr=out
        )
        deadline = time.monotonic() + 240
        while runner.progress(run)[0] < 1 and proc.poll() is None and time.monotonic() < deadline:
            time.sleep(0.01)
        proc.send_signal(signal.SIGTERM)
        code = proc.wait(120)
    log = (tmp_path / "out.log").read_text()
    assert code == 128 + signal.SIGTERM, log[-3000:]
    saved = torch.load(run / "checkpoints" / "last.ckpt", weights_only=True)
    assert saved["global_step"] == _finished(run) >= 1
    assert "SIGTERM received: saved" in log and "Traceback" not in log
    assert not (run / "model").exists()


# ---------------------------------------------------------------- non-finite losses


@pytest.mark.slow
def test_a_nan_loss_stops_the_run_naming_the_sample_ids(tmp_path: Path) -> None:
    run = tmp_path / "run"
    poison = f"+callbacks.poison._target_={runner.__name__}.PoisonLoss"
    args = runner.overrides(
        run,
        _data(tmp_path),
        "trainer.max_steps=6",
        poison,
        "+callbacks.poison.sample_id=c3",
        f"+callbacks.poison.path={run / 'poisoned'}",
    )
    assert _run(args, run) == 1
    log = runner.log_tail(run, 20000)
    assert "NonFiniteLossError: non-finite training loss nan at step" in log
    assert "sample ids [" in log and "'c3'" in log and "nonfinite_loss=skip" in log


def test_a_nan_loss_in_an_accumulated_micro_batch_stops_before_the_update(tmp_path: Path) -> None:
    """``raise`` is checked in ``on_before_optimizer_step``: every micro-batch of the step counts."""
    from medmvl.cli.train import train
    from medmvl.training.module import NonFiniteLossError
    from tests.conftest import compose_train

    run = tmp_path / "run"
    args = [
        *runner.TINY,
        *_data(tmp_path),
        "trainer.max_steps=3",
        "trainer.accumulate_grad_batches=3",  # 8 samples in batches of 3: one optimizer step an epoch
        f"+callbacks.poison._target_={runner.__name__}.PoisonLoss",
        "+callbacks.poison.sample_id=c3",
        f"+callbacks.poison.path={run / 'poisoned'}",
    ]
    with pytest.raises(NonFiniteLossError, match=r"non-finite training loss nan at step 0 .*'c3'"):
        train(compose_train(args, output_dir=run))
    assert not (run / "checkpoints" / "last.ckpt").exists()  # no optimizer step was taken


@pytest.mark.slow
def test_nonfinite_loss_skip_skips_the_step_and_counts_it(tmp_path: Path) -> None:
    run = tmp_path / "run"
    args = runner.overrides(
        run,
        _data(tmp_path),
        "trainer.max_steps=6",
        "nonfinite_loss=skip",
        f"+callbacks.poison._target_={runner.__name__}.PoisonLoss",
        "+callbacks.poison.sample_id=c3",
        f"+callbacks.poison.path={run / 'poisoned'}",
    )
    assert _run(args, run) == 0, runner.log_tail(run)
    poisoned = [line.split() for line in (run / "poisoned").read_text().splitlines()]
    assert len(poisoned) == 2 and all(untouched == "1" for _, untouched in poisoned)  # one batch per epoch
    assert _csv(run, "train/nonfinite_skipped") == [1.0, 1.0]
    log = runner.log_tail(run, 20000)
    assert "step skipped (nonfinite_loss=skip)" in log and "'c3'" in log
    weights = torch.load(run / "checkpoints" / "last.ckpt", weights_only=True)["state_dict"]
    assert all(torch.isfinite(v).all() for v in weights.values() if v.is_floating_point())


# ---------------------------------------------------------------- unreadable images under on_error=skip


@pytest.mark.slow
def test_unreadable_images_are_totalled_over_workers_per_epoch(tmp_path: Path) -> None:
    """Two of eight images are corrupt; two DataLoader workers each see some of them: ``data/skipped`` is
    the total per epoch, and the end of each epoch says so."""
    run = tmp_path / "run"
    data = _data(tmp_path, unreadable=(1, 6), missing=True)
    args = runner.overrides(
        run, data, "trainer.max_steps=-1", "trainer.max_epochs=2", "data.on_error=skip", "data.num_workers=2"
    )
    assert _run(args, run) == 0, runner.log_tail(run)
    assert _csv(run, "data/skipped") == [2.0, 2.0]
    log = runner.log_tail(run, 50000)
    for epoch in (0, 1):
        assert f"epoch {epoch}: 2 train sample(s) skipped because their image could not be read" in log
    assert "and 1 removed when the annotation file was read" in log and "missing_image: 1" in log
    assert log.count("skipping ") == 4 and "1.png" in log and "6.png" in log  # per sample, from the workers
