"""Callbacks that show what a run trains, how it goes and what it answers, for whichever loggers it has.

``EpochSummary`` writes one plain line per training epoch to the log (loss, val loss, tokens/s, elapsed,
ETA), so a batch job's log shows progress without a terminal. ``TrainableParamsTable`` logs the per-component parameter table of the stage (``trainable_table``) once,
at the start of ``fit``. ``ValPredictionTable`` answers a few fixed validation samples with the model's own
``generate`` after each validation epoch, so a dashboard shows image, question, reference and prediction
side by side as training goes on. These two go through :func:`medmvl.training.loggers.log_table` (a W&B table,
TensorBoard text and images); the predictions are also written to ``val_predictions/*.json`` in the run
folder, so CSV-only runs keep them too.

Why the prompt is cut from the validation item rather than rebuilt: the data pipeline renders every
training prompt token-identical to its generation prompt (``ConversationEncoder``), so the tokens before
the last supervised answer are exactly what ``generate`` must see, for 2D and 3D samples alike.
"""

from __future__ import annotations

import datetime
import json
import logging
import math
import re
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import lightning as L
import numpy as np
import torch
from lightning.pytorch.callbacks import Callback

from medmvl.data.conversation import IGNORE_INDEX
from medmvl.data.sampling.modality import BatchFetch
from medmvl.data.schema import IMAGE3D_TOKEN, IMAGE_TOKEN, PIXEL_KEYS
from medmvl.training.loggers import log_table, shows_tables
from medmvl.training.stages import trainable_table

log = logging.getLogger(__name__)


_PLACEHOLDERS = re.compile(f"(?:{re.escape(IMAGE3D_TOKEN)}|{re.escape(IMAGE_TOKEN)})\\s*")


class EpochSummary(Callback):
    """One plain log line at the end of every training epoch, whatever the terminal (a batch job's log gets
    it as well as a console; the progress bar may print only once there)::

        epoch 3/20 (step 6/40): loss 1.234, val loss 1.456, 1,234 tokens/s, elapsed 0:00:12, ETA 0:00:48

    ``loss``: the mean training loss of the epoch's batches that trained (over every rank); ``val loss``: the
    last validation of the epoch (left out without one); ``tokens/s``: the epoch's input tokens (every rank)
    over its wall time, validation included; ``elapsed``: since this ``fit`` started; ``ETA``: the optimizer
    steps left, at this fit's pace so far.
    """

    def __init__(self) -> None:
        self._t_fit = self._t_epoch = 0.0
        self._first_step = 0
        self._reset()

    def _reset(self) -> None:
        self._loss: torch.Tensor | float = 0.0  # summed on the device: no host sync per step
        self._batches = 0
        self._tokens: torch.Tensor | float = 0.0
        self._val: float | None = None

    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._t_fit = time.monotonic()
        self._first_step = trainer.global_step

    def on_train_epoch_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._t_epoch = time.monotonic()
        self._reset()

    def on_train_batch_end(
        self, trainer: L.Trainer, pl_module: L.LightningModule, outputs: Any, batch: Any, batch_idx: int
    ) -> None:
        loss = outputs.get("loss") if isinstance(outputs, Mapping) else outputs
        if not isinstance(loss, torch.Tensor):  # the step trained nothing (every sample skipped)
            return
        # Lightning divides the returned loss by the accumulation factor
        self._loss = self._loss + loss.detach().float() * trainer.accumulate_grad_batches
        self._batches += 1
        if isinstance(batch, Mapping) and "attention_mask" in batch:
            tokens = batch.get("num_input_tokens")  # counted on the host by the collators
            self._tokens = self._tokens + (tokens if tokens is not None else batch["attention_mask"].sum())

    def on_validation_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        value = trainer.callback_metrics.get("val/loss")
        if not trainer.sanity_checking and value is not None:
            self._val = float(value)

    def on_train_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        totals = torch.tensor(
            [float(self._loss), float(self._batches), float(self._tokens)], device=pl_module.device
        )
        if trainer.world_size > 1:
            totals = trainer.strategy.reduce(totals, reduce_op="sum")
        if trainer.is_global_zero:
            log.info("%s", self.line(trainer, *(float(v) for v in totals.cpu())))

    def line(self, trainer: L.Trainer, loss_sum: float, batches: float, tokens: float) -> str:
        """The summary of the epoch ending now, from its totals over every rank."""
        now = time.monotonic()
        epochs = trainer.max_epochs if trainer.max_epochs not in (None, -1) else None
        total = trainer.estimated_stepping_batches
        step = trainer.global_step
        where = f"epoch {trainer.current_epoch + 1}" + (f"/{epochs}" if epochs else "")
        where += f" (step {step}" + (f"/{int(total)})" if math.isfinite(total) else ")")
        parts = [f"loss {loss_sum / batches:.3f}" if batches else "no batch trained"]
        if self._val is not None:
            parts.append(f"val loss {self._val:.3f}")
        parts.append(f"{tokens / max(now - self._t_epoch, 1e-9):,.0f} tokens/s")
        parts.append(f"elapsed {_clock(now - self._t_fit)}")
        done = step - self._first_step
        if math.isfinite(total) and done > 0:
            parts.append(f"ETA {_clock((now - self._t_fit) / done * max(total - step, 0))}")
        return f"{where}: " + ", ".join(parts)


def _clock(seconds: float) -> str:
    """``H:MM:SS``."""
    return str(datetime.timedelta(seconds=round(seconds)))


class TrainableParamsTable(Callback):
    """Log ``component | total | trainable | %`` for the stage being trained, once per ``fit``."""

    def on_fit_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        _, stats = trainable_table(pl_module.model)
        rows = [
            [name, s["total"], s["trainable"], round(100.0 * s["trainable"] / max(s["total"], 1), 2)]
            for name, s in stats.items()
        ]
        log_table(
            trainer.loggers, "params/trainable", ["component", "total", "trainable", "percent"], rows, 0
        )


def split_answer(input_ids: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Cut a training item at its last supervised answer.

    Args:
        input_ids: ``[n]`` token ids of one item.
        labels: ``[n]`` labels (``-100`` where not supervised).

    Returns:
        ``prompt [p]`` (everything before the last run of supervised tokens, i.e. the generation prompt)
        and ``answer [a]`` (that run: the reference answer and its end-of-turn token).
    """
    supervised = (labels != IGNORE_INDEX).nonzero().flatten()
    if supervised.numel() == 0:
        raise ValueError("the item has no supervised tokens: nothing to predict")
    end = int(supervised[-1]) + 1
    start = end - 1
    while start > 0 and labels[start - 1] != IGNORE_INDEX:
        start -= 1
    return input_ids[:start], input_ids[start:end]


def preview(pixels: torch.Tensor) -> np.ndarray:
    """The first image of ``[k, c, h, w]`` (or the middle slice of ``[k, c, d, h, w]``) as ``uint8 [h, w, 3]``,
    min-max scaled for display."""
    image = pixels[0].float()  # [c, h, w] or [c, d, h, w]
    if image.ndim == 4:
        image = image[:, image.shape[1] // 2]  # [c, h, w]: the middle slice
    if image.shape[0] == 1:
        image = image.expand(3, -1, -1)
    image = image[:3]
    lo, hi = image.min(), image.max()
    image = (image - lo) / (hi - lo).clamp(min=1e-8)
    return (image.permute(1, 2, 0) * 255).round().to(torch.uint8).cpu().numpy()  # [h, w, 3]


class ValPredictionTable(Callback):
    """After validation, answer ``num_samples`` fixed validation samples and log them as a table.

    Samples are spread evenly over the validation set and stay the same every epoch. Every rank generates
    (sharded models need all ranks in each forward); rank 0 logs and writes
    ``val_predictions/epoch<e>_step<s>.json`` in the run folder.

    Args:
        num_samples: Samples per table (``0`` turns the callback off).
        max_new_tokens: Longest generated answer.
        every_n_epochs: Log after every n-th validation epoch.
        enabled: ``None``: only when a logger displays tables (W&B, TensorBoard), so CSV-only runs pay no
            generation; ``True``: always (CSV runs get the JSON files); ``False``: never.
    """

    columns = ("epoch", "step", "id", "image", "question", "reference", "prediction")

    def __init__(
        self,
        num_samples: int = 4,
        max_new_tokens: int = 32,
        every_n_epochs: int = 1,
        enabled: bool | None = None,
    ) -> None:
        if num_samples < 0 or max_new_tokens < 1 or every_n_epochs < 1:
            raise ValueError(
                "ValPredictionTable needs num_samples >= 0, max_new_tokens >= 1 and every_n_epochs >= 1, got "
                f"{num_samples}, {max_new_tokens}, {every_n_epochs}"
            )
        self.num_samples = num_samples
        self.max_new_tokens = max_new_tokens
        self.every_n_epochs = every_n_epochs
        self.enabled = enabled

    def on_validation_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if trainer.sanity_checking or not self.num_samples or trainer.current_epoch % self.every_n_epochs:
            return
        if not (self.enabled or (self.enabled is None and shows_tables(trainer.loggers))):
            return
        dataset = _val_dataset(trainer)
        if dataset is None or len(dataset) == 0:
            return
        count = min(self.num_samples, len(dataset))
        indices = sorted({round(i * (len(dataset) - 1) / max(count - 1, 1)) for i in range(count)})
        items = {}
        for index in indices:
            item = dataset[index]
            if item is None:  # unreadable image under on_error=skip: already counted by the dataset
                log.warning("val predictions: validation sample %d could not be read, left out", index)
                continue
            items[index] = item
        if not items:
            return
        tokenizer = pl_module.model.tokenizer
        cuts = {i: split_answer(item["input_ids"], item["labels"]) for i, item in items.items()}
        with trainer.precision_plugin.val_step_context():
            new_tokens = self._generate(trainer, pl_module, items, cuts)  # [b, t_new]
        if not trainer.is_global_zero:
            return
        predictions = tokenizer.batch_decode(new_tokens, skip_special_tokens=True)
        rows = []
        for (index, item), prediction in zip(items.items(), predictions):
            question, reference = _texts(dataset, index, tokenizer, *cuts[index])
            image = next((preview(item[k]) for k in PIXEL_KEYS if item.get(k) is not None), None)
            rows.append(
                [trainer.current_epoch, trainer.global_step, str(item.get("id", index)), image]
                + [question, reference, prediction.strip()]
            )
        self._write(Path(trainer.default_root_dir), trainer, rows)
        log_table(trainer.loggers, "val/predictions", self.columns, rows, trainer.global_step)

    def _generate(
        self,
        trainer: L.Trainer,
        pl_module: L.LightningModule,
        items: Mapping[int, Mapping[str, Any]],
        cuts: Mapping[int, tuple[torch.Tensor, torch.Tensor]],
    ) -> torch.Tensor:
        """Greedy answers to the items' prompts, left-padded into one batch: new tokens ``[b, t_new]``."""
        model = pl_module.model
        device = pl_module.device
        prompts = [cuts[i][0] for i in items]
        width = max(len(p) for p in prompts)
        input_ids = torch.full(
            (len(prompts), width), model.tokenizer.pad_token_id, dtype=torch.long
        )  # [b, p]
        attention_mask = torch.zeros((len(prompts), width), dtype=torch.long)  # [b, p]
        for row, prompt in enumerate(prompts):
            input_ids[row, width - len(prompt) :] = prompt
            attention_mask[row, width - len(prompt) :] = 1
        pixels = {}
        for key in PIXEL_KEYS:
            present = [item[key] for item in items.values() if item.get(key) is not None]
            if present:
                pixels[key] = torch.cat(present).to(device)  # [k, c, (d,) h, w], in placeholder order
        return model.generate(
            input_ids=input_ids.to(device),
            attention_mask=attention_mask.to(device),
            **pixels,
            max_new_tokens=self.max_new_tokens,
            do_sample=False,
            temperature=None,
            top_p=None,
            top_k=None,
            synced_gpus=trainer.world_size > 1,
        )

    def _write(self, run_dir: Path, trainer: L.Trainer, rows: list[list[Any]]) -> None:
        out = (
            run_dir
            / "val_predictions"
            / f"epoch{trainer.current_epoch:03d}_step{trainer.global_step:06d}.json"
        )
        out.parent.mkdir(parents=True, exist_ok=True)
        records = [{c: v for c, v in zip(self.columns, row) if c != "image"} for row in rows]
        out.write_text(json.dumps(records, indent=1, ensure_ascii=False))


def _val_dataset(trainer: L.Trainer) -> Any:
    """The validation dataset (items by index): the datamodule's ``val_set``, else the first val loader's."""
    dataset = getattr(trainer.datamodule, "val_set", None)
    if dataset is not None:
        return dataset
    loaders = trainer.val_dataloaders
    if isinstance(loaders, (list, tuple)):
        loaders = loaders[0] if loaders else None
    dataset = getattr(loaders, "dataset", None)
    return dataset.dataset if isinstance(dataset, BatchFetch) else dataset


def _texts(
    dataset: Any, index: int, tokenizer: Any, prompt: torch.Tensor, answer: torch.Tensor
) -> tuple[str, str]:
    """(question, reference): the last human and gpt turns of an annotation sample, else decoded tokens."""
    items = getattr(dataset, "items", None)
    sample = getattr(items[index], "sample", None) if items is not None else None
    if sample is not None:
        human = [t.text for t in sample.turns if t.role == "human"]
        gpt = [t.text for t in sample.turns if t.role == "gpt"]
        if human and gpt:
            return _PLACEHOLDERS.sub("", human[-1]).strip(), gpt[-1].strip()
    image_ids = {tokenizer.convert_tokens_to_ids(t) for t in (IMAGE_TOKEN, IMAGE3D_TOKEN)}
    text_ids = [int(t) for t in prompt if int(t) not in image_ids]
    question = tokenizer.decode(text_ids, skip_special_tokens=True).strip()
    return question[-300:], tokenizer.decode(answer, skip_special_tokens=True).strip()
