"""SIGKILL a tiny CPU training run at random moments (one of them in the middle of a checkpoint write),
resume it each time with ``ckpt_path=last``, and end with the weights of a run that was never killed.

The run: 12 optimizer steps (batches of 3 over 8 samples, so kills land mid-epoch and at epoch ends),
``last.ckpt`` written after every step. ``MEDMVL_FAULT_SEED`` replays a failing schedule.
"""

from __future__ import annotations

import os
import random
import signal
import time
from pathlib import Path

import pytest
import torch

from medmvl.training.checkpoint_io import TMP_MARK
from tests.helpers import runner
from tests.helpers.colour import write_colour_set

STEPS = 12
KILLS = 5


def _data(tmp_path: Path) -> list[str]:
    ann = write_colour_set(tmp_path / "data")
    return [f"data.annotations={ann}", f"data.image_dir={tmp_path / 'data' / 'imgs'}"]


def _args(run: Path, data: list[str]) -> list[str]:
    return runner.overrides(run, data, f"trainer.max_steps={STEPS}", "ckpt_path=last")


def _load(path: Path) -> dict:
    return torch.load(path, map_location="cpu", weights_only=True)


def _finish(run: Path, data: list[str], timeout: float = 240.0) -> int:
    """Run to the end; returns the child's pid."""
    proc = runner.start(_args(run, data), run)
    proc.join(timeout)
    assert proc.exitcode == 0, runner.log_tail(run)
    return proc.pid


def _kill_during_write(proc, run: Path, after_step: int) -> tuple[bool, int]:
    """SIGKILL as soon as a temporary file replacing an existing ``last.ckpt`` has bytes in it (after step
    ``after_step``); returns whether the kill hit that write, and the temporary file's size then."""
    runner.wait_for(proc, run, after_step)
    folder = run / "checkpoints"
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and proc.is_alive():
        tmps = list(folder.glob(f".last.ckpt{TMP_MARK}*")) if folder.exists() else []
        if (folder / "last.ckpt").exists() and any(_size(p) > 0 for p in tmps):  # written, not renamed
            os.kill(proc.pid, signal.SIGKILL)
            proc.join()
            left = [p for p in tmps if p.exists()]
            return bool(left), (left[0].stat().st_size if left else 0)
        time.sleep(0.0005)
    raise AssertionError(f"no checkpoint write seen after step {after_step}:\n{runner.log_tail(run)}")


def _size(path: Path) -> int:
    try:
        return path.stat().st_size
    except FileNotFoundError:
        return 0


@pytest.mark.slow
def test_sigkill_at_random_moments_resumes_to_the_same_weights(tmp_path: Path) -> None:
    seed = int(os.environ.get("MEDMVL_FAULT_SEED", random.randrange(2**31)))
    rng = random.Random(seed)
    note = f"(replay with MEDMVL_FAULT_SEED={seed})"
    data = _data(tmp_path)

    reference = tmp_path / "reference"
    _finish(reference, data)
    expected = _load(reference / "checkpoints" / "last.ckpt")
    assert expected["global_step"] == STEPS

    run = tmp_path / "killed"
    last = run / "checkpoints" / "last.ckpt"
    targets = sorted(rng.sample(range(1, STEPS - 1), KILLS))  # a step each kill lands in (0-based)
    during_write = rng.randrange(KILLS)
    had_checkpoint = False
    events = []
    starts = {}  # child pid -> global step of the last.ckpt it should resume from
    for k, target in enumerate(targets):
        (run / "progress").unlink(missing_ok=True)
        proc = runner.start(_args(run, data), run)
        starts[proc.pid] = _load(last)["global_step"] if last.exists() else 0
        if k == during_write:
            torn, size = _kill_during_write(proc, run, target)
            for _ in range(2):  # the write finished between seeing its file and the kill: try again
                if torn:
                    break
                events.append(("write-missed", target, torn, size))
                (run / "progress").unlink(missing_ok=True)
                proc = runner.start(_args(run, data), run)
                starts[proc.pid] = _load(last)["global_step"]
                torn, size = _kill_during_write(proc, run, target)
            events.append(("write", target, torn, size))
        else:
            runner.wait_for(proc, run, target)
            time.sleep(rng.uniform(0.0, 0.3))  # somewhere in forward, backward, optimizer or checkpoint
            assert proc.is_alive(), f"run ended before the kill {note}:\n{runner.log_tail(run)}"
            os.kill(proc.pid, signal.SIGKILL)
            proc.join()
            events.append(("step", target, None, None))
        assert proc.exitcode == -signal.SIGKILL
        # what ckpt_path=last will pick is a whole checkpoint, or none before the first one was complete
        if last.exists() or had_checkpoint:
            assert 1 <= _load(last)["global_step"] < STEPS, (events, note)
            had_checkpoint = True
    ((_, _, torn, size),) = [e for e in events if e[0] == "write"]
    assert torn and 0 < size <= last.stat().st_size, f"the kill missed the write {events} {note}"

    (run / "progress").unlink(missing_ok=True)
    starts[_finish(run, data)] = _load(last)["global_step"]
    assert sorted(starts.values())[-1] > 0, f"no kill left a checkpoint to resume {events} {note}"
    first = runner.first_steps(run)
    assert {pid: first.get(pid) for pid in starts} == starts, f"a run did not resume from last.ckpt {note}"
    final = _load(last)
    assert final["global_step"] == STEPS
    assert not list(last.parent.glob(f".last.ckpt{TMP_MARK}*")), "stale temporary checkpoint left behind"
    differing = {
        k: float((v.float() - final["state_dict"][k].float()).abs().max())
        for k, v in expected["state_dict"].items()
        if not torch.equal(v, final["state_dict"][k])
    }
    assert not differing, f"weights differ from the uninterrupted run {note}: {differing} kills {events}"
    assert _tensors(final["optimizer_states"]) == _tensors(expected["optimizer_states"]), note
    assert final["lr_schedulers"] == expected["lr_schedulers"], note


def _tensors(tree: object) -> list:
    """Every leaf of a nested checkpoint entry, tensors as lists (for an exact comparison)."""
    if isinstance(tree, dict):
        return [(k, _tensors(v)) for k, v in sorted(tree.items(), key=lambda kv: str(kv[0]))]
    if isinstance(tree, (list, tuple)):
        return [_tensors(v) for v in tree]
    return tree.tolist() if isinstance(tree, torch.Tensor) else tree
