"""The LightningModule that drives a :class:`~medmvl.models.vlm.MedVLM`: steps, optimizer, logging."""

from __future__ import annotations

import logging
import time
import warnings
from collections.abc import Callable, Mapping
from typing import Any, Literal

import lightning as L
import torch
from lightning.pytorch.utilities import CombinedLoader
from torch import nn

from medmvl.data.schema import PIXEL_KEYS
from medmvl.training import checkpoint as ckpt_meta
from medmvl.training.distributed import compile_blocks, is_sharded, shard_model
from medmvl.training.reproducibility import run_seed, seed_batch
from medmvl.training.stages import apply_stage, render, stage_modes, trainable_table

log = logging.getLogger(__name__)
# MedVLMModule caps log_every_n_steps at an epoch's optimizer steps, with a line of its own
warnings.filterwarnings(
    "ignore", message=r"The number of training batches \(\d+\) is smaller than the logging interval"
)


class NonFiniteLossError(FloatingPointError):
    """A training loss was NaN or infinite; the message names the batch and its sample ids."""


class MedVLMModule(L.LightningModule):
    """Trains a MedVLM under a stage (which modules are frozen or full, and their learning rates).

    Args:
        model: the built MedVLM (a plain ``nn.Module``; not saved as a hyper-parameter).
        optimizer: partial optimizer (``_partial_: true``), called with the stage's parameter groups.
        scheduler: partial schedule called as ``scheduler(optimizer, num_training_steps=...)``; stepped
            every optimizer step.
        stage: per-module ``{mode, lr, weight_decay}`` (see :mod:`medmvl.training.stages`).
        nonfinite_loss: a NaN/inf training loss ``raise``-s :class:`NonFiniteLossError`
            naming the batch's sample ids before the optimizer step (checked there, not after the
            forward, so the host never waits for the GPU mid-step), or the step is ``skip``-ped (checked
            after the forward: no backward, no optimizer step; counted as ``train/nonfinite_skipped`` per
            epoch; one process only).
        compile: ``torch.compile`` each LLM decoder layer in ``configure_model`` (top-level ``compile``).

    Samples the collator dropped (unreadable images under ``data.on_error=skip``; the batch's ``skipped``
    count) are summed over steps, DataLoader workers and ranks, logged per epoch as ``data/skipped`` and
    ``data/val_skipped``, and reported at the end of each epoch. A step that trains nothing (every sample
    dropped, or a non-finite loss skipped) logs no ``train/loss`` nor ``train/tokens_per_s`` (Lightning
    would repeat the previous step's). ``trainer.log_every_n_steps`` above an epoch's optimizer steps is
    lowered to them when training starts, so every epoch logs ``train/loss``.
    """

    def __init__(
        self,
        model: nn.Module,
        *,
        optimizer: Callable[..., torch.optim.Optimizer],
        scheduler: Callable[..., Any] | None = None,
        stage: Mapping[str, Mapping[str, Any]],
        nonfinite_loss: Literal["raise", "skip"] = "raise",
        compile: bool = False,
    ) -> None:
        super().__init__()
        if nonfinite_loss not in ("raise", "skip"):
            raise ValueError(f"nonfinite_loss must be 'raise' or 'skip', got {nonfinite_loss!r}")
        self.nonfinite_loss = nonfinite_loss
        self.compile_llm = compile
        self._compiled = False
        self._counts = {"train": 0, "val": 0, "nonfinite": 0}
        self._unchecked: list[tuple[torch.Tensor, tuple]] = []  # losses of the optimizer step in progress
        self.save_hyperparameters(ignore=["model", "optimizer", "scheduler"])
        self.model = model
        self.optimizer_factory = optimizer
        self.scheduler_factory = scheduler
        self.stage = {k: dict(v) for k, v in stage.items()}
        self.param_groups = apply_stage(model, self.stage)
        self._t_batch = 0.0
        self._logged_loss = False  # whether this training step logged a loss (it trained)
        self.seed = run_seed()  # seeds each training batch (exact resume); restored from checkpoints
        self._description: dict[str, Any] | None = None
        self._loader_states: list[dict[str, Any]] = []

    def on_fit_start(self) -> None:
        if self.nonfinite_loss == "skip" and self.trainer.world_size > 1:
            raise ValueError(
                "nonfinite_loss=skip needs a single process: a rank that skips its step would leave the "
                "others waiting in the gradient all-reduce; use nonfinite_loss=raise with DDP/FSDP"
            )
        # trained modules in train mode (dropout on), frozen ones in eval mode; Lightning keeps these modes
        for name, mode in stage_modes(self.model, self.stage).items():
            getattr(self.model, name).train(mode != "frozen")
        table, stats = trainable_table(self.model)
        log.info("trainable parameters per component\n%s", render(table))
        flat = {f"params/{k}/{kind}": v for k, s in stats.items() for kind, v in s.items()}
        for logger in self.loggers:
            logger.log_hyperparams(flat)

    def configure_model(self) -> None:
        """Shard the model with FSDP2 under ``trainer=fsdp`` (``ModelParallelStrategy``); else nothing.

        The stage was applied in ``__init__``, before sharding: LoRA adapters exist and ``requires_grad`` is
        final, so :func:`~medmvl.training.distributed.shard_model` can keep frozen and trainable
        parameters in separate units.
        """
        from lightning.pytorch.strategies import ModelParallelStrategy

        strategy = self.trainer.strategy
        if isinstance(strategy, ModelParallelStrategy) and not is_sharded(self.model):
            plan = getattr(strategy, "plan", {})
            shard_model(self.model, self.device_mesh["data_parallel"], compile=self.compile_llm, **plan)
            self._compiled = self.compile_llm
        elif self.compile_llm and not self._compiled:
            compile_blocks(self.model.llm)
            self._compiled = True

    def forward(self, batch: Mapping[str, Any]) -> dict[str, torch.Tensor]:
        return self.model(
            input_ids=batch["input_ids"],
            attention_mask=batch["attention_mask"],
            labels=batch["labels"],
            **{key: batch.get(key) for key in PIXEL_KEYS},  # each tower's inputs
            position_ids=batch.get("position_ids"),  # packed rows (data.packing=true)
            target_index=batch.get("target_index"),
        )

    def on_train_start(self) -> None:
        self._cap_log_interval()
        # Lightning 2.6 drops the saved loader positions when configure_optimizers reads
        # estimated_stepping_batches (Lightning issue #20550): hand them to the loaders here, before the first
        # batch is drawn (ResumableLoader starts its epoch lazily, at the first batch)
        states, self._loader_states = self._loader_states, []
        if states:
            CombinedLoader(self.trainer.train_dataloader)._load_state_dicts(states)

    def _cap_log_interval(self) -> None:
        """``log_every_n_steps`` above an epoch's optimizer steps would log no ``train/loss`` on short epochs
        (8 batches, interval 10): log at least once an epoch."""
        trainer = self.trainer
        batches = trainer.num_training_batches
        if not isinstance(batches, int) or batches < 1:  # an iterable dataset of unknown length
            return
        steps = max(1, -(-batches // max(1, trainer.accumulate_grad_batches)))  # optimizer steps per epoch
        if trainer.log_every_n_steps > steps:
            log.info(
                "trainer.log_every_n_steps=%d is more than the %d optimizer steps of an epoch: logging every "
                "%d steps",
                trainer.log_every_n_steps,
                steps,
                steps,
            )
            trainer.log_every_n_steps = steps

    def on_train_batch_start(self, batch: Any, batch_idx: int) -> None:
        self._logged_loss = False
        # dropout draws from a seed of (run seed, batch index over the run): a resumed run draws the same
        seed_batch(self.seed, self.trainer.fit_loop.epoch_loop.total_batch_idx)
        self._t_batch = time.perf_counter()

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        """Add the run seed, the architecture and the tokenizer (``medmvl.training.checkpoint``)."""
        if self._description is None:
            self._description = ckpt_meta.describe(self.model)
        checkpoint[ckpt_meta.KEY] = {"seed": self.seed, **self._description}

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        """Resume the run's batch seeds, and drop log rows the resumed run will write again."""
        self.seed = int((checkpoint.get(ckpt_meta.KEY) or {}).get("seed", self.seed))
        fit_state = checkpoint.get("loops", {}).get("fit_loop", {})
        self._loader_states = list(fit_state.get("state_dict", {}).get("combined_loader", []))
        # rows of steps >= the checkpoint's optimizer step are logged again by the resumed run
        fitting = self._trainer is not None and self.trainer.state.fn == "fit"
        for logger in self.trainer.loggers if fitting else []:
            if callable(resume_at := getattr(logger, "resume_at", None)):
                resume_at(int(checkpoint.get("global_step", 0)))

    def _drop_skipped(self, batch: Mapping[str, Any] | None, split: str) -> bool:
        """Count the batch's samples the collator dropped; True when no sample is left to run."""
        if batch is None:
            return True
        self._counts[split] += int(batch.get("skipped", 0))
        return "input_ids" not in batch

    def training_step(self, batch: Mapping[str, Any] | None, batch_idx: int) -> torch.Tensor | None:
        if self._drop_skipped(batch, "train"):  # every sample was unreadable (data.on_error=skip)
            return None
        out = self(batch)
        loss = self._global_token_mean(out["loss"], out["num_tokens"])
        where = (self.global_step, self.current_epoch, batch_idx, list(batch.get("ids", [])))
        if self.nonfinite_loss == "raise":
            # checked before the optimizer step (on_before_optimizer_step), not here: a check here would
            # make the host wait for the forward to finish before it queues the backward
            self._unchecked.append((loss.detach(), where))
        elif not torch.isfinite(loss):
            log.warning("%s: step skipped (nonfinite_loss=skip)", _nonfinite_message(loss, *where))
            self._counts["nonfinite"] += 1
            return None
        bsz = batch["input_ids"].shape[0]
        self.log("train/loss", loss, prog_bar=True, batch_size=bsz, sync_dist=True)
        self._logged_loss = True
        return loss

    def on_before_optimizer_step(self, optimizer: torch.optim.Optimizer) -> None:
        """``nonfinite_loss=raise``: stop before a non-finite loss's gradients reach the weights."""
        unchecked, self._unchecked = self._unchecked, []
        if unchecked and not bool(torch.isfinite(torch.stack([loss for loss, _ in unchecked])).all()):
            loss, where = next((loss, w) for loss, w in unchecked if not torch.isfinite(loss))
            raise NonFiniteLossError(
                f"{_nonfinite_message(loss, *where)}; nonfinite_loss=skip skips such steps instead"
            )

    def _global_token_mean(self, loss: torch.Tensor, num_tokens: torch.Tensor) -> torch.Tensor:
        """Rescale this rank's token-mean loss for data parallelism (DDP, FSDP).

        Both average gradients over ranks; a plain mean of per-rank token means weighs a token of a rank
        with few supervised tokens more. Scaled by ``world * n_rank / n_global``, the average over ranks
        (of the gradients, and of the logged loss) is the mean over every supervised token of the global
        batch -- what one process computes on the same batch.
        """
        world = self.trainer.world_size
        if world == 1:
            return loss
        n_local = num_tokens.detach().float()
        n_global = self.trainer.strategy.reduce(n_local.clone(), reduce_op="sum")
        return loss * (n_local * world / n_global.clamp(min=1))

    def on_train_batch_end(self, outputs: Any, batch: Mapping[str, Any] | None, batch_idx: int) -> None:
        logged, self._logged_loss = self._logged_loss, False
        if not logged:  # nothing trained (every sample skipped, or a non-finite loss skipped)
            self._forget_step_metrics()
            return
        dt = time.perf_counter() - self._t_batch
        if batch is not None and "attention_mask" in batch and dt > 0:
            # the collators count the tokens on the host; summing the mask on a GPU would wait for it
            tokens = float(batch.get("num_input_tokens") or batch["attention_mask"].sum())
            self.log("train/tokens_per_s", tokens / dt, batch_size=batch["input_ids"].shape[0])

    def _forget_step_metrics(self) -> None:
        """Clear the step values of ``train/loss`` and ``train/tokens_per_s`` for a step that trained
        nothing: Lightning keeps each metric's last value and would log the previous step's loss again at
        this step (its result collection is private; without one, there is nothing to clear)."""
        results = getattr(self.trainer, "_results", None)
        if results is None:
            return
        for fx in ("training_step", "on_train_batch_end"):
            results.reset(metrics=False, fx=fx)

    def on_train_epoch_end(self) -> None:
        self._report("train", "data/skipped")
        nonfinite = self._sum_over_ranks("nonfinite")
        if self.nonfinite_loss == "skip":
            self.log("train/nonfinite_skipped", float(nonfinite))
        if nonfinite:
            log.warning("epoch %d: %d step(s) skipped for a non-finite loss", self.current_epoch, nonfinite)

    def on_validation_epoch_end(self) -> None:
        self._report("val", "data/val_skipped")

    def _sum_over_ranks(self, key: str) -> int:
        count, self._counts[key] = self._counts[key], 0
        if self.trainer.world_size == 1:
            return count
        total = self.trainer.strategy.reduce(torch.tensor(float(count), device=self.device), reduce_op="sum")
        return int(total.item())

    def _report(self, split: str, metric: str) -> int:
        """Log this epoch's dropped-sample total (all workers and ranks) and warn when it is not zero;
        the warning also counts the samples the dataset removed when it read its file."""
        skipped = self._sum_over_ranks(split)
        self.log(metric, float(skipped))
        dataset = getattr(self.trainer.datamodule, f"{split}_set", None)
        at_load = len({p.index for p in getattr(dataset, "skipped", [])})
        if (skipped or at_load) and self.trainer.is_global_zero:
            log.warning(
                "epoch %d: %d %s sample(s) skipped because their image could not be read (ids in the "
                "warnings above), and %d removed when the annotation file was read (data.on_error=skip)",
                self.current_epoch,
                skipped,
                split,
                at_load,
            )
        return skipped

    def validation_step(self, batch: Mapping[str, Any] | None, batch_idx: int) -> torch.Tensor | None:
        if self._drop_skipped(batch, "val"):
            return None
        out = self(batch)
        self.log(
            "val/loss", out["loss"], prog_bar=True, batch_size=batch["input_ids"].shape[0], sync_dist=True
        )
        return out["loss"]

    def configure_optimizers(self) -> Any:
        # re-read each group's parameters: FSDP2 (configure_model) replaced them by sharded ones
        for group in self.param_groups:
            module = getattr(self.model, group["name"])
            group["params"] = [p for p in module.parameters() if p.requires_grad]
        optimizer = self.optimizer_factory(self.param_groups)
        if self.scheduler_factory is None:
            return optimizer
        steps = int(self.trainer.estimated_stepping_batches)
        scheduler = self.scheduler_factory(optimizer, num_training_steps=steps)
        return {
            "optimizer": optimizer,
            "lr_scheduler": {"scheduler": scheduler, "interval": "step", "name": "train/lr"},
        }


def _nonfinite_message(loss: torch.Tensor, step: int, epoch: int, batch_idx: int, ids: list) -> str:
    return (
        f"non-finite training loss {loss.item()} at step {step} (epoch {epoch}, batch {batch_idx}), "
        f"sample ids {ids}"
    )
