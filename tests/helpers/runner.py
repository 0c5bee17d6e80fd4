"""Training runs in child processes that a test can signal or SIGKILL at chosen moments.

Children come from a ``forkserver`` that has imported medmvl, torch, transformers and MONAI and loaded the
tiny stack's tokenizer once (``tests.helpers.warm``), so a run starts training in about a second
instead of the ~15 s a fresh interpreter needs (a plain ``fork`` of the pytest process would inherit its
OpenMP thread pool, which can deadlock). Each child writes its output to
``<run>/child.log`` and its progress to ``<run>/progress`` through :class:`StepProbe`.
"""

from __future__ import annotations

import multiprocessing as mp
import os
import sys
import time
from pathlib import Path
from typing import Any

import lightning as L
import torch

TINY = [
    "stage=pretrain",
    "stage.encoder.mode=full",
    "+stage.encoder.lr=1e-3",
    "trainer.max_epochs=100",
    "trainer.log_every_n_steps=1",
    "data.batch_size=3",
    # a narrower LLM than llm=tiny: the 151k-token embedding dominates every checkpoint write
    "llm.config.hidden_size=32",
    "llm.config.intermediate_size=64",
    "llm.config.num_attention_heads=2",
    "llm.config.num_key_value_heads=1",
    "save_model=false",
    "callbacks.rich_progress_bar=null",
    "callbacks.val_predictions=null",
    "callbacks.model_checkpoint.every_n_train_steps=1",
    "callbacks.model_checkpoint.save_top_k=0",
]


class StepProbe(L.Callback):
    """Writes ``<global_step> <phase>`` to ``path`` at each training step's start and end (for the parent),
    and appends ``<pid> <global_step> <phase>`` to ``path.history``."""

    def __init__(self, path: str) -> None:
        self.path = path

    def _write(self, text: str) -> None:
        tmp = f"{self.path}.tmp"
        with open(tmp, "w") as f:
            f.write(text)
        os.replace(tmp, self.path)
        with open(f"{self.path}.history", "a") as f:
            f.write(f"{os.getpid()} {text}\n")

    def on_train_batch_start(self, trainer: L.Trainer, *args: Any) -> None:
        self._write(f"{trainer.global_step} start")

    def on_train_batch_end(self, trainer: L.Trainer, *args: Any) -> None:
        self._write(f"{trainer.global_step} end")


def overrides(run: Path, data: list[str], *extra: str) -> list[str]:
    probe = run / "progress"
    return [
        *TINY,
        *data,
        f"+callbacks.probe._target_={__name__}.StepProbe",
        f"+callbacks.probe.path={probe}",
        *extra,
    ]


def _child(args: list[str], run: str) -> None:
    os.makedirs(run, exist_ok=True)
    fd = os.open(os.path.join(run, "child.log"), os.O_WRONLY | os.O_CREAT | os.O_APPEND)
    os.dup2(fd, 1)
    os.dup2(fd, 2)
    from medmvl.cli.train import train
    from tests.conftest import compose_train

    metrics = train(compose_train(args, output_dir=Path(run)))
    sys.stdout.flush()
    if "stopped_by_signal" in metrics:  # what medmvl.cli.train.main does
        sys.exit(128 + metrics["stopped_by_signal"])


_CTX = mp.get_context("forkserver")
_CTX.set_forkserver_preload([__name__, "tests.helpers.warm"])


def start(args: list[str], run: Path, daemon: bool = True) -> mp.Process:
    """Start ``train(compose_train(args))`` in a child process writing to ``run`` (``daemon=False`` for
    runs with DataLoader workers; the caller then kills it if it outlives the test)."""
    proc = _CTX.Process(target=_child, args=(args, str(run)), daemon=daemon)
    proc.start()
    return proc


def progress(run: Path) -> tuple[int, str]:
    """The child's last ``(global_step, "start" | "end")``; ``(-1, "")`` before its first step."""
    try:
        step, phase = (run / "progress").read_text().split()
        return int(step), phase
    except (FileNotFoundError, ValueError):
        return -1, ""


def wait_for(proc: mp.Process, run: Path, step: int, timeout: float = 120.0) -> int:
    """Wait until the child has started training step ``step`` (0-based global step); returns it."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        now, _ = progress(run)
        if now >= step:
            return now
        if not proc.is_alive():
            raise RuntimeError(f"child exited ({proc.exitcode}) before step {step}:\n{log_tail(run)}")
        time.sleep(0.005)
    raise TimeoutError(f"child did not reach step {step} in {timeout} s:\n{log_tail(run)}")


def first_steps(run: Path) -> dict[int, int]:
    """The global step each child process (by pid) started training at."""
    first: dict[int, int] = {}
    history = run / "progress.history"
    for line in history.read_text().splitlines() if history.exists() else []:
        pid, step, _ = line.split()
        first.setdefault(int(pid), int(step))
    return first


def log_tail(run: Path, chars: int = 4000) -> str:
    path = run / "child.log"
    return path.read_text(errors="replace")[-chars:] if path.exists() else "<no log>"


class PoisonLoss(L.Callback):
    """Makes the loss NaN on every batch holding sample ``sample_id`` (NaN connector weights for that step,
    restored after it); records whether the step left the trainable weights untouched."""

    def __init__(self, sample_id: str, path: str) -> None:
        self.sample_id, self.path = sample_id, path
        self._saved: list[Any] | None = None

    def on_train_batch_start(
        self, trainer: L.Trainer, pl_module: L.LightningModule, batch: Any, *args: Any
    ) -> None:
        if self.sample_id not in batch.get("ids", []):
            return
        params = [p for p in pl_module.model.parameters() if p.requires_grad]
        self._saved = [p.detach().clone() for p in params]
        for p in pl_module.model.connector.parameters():
            p.data.fill_(float("nan"))

    def on_train_batch_end(self, trainer: L.Trainer, pl_module: L.LightningModule, *args: Any) -> None:
        if self._saved is None:
            return
        params = [p for p in pl_module.model.parameters() if p.requires_grad]
        connector = {id(p) for p in pl_module.model.connector.parameters()}
        untouched = all(
            torch.equal(p, s) for p, s in zip(params, self._saved, strict=True) if id(p) not in connector
        )
        with open(self.path, "a") as f:
            f.write(f"{trainer.global_step} {int(untouched)}\n")
        for p, s in zip(params, self._saved, strict=True):
            p.data.copy_(s)
        self._saved = None
