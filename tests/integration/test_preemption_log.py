"""The step running when SIGTERM arrives finishes, is checkpointed, and its ``metrics.csv`` row is there
exactly once after the run is resumed (the resumed run starts at the next step)."""

from __future__ import annotations

import csv
import os
import signal
import time
from pathlib import Path

import lightning as L
import pytest

from tests.helpers import runner
from tests.helpers.colour import write_colour_set

STEPS = 8


class SlowStep(L.Callback):
    """Each training step takes at least ``seconds`` (a signal sent at its start lands inside it)."""

    def __init__(self, seconds: float) -> None:
        self.seconds = seconds

    def on_train_batch_start(self, *args) -> None:
        time.sleep(self.seconds)


def _rows(run: Path) -> list[int]:
    with open(run / "csv" / "metrics.csv") as f:
        return [int(r["step"]) for r in csv.DictReader(f) if r.get("train/loss")]


@pytest.mark.slow
def test_the_step_stopped_by_sigterm_is_logged_once_after_resume(tmp_path: Path) -> None:
    ann = write_colour_set(tmp_path / "data")
    data = [f"data.annotations={ann}", f"data.image_dir={tmp_path / 'data' / 'imgs'}"]
    run = tmp_path / "run"
    args = runner.overrides(
        run,
        data,
        f"trainer.max_steps={STEPS}",
        "ckpt_path=last",
        "callbacks.model_checkpoint.every_n_train_steps=null",  # only the preemption save
        f"+callbacks.slow._target_={__name__}.SlowStep",
        "+callbacks.slow.seconds=0.5",
    )
    proc = runner.start(args, run)
    deadline = time.monotonic() + 120
    while runner.progress(run) != (2, "start") and time.monotonic() < deadline:  # step 2 is running
        assert proc.is_alive(), runner.log_tail(run)
        time.sleep(0.002)
    os.kill(proc.pid, signal.SIGTERM)
    proc.join(120)
    assert proc.exitcode == 128 + signal.SIGTERM, runner.log_tail(run)
    stopped_at = runner.progress(run)[0]  # the step that was running: it finished, then the run stopped
    assert stopped_at == 2 and "SIGTERM received: saved" in runner.log_tail(run)
    assert stopped_at in _rows(run), f"the stopped step {stopped_at} left no row: {_rows(run)}"

    proc = runner.start(args, run)
    proc.join(240)
    assert proc.exitcode == 0, runner.log_tail(run)
    assert _rows(run) == list(range(STEPS))
