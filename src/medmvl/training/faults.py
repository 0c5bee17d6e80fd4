"""What a run does when the machine or the numbers fail: atomic checkpoints, preemption, non-finite losses.

* :class:`AtomicCheckpointIO` writes each checkpoint to a temporary file in the target's folder and
  renames it into place (``os.replace``). Lightning's default writes through an fsspec transaction whose
  temporary file lives in the system temp folder: when that is another filesystem (``/tmp`` on a local
  disk, outputs on NFS/Lustre), the final move is a copy, and a kill during it leaves a truncated
  ``last.ckpt`` that ``ckpt_path=last`` would then pick. It also loads every checkpoint with
  ``torch.load(weights_only=True)``: a checkpoint is data, and one carrying pickled code is refused.
* :class:`PreemptionCheckpoint` turns SIGTERM (SLURM/Kubernetes preemption, ``scancel``) and SIGUSR1
  (``sbatch --signal=USR1@90``) into "finish this step, write ``last.ckpt``, stop": the run exits with
  status ``128 + signal`` and resumes with ``ckpt_path=last``.
* :class:`NonFiniteLossError` is what ``nonfinite_loss: raise`` raises (see ``MedVLMModule``).
"""

from __future__ import annotations

import logging
import os
import pickle
import signal
from collections.abc import Callable
from pathlib import Path
from types import FrameType
from typing import Any

import fsspec
import lightning as L
import torch
from lightning.fabric.plugins.io.torch_io import TorchCheckpointIO
from lightning.pytorch.utilities.exceptions import SIGTERMException

log = logging.getLogger(__name__)

TMP_MARK = ".tmp-"


class UnsafeCheckpointError(RuntimeError):
    """A checkpoint holds pickled objects beyond tensors and plain containers; it was not loaded."""


class NonFiniteLossError(FloatingPointError):
    """A training loss was NaN or infinite; the message names the batch and its sample ids."""


class RunPreempted(SIGTERMException):
    """Raised after :class:`PreemptionCheckpoint` saved ``last.ckpt`` on a signal; ``train`` catches it.

    Attributes:
        signum: The signal received.
        checkpoint: The checkpoint written.
    """

    def __init__(self, signum: int, checkpoint: str) -> None:
        super().__init__()
        self.signum, self.checkpoint = signum, checkpoint


class AtomicCheckpointIO(TorchCheckpointIO):
    """``TorchCheckpointIO`` with atomic local writes and ``weights_only=True`` loads.

    A local checkpoint is written to ``.<name>.tmp-<pid>`` next to its target, flushed to disk, and renamed
    over the target, so a reader sees the old file or the new one, never a prefix. Temporary files left by
    a killed writer are removed by the next successful write of the same target. Remote paths (``s3://``
    ...) keep Lightning's fsspec transaction.
    """

    def save_checkpoint(self, checkpoint: dict[str, Any], path: Any, storage_options: Any = None) -> None:
        if storage_options is not None or fsspec.utils.get_protocol(str(path)) not in ("file", "local"):
            return super().save_checkpoint(checkpoint, path, storage_options)
        target = Path(fsspec.utils.stringify_path(path)).expanduser()
        target.parent.mkdir(parents=True, exist_ok=True)
        tmp = target.with_name(f".{target.name}{TMP_MARK}{os.getpid()}")
        try:
            with open(tmp, "wb") as f:
                torch.save(checkpoint, f)
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp, target)
        except BaseException:
            tmp.unlink(missing_ok=True)
            raise
        _fsync_dir(target.parent)
        for stale in target.parent.glob(f".{target.name}{TMP_MARK}*"):
            stale.unlink(missing_ok=True)

    def load_checkpoint(
        self,
        path: Any,
        map_location: Callable | Any = lambda storage, loc: storage,
        weights_only: bool | None = None,
    ) -> dict[str, Any]:
        """Load with ``weights_only=True`` (tensors, numbers, strings and containers only).

        Raises:
            ValueError: ``weights_only=False`` was asked for.
            UnsafeCheckpointError: The file holds other pickled objects (e.g. a code payload).
        """
        if weights_only is False:
            raise ValueError(
                f"{path}: medmvl loads checkpoints with weights_only=True only (a pickle can run code)"
            )
        try:
            return super().load_checkpoint(path, map_location=map_location, weights_only=True)
        except pickle.UnpicklingError as err:
            first = str(err).strip().splitlines()[0]
            raise UnsafeCheckpointError(
                f"refusing checkpoint {str(path)!r}: it holds pickled objects other than tensors and plain "
                f"containers, and medmvl loads checkpoints with torch.load(weights_only=True) ({first}). "
                "Only resume from checkpoints that medmvl wrote."
            ) from err


def _fsync_dir(folder: Path) -> None:
    """Persist a rename in ``folder`` (no-op where directories cannot be opened, e.g. Windows)."""
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


class PreemptionCheckpoint(L.Callback):
    """On SIGTERM or SIGUSR1: finish the running training step, save ``last.ckpt``, stop the run.

    Handlers are installed when training starts (after Lightning's own; they are chained, so Lightning's
    SIGTERM bookkeeping and SLURM auto-requeue on SIGUSR1 still run) and restored when it ends. The
    checkpoint is written in ``on_train_batch_end``, the point where ``ModelCheckpoint`` saves every-N-step
    checkpoints, then :class:`RunPreempted` stops the fit; ``medmvl.cli.train`` exits with ``128 + signal``.
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
        path = self._save(trainer)
        raise RunPreempted(self.received or signal.SIGTERM, path)

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
