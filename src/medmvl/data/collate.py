"""Pad token sequences and gather images of a batch into the tensors ``MedVLM`` consumes.

Images (and, separately, volumes) of all samples are concatenated in sample order, which is also the
order of their placeholder blocks in ``input_ids``; the model merges features by placeholder
(``masked_scatter``), so no per-sample image index is needed. Samples that a dataset returned as
``None`` (an unreadable image under ``on_error="skip"``) are dropped here and counted in the batch's
``skipped``, so the LightningModule can total them over DataLoader workers and ranks (each worker
process only sees its own).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Literal

import torch

from medmvl.data.conversation import IGNORE_INDEX
from medmvl.data.schema import PIXEL_KEYS


class Collator:
    """Collate ``AnnotationDataset`` items.

    Args:
        pad_token_id: Id written into padded ``input_ids`` positions (masked by ``attention_mask``).
        padding_side: ``right`` for training; ``left`` for batched generation.
    """

    def __init__(self, pad_token_id: int, padding_side: Literal["right", "left"] = "right") -> None:
        if padding_side not in ("right", "left"):
            raise ValueError(f"padding_side must be 'right' or 'left', got {padding_side!r}")
        self.pad_token_id = pad_token_id
        self.padding_side = padding_side

    def __call__(self, items: Sequence[dict[str, Any] | None]) -> dict[str, Any]:
        """Batch items.

        Returns:
            ``input_ids`` [b, n], ``attention_mask`` [b, n], ``labels`` [b, n] (``-100`` on padding),
            ``pixel_values`` [N, c, h, w] (all images in sample order) or ``None``, ``pixel_values_3d``
            [N3, c, d, h, w] (all volumes in sample order) or ``None``, ``target_index`` [s] (flat indices
            of the supervised targets, :func:`supervised_index`), ``num_input_tokens``, ``ids`` (list of
            b strings), and ``skipped`` (how many items were ``None``); only ``{"skipped": k}`` if every
            item was dropped.
        """
        kept = [item for item in items if item is not None]
        if not kept:
            return {"skipped": len(items)}
        n = max(len(item["input_ids"]) for item in kept)
        input_ids = torch.full((len(kept), n), self.pad_token_id, dtype=torch.long)  # [b, n]
        labels = torch.full((len(kept), n), IGNORE_INDEX, dtype=torch.long)  # [b, n]
        attention_mask = torch.zeros((len(kept), n), dtype=torch.long)  # [b, n]
        for row, item in enumerate(kept):
            length = len(item["input_ids"])
            cols = slice(0, length) if self.padding_side == "right" else slice(n - length, n)
            input_ids[row, cols] = item["input_ids"]
            labels[row, cols] = item["labels"] if "labels" in item else IGNORE_INDEX
            attention_mask[row, cols] = 1
        return {
            "input_ids": input_ids,
            "attention_mask": attention_mask,
            "labels": labels,
            "target_index": supervised_index(labels),  # [s]
            "num_input_tokens": int(attention_mask.sum()),
            **concat_pixels(kept),
            "ids": [item["id"] for item in kept],
            "skipped": len(items) - len(kept),
        }


def concat_pixels(items: Sequence[dict[str, Any]]) -> dict[str, torch.Tensor | None]:
    """Each placeholder's tensors of ``items`` concatenated in item order: ``pixel_values`` [N, c, h, w],
    ``pixel_values_3d`` [N3, c, d, h, w] (``None`` where no item has one)."""
    batch = {}
    for key in PIXEL_KEYS:
        tensors = [item[key] for item in items if item.get(key) is not None]
        batch[key] = torch.cat(tensors) if tensors else None  # [N, c, (d,) h, w]
    return batch


def supervised_index(labels: torch.Tensor) -> torch.Tensor:
    """Flat indices into ``labels`` ``[b, t]`` of the supervised targets, ``[s]``.

    Column 0 is never a target (nothing precedes it); the target at flat position ``p`` is predicted
    from the hidden state at ``p - 1``. The collators add it to every batch, so the loss selects its
    positions without counting a boolean mask on the GPU (which makes the host wait mid-step).
    """
    keep = labels != IGNORE_INDEX  # [b, t]
    keep[:, 0] = False
    return keep.flatten().nonzero().squeeze(1)
