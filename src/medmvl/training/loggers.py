"""Experiment loggers: W&B that stays offline without an API key, and one call to log a table anywhere.

Why this file: Lightning's ``WandbLogger`` goes online by default (a prompt or an error without a key, a
network call in every test) and never closes its run, so the jobs of a Hydra sweep, which run one after the
other in one process, would all write into the first job's run. :class:`WandbLogger` picks the mode from
the environment and finishes the run when ``fit`` ends. :func:`log_table` sends rows (text, numbers and
``[h, w, 3]`` uint8 images) to each logger of a trainer in that logger's own form, so callbacks stay
logger-agnostic.

Lightning's ``CSVLogger`` writes ``metrics.csv`` afresh in each process, deleting the rows of an
interrupted run; :class:`CSVLogger` here keeps them, drops the rows past the checkpoint (the resumed run
logs those steps again) and appends.
"""

from __future__ import annotations

import csv
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
from lightning.fabric.loggers.csv_logs import _ExperimentWriter
from lightning.pytorch.loggers import CSVLogger as _LightningCSVLogger
from lightning.pytorch.loggers import Logger, TensorBoardLogger
from lightning.pytorch.loggers import WandbLogger as _LightningWandbLogger
from lightning.pytorch.loggers.csv_logs import ExperimentWriter
from lightning.pytorch.utilities import rank_zero_only


def resolve_wandb_mode(offline: bool | None) -> str:
    """The W&B mode: ``offline``/``online`` when ``offline`` is given, else ``$WANDB_MODE`` if set, else
    ``online`` only when ``$WANDB_API_KEY`` is set."""
    if offline is not None:
        return "offline" if offline else "online"
    if os.environ.get("WANDB_MODE"):
        return os.environ["WANDB_MODE"]
    return "online" if os.environ.get("WANDB_API_KEY") else "offline"


def _hydra_names() -> tuple[str | None, str | None]:
    """(run name, group) from the Hydra job: a sweep job is named by its overrides, grouped by its sweep."""
    try:
        from hydra.core.hydra_config import HydraConfig
        from hydra.types import RunMode
    except ImportError:  # pragma: no cover - hydra is a dependency
        return None, None
    if not HydraConfig.initialized():
        return None, None
    hc = HydraConfig.get()
    if hc.mode == RunMode.MULTIRUN:
        return f"{hc.job.num}_{hc.job.override_dirname}".rstrip("_"), Path(hc.sweep.dir).name
    return Path(hc.runtime.output_dir).name, None


class WandbLogger(_LightningWandbLogger):
    """Lightning's ``WandbLogger``, offline unless told otherwise, and closed at the end of ``fit``.

    Args:
        save_dir: Folder that receives ``wandb/<offline-run-...>`` (created if missing); the run folder.
        project: W&B project.
        name: Run name (default: the Hydra sweep job's ``<num>_<overrides>`` or the run folder's name).
        group: Run group (default: the Hydra sweep folder's name in ``-m`` runs).
        tags: Run tags.
        offline: ``True``/``False`` force the mode; ``None``: ``$WANDB_MODE`` if set, else online only
            with ``$WANDB_API_KEY`` (sync an offline run later with ``wandb sync <save_dir>/wandb/offline-run-*``).
        log_model: Upload checkpoints as artifacts (online only).
        **kwargs: Passed to ``wandb.init`` (``entity``, ``notes``, ``job_type``...).
    """

    def __init__(
        self,
        *,
        save_dir: str | os.PathLike,
        project: str = "medmvl",
        name: str | None = None,
        group: str | None = None,
        tags: Sequence[str] | None = None,
        offline: bool | None = None,
        log_model: bool | str = False,
        **kwargs: Any,
    ) -> None:
        try:
            import wandb  # noqa: F401
        except ImportError as err:
            raise ModuleNotFoundError(
                "logger=wandb needs the wandb package: pip install 'medmvl[wandb]' (or use logger=csv)"
            ) from err
        self.mode = resolve_wandb_mode(offline)
        if log_model and self.mode != "online":
            raise ValueError(
                f"logger.wandb.log_model={log_model!r} needs an online run; mode is {self.mode!r}"
            )
        Path(save_dir).mkdir(parents=True, exist_ok=True)
        hydra_name, hydra_group = _hydra_names()
        super().__init__(
            save_dir=os.fspath(save_dir),
            project=project,
            name=name or hydra_name,
            group=group or hydra_group,
            tags=list(tags) if tags else None,
            log_model=log_model,
            mode=self.mode,  # passed to wandb.init; Lightning's own offline flag would set $WANDB_MODE globally
            **kwargs,
        )
        if self._wandb_init.get("anonymous") is None:  # wandb warns about the setting even when unset
            self._wandb_init.pop("anonymous", None)

    @rank_zero_only
    def finalize(self, status: str) -> None:
        """Log checkpoints (Lightning), then finish the run so the next job of a sweep starts its own."""
        super().finalize(status)
        if status in ("success", "failed") and self._experiment is not None:
            self._experiment.finish(exit_code=0 if status == "success" else 1)
            self._experiment = None


def to_markdown(columns: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    """A markdown table of the non-image cells (images become ``[image]``)."""

    def cell(value: Any) -> str:
        if isinstance(value, np.ndarray):
            return "[image]"
        return str(value).replace("|", "\\|").replace("\n", " ")

    lines = ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    lines += ["| " + " | ".join(cell(v) for v in row) + " |" for row in rows]
    return "\n".join(lines)


def shows_tables(loggers: Sequence[Logger]) -> bool:
    """Whether any of ``loggers`` displays tables (W&B, TensorBoard); CSV does not."""
    return any(isinstance(lg, (_LightningWandbLogger, TensorBoardLogger)) for lg in loggers)


@rank_zero_only
def log_table(
    loggers: Sequence[Logger], key: str, columns: Sequence[str], rows: Sequence[Sequence[Any]], step: int
) -> None:
    """Log a table to every logger that can show one.

    W&B: a ``wandb.Table`` (``np.uint8 [h, w, 3]`` cells become ``wandb.Image``); TensorBoard: the table as
    markdown text plus one image per row with an image. Other loggers (CSV) are skipped: callers write their
    own file when they want one.

    Args:
        loggers: ``trainer.loggers``.
        key: Table name, e.g. ``val/predictions``.
        columns: Column names.
        rows: One list per row, ``len(columns)`` cells each.
        step: Global step the table belongs to.
    """
    for logger in loggers:
        if isinstance(logger, _LightningWandbLogger):
            import wandb

            data = [[wandb.Image(v) if isinstance(v, np.ndarray) else v for v in row] for row in rows]
            table = wandb.Table(columns=list(columns), data=data)
            logger.experiment.log({key: table, "trainer/global_step": step})
        elif isinstance(logger, TensorBoardLogger):
            writer = logger.experiment
            writer.add_text(key, to_markdown(columns, rows), global_step=step)
            for i, row in enumerate(rows):
                for name, value in zip(columns, row):
                    if isinstance(value, np.ndarray):
                        writer.add_image(f"{key}/{i}_{name}", value, global_step=step, dataformats="HWC")


class _AppendingWriter(ExperimentWriter):
    """Lightning's CSV writer that keeps an existing ``metrics.csv`` and appends to it."""

    def _check_log_dir_exists(self) -> None:
        if self._fs.isfile(self.metrics_file_path):
            with self._fs.open(self.metrics_file_path, "r", newline="") as f:
                self.metrics_keys = list(next(csv.reader(f), []))


class CSVLogger(_LightningCSVLogger):
    """Lightning's ``CSVLogger`` whose ``metrics.csv`` survives a resume (same arguments).

    A resumed run calls :meth:`resume_at` with the checkpoint's step: rows logged after it by the
    interrupted run are dropped (the resumed run logs them again), earlier rows stay, new rows append.
    """

    @property
    def experiment(self) -> _ExperimentWriter:  # noqa: D102 - Lightning's
        if self._experiment is None:
            self._fs.makedirs(self.root_dir, exist_ok=True)
            self._experiment = _AppendingWriter(log_dir=self.log_dir)
        return self._experiment

    @rank_zero_only
    def after_save_checkpoint(self, checkpoint_callback: Any) -> None:
        """Flush the rows logged so far, so ``metrics.csv`` holds every step a checkpoint holds."""
        self.save()

    @rank_zero_only
    def resume_at(self, step: int) -> None:
        """Drop the rows of ``metrics.csv`` with ``step >= step`` (logged after the checkpoint)."""
        path = os.path.join(self.log_dir, _ExperimentWriter.NAME_METRICS_FILE)
        if not os.path.isfile(path):
            return
        with open(path, newline="") as f:
            reader = csv.DictReader(f)
            fields, rows = reader.fieldnames or [], list(reader)
        kept = [r for r in rows if not r.get("step") or int(float(r["step"])) < step]
        with open(path, "w", newline="") as f:
            writer = csv.DictWriter(f, fieldnames=fields)
            writer.writeheader()
            writer.writerows(kept)
