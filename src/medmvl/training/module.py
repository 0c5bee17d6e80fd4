"""The LightningModule that drives a :class:`~medmvl.models.vlm.MedVLM`: steps, optimizer, logging."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Mapping
from typing import Any

import lightning as L
import torch
from torch import nn

from medmvl.training.stages import apply_stage, render, trainable_table

log = logging.getLogger(__name__)


class MedVLMModule(L.LightningModule):
    """Trains a MedVLM under a stage (which modules are frozen or full, and their learning rates).

    Args:
        model: the built MedVLM (a plain ``nn.Module``; not saved as a hyper-parameter).
        optimizer: partial optimizer (``_partial_: true``), called with the stage's parameter groups.
        scheduler: partial schedule called as ``scheduler(optimizer, num_training_steps=...)``; stepped
            every optimizer step.
        stage: per-module ``{mode, lr, weight_decay}`` (see :mod:`medmvl.training.stages`).
    """

    def __init__(
        self,
        model: nn.Module,
        *,
        optimizer: Callable[..., torch.optim.Optimizer],
        scheduler: Callable[..., Any] | None = None,
        stage: Mapping[str, Mapping[str, Any]],
    ) -> None:
        super().__init__()
        self.save_hyperparameters(ignore=["model", "optimizer", "scheduler"])
        self.model = model
        self.optimizer_factory = optimizer
        self.scheduler_factory = scheduler
        self.stage = {k: dict(v) for k, v in stage.items()}
        self.param_groups = apply_stage(model, self.stage)
        self._t_batch = 0.0

    def on_fit_start(self) -> None:
        # trained modules in train mode (dropout on), frozen ones in eval mode; Lightning keeps these modes
        for name, spec in self.stage.items():
            getattr(self.model, name).train(spec.get("mode", "frozen") != "frozen")
        table, stats = trainable_table(self.model)
        log.info("trainable parameters per component\n%s", render(table))
        if self.logger is not None:
            flat = {f"params/{k}/{kind}": v for k, s in stats.items() for kind, v in s.items()}
            self.logger.log_hyperparams(flat)

    def forward(self, batch: Mapping[str, Any]) -> dict[str, torch.Tensor]:
        return self.model(
            input_ids=batch["input_ids"],
            attention_mask=batch["attention_mask"],
            labels=batch["labels"],
            pixel_values=batch.get("pixel_values"),
        )

    def on_train_batch_start(self, batch: Any, batch_idx: int) -> None:
        self._t_batch = time.perf_counter()

    def training_step(self, batch: Mapping[str, Any] | None, batch_idx: int) -> torch.Tensor | None:
        if batch is None:  # every sample of the batch was skipped (data.on_error=skip), already counted
            return None
        out = self(batch)
        loss = out["loss"]
        if not torch.isfinite(loss):
            raise FloatingPointError(
                f"non-finite training loss {loss.item()} on batch {batch_idx}, "
                f"sample ids {list(batch.get('ids', []))}"
            )
        bsz = batch["input_ids"].shape[0]
        self.log("train/loss", loss, prog_bar=True, batch_size=bsz)
        return loss

    def on_train_batch_end(self, outputs: Any, batch: Mapping[str, Any] | None, batch_idx: int) -> None:
        dt = time.perf_counter() - self._t_batch
        if batch is not None and dt > 0:
            tokens = float(batch["attention_mask"].sum())
            self.log("train/tokens_per_s", tokens / dt, batch_size=batch["input_ids"].shape[0])

    def validation_step(self, batch: Mapping[str, Any] | None, batch_idx: int) -> torch.Tensor | None:
        if batch is None:
            return None
        out = self(batch)
        self.log(
            "val/loss", out["loss"], prog_bar=True, batch_size=batch["input_ids"].shape[0], sync_dist=True
        )
        return out["loss"]

    def configure_optimizers(self) -> Any:
        optimizer = self.optimizer_factory(self.param_groups)
        if self.scheduler_factory is None:
            return optimizer
        steps = int(self.trainer.estimated_stepping_batches)
        scheduler = self.scheduler_factory(optimizer, num_training_steps=steps)
        return {
            "optimizer": optimizer,
            "lr_scheduler": {"scheduler": scheduler, "interval": "step", "name": "train/lr"},
        }
