"""Preemption: SIGTERM / SIGUSR1 finish the running step, write ``last.ckpt`` and stop the run.

:class:`PreemptionCheckpoint` turns SIGTERM (SLURM/Kubernetes preemption, ``scancel``) and SIGUSR1
(``sbatch --signal=USR1@90``) into "finish this step, write ``last.ckpt``, stop": the run exits with
status ``128 + signal`` and resumes with ``ckpt_path=last``.
"""

from __future__ import annotations

import logging
import os
import signal
from types import FrameType
from typing import Any

import lightning as L
from lightning.pytorch.utilities.exceptions import SIGTERMException

log = logging.getLogger(__name__)


class RunPreempted(SIGTERMException):
    """Raised after :class:`PreemptionCheckpoint` saved ``last.ckpt`` on a signal; ``train`` catches it.

    Attributes:
        signum: The signal received.
        checkpoint: The checkpoint written.
    """

    def __init__(self, signum: int, checkpoint: str) -> None:
        super().__init__()
        self.signum, self.checkpoint = signum, checkpoint


class PreemptionCheckpoint(L.Callback):
    """On SIGTERM or SIGUSR1: finish the running training step, save ``last.ckpt``, stop the run.

    Handlers are installed when training starts (after Lightning's own; they are chained, so Lightning's
    SIGTERM bookkeeping and SLURM auto-requeue on SIGUSR1 still run) and restored when it ends. The
    checkpoint is written in ``on_train_batch_end``, the point where ``ModelCheckpoint`` saves every-N-step
    checkpoints, then :class:`RunPreempted` stops the fit; ``medmvl.cli.train`` exits with ``128 + signal``.
    The step's metrics are logged before the save, so its ``metrics.csv`` row is there once after a resume.
    A signal during validation is acted on at the next training step; a SIGTERM that Lightning acts on first
    (it stops mid-validation) is saved from ``on_exception``.

    Args:
        dirpath: Folder of ``last.ckpt`` (the ``ModelCheckpoint`` folder; default: its ``dirpath``, else
            ``<default_root_dir>/checkpoints``).
        signals: Signal names to handle.
    """

    def __init__(self, dirpath: str | None = None, signals: tuple[str, ...] = ("SIGTERM", "SIGUSR1")) -> None:
        self.dirpath = dirpath
        self.signals = tuple(getattr(signal, name) for name in signals if hasattr(signal, name))
        self.received: int | None = None
        self.saved_to: str | None = None
        self._previous: dict[int, Any] = {}

    def _handler(self, signum: int, frame: FrameType | None) -> None:
        if self.received is None:
            self.received = signum
        previous = self._previous.get(signum)
        if callable(previous):
            previous(signum, frame)

    def _install(self) -> None:
        for signum in self.signals:
            try:
                self._previous[signum] = signal.signal(signum, self._handler)
            except ValueError:  # not the main thread: leave signals to whoever owns them
                return

    def _restore(self) -> None:
        for signum, previous in self._previous.items():
            signal.signal(signum, previous if previous is not None else signal.SIG_DFL)
        self._previous = {}

    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self.received, self.saved_to = None, None
        self._install()

    def on_train_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._restore()

    def on_train_batch_end(
        self, trainer: L.Trainer, pl_module: L.LightningModule, outputs: Any, batch: Any, batch_idx: int
    ) -> None:
        if not trainer.strategy.reduce_boolean_decision(self.received is not None, all=False):
            return
        self._log_step(trainer, pl_module, outputs, batch, batch_idx)
        path = self._save(trainer)
        raise RunPreempted(self.received or signal.SIGTERM, path)

    @staticmethod
    def _log_step(
        trainer: L.Trainer, pl_module: L.LightningModule, outputs: Any, batch: Any, batch_idx: int
    ) -> None:
        """Send this step's metrics to the loggers now. Lightning does that after every callback's
        ``on_train_batch_end`` (after the LightningModule's own, which logs ``train/tokens_per_s``), which
        the stop skips; the resumed run starts at the next step, so the step's row would never be written.
        Lightning has no public call for it: its logger connector's, when there is one."""
        pl_module.on_train_batch_end(outputs, batch, batch_idx)
        connector = getattr(trainer, "_logger_connector", None)
        if connector is not None:
            connector.update_train_step_metrics()

    def on_exception(
        self, trainer: L.Trainer, pl_module: L.LightningModule, exception: BaseException
    ) -> None:
        self._restore()
        if isinstance(exception, SIGTERMException) and self.saved_to is None and self.received is not None:
            self._save(trainer)

    def _save(self, trainer: L.Trainer) -> str:
        folder = self.dirpath
        if folder is None:
            callback = trainer.checkpoint_callback
            folder = getattr(callback, "dirpath", None) or os.path.join(
                trainer.default_root_dir, "checkpoints"
            )
        path = os.path.join(folder, "last.ckpt")
        trainer.save_checkpoint(path, weights_only=False)  # the full training state, not weights only
        self.saved_to = path
        name = signal.Signals(self.received).name if self.received else "signal"
        log.warning(
            "%s received: saved %s at step %d; resume with the same run folder and ckpt_path=last",
            name,
            path,
            trainer.global_step,
        )
        return path
