"""Padding-free batches: several samples packed into each row (``data.packing=true``).

A padded batch of samples with varied prompt and answer lengths spends much of its compute on padding. The
:class:`PackingCollator` places the samples of a batch into as few rows as fit ``pack_length`` tokens
(best-fit decreasing), and writes ``position_ids`` that restart at 0 at every sample. ``MedVLM.forward``
then passes no attention mask but the sample boundaries (:func:`varlen_kwargs`), so no token attends
across samples and every sample's logits equal its unpacked ones:

* ``llm.attn_implementation=auto`` (the default) -> ``flash_attention_2`` where flash-attn and CUDA are,
  else ``sdpa_packed`` (:mod:`medmvl.models.llm.attention`): one causal SDPA per sample, no attention work
  across samples, on the CPU and on GPUs without flash-attn;
* ``sdpa`` / ``eager``: transformers' dense block-diagonal mask derived from the restarts
  (``masking_utils.find_packed_sequence_indices``): correct, but the whole ``[t, t]`` row is scored;
* ``flex_attention``: a FlexAttention ``BlockMask`` (GPUs; torch 2.14 has no FlexAttention backward on CPU).

The first label of every sample is ignored, so no sample is trained to predict the next one's first token.

``pack_length=None`` packs into rows as long as the batch's longest sample; a larger ``pack_length``
(e.g. ``data.max_length``) gives fewer, fuller rows. Which layout pays on which device:
docs/efficiency.md.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch

from medmvl.data.collate import concat_pixels, supervised_index
from medmvl.data.conversation import IGNORE_INDEX


def varlen_kwargs(position_ids: torch.Tensor) -> dict[str, Any]:
    """The variable-length attention keyword arguments of packed ``position_ids`` ``[b, t]``.

    A sample starts at every row start and wherever a position is not its predecessor's + 1 (as
    transformers' ``find_packed_sequence_indices``). Returns ``cu_seq_lens_q`` / ``cu_seq_lens_k``
    (``[n + 1]`` int32 offsets into the flattened ``b * t`` tokens) and ``max_length_q`` /
    ``max_length_k`` (the longest sample), which flash-attention's varlen path and ``sdpa_packed`` read.
    """
    b, t = position_ids.shape
    pos = position_ids.detach().cpu()  # [b, t]; one device->host copy per forward on a GPU
    start = torch.ones_like(pos, dtype=torch.bool)  # [b, t]
    start[:, 1:] = pos[:, 1:] != pos[:, :-1] + 1
    starts = start.flatten().nonzero().squeeze(1)  # [n]
    bounds = torch.cat([starts, torch.tensor([b * t])]).to(torch.int32)  # [n + 1]
    longest = int((bounds[1:] - bounds[:-1]).max())
    bounds = bounds.to(position_ids.device)
    return {
        "cu_seq_lens_q": bounds,
        "cu_seq_lens_k": bounds,
        "max_length_q": longest,
        "max_length_k": longest,
    }


def pack(lengths: Sequence[int], capacity: int) -> list[list[int]]:
    """Best-fit-decreasing bin packing: indices of ``lengths`` per row, each row's total <= ``capacity``.

    Longest first; each item goes to the fullest row it still fits in, else opens a row. Within a row,
    items keep their input order (their images are gathered in that order).
    """
    too_long = [i for i, n in enumerate(lengths) if n > capacity]
    if too_long:
        raise ValueError(f"samples {too_long} are longer than the packed row length {capacity}")
    rows: list[list[int]] = []
    used: list[int] = []
    for i in sorted(range(len(lengths)), key=lambda i: -lengths[i]):
        fits = [r for r in range(len(rows)) if used[r] + lengths[i] <= capacity]
        if fits:
            r = max(fits, key=lambda r: used[r])
            rows[r].append(i)
            used[r] += lengths[i]
        else:
            rows.append([i])
            used.append(lengths[i])
    return [sorted(row) for row in rows]


class PackingCollator:
    """Collate ``AnnotationDataset`` items into packed rows (the ``Collator`` batch plus ``position_ids``).

    Args:
        pad_token_id: Id written after the last sample of a row shorter than the batch's longest row.
        pack_length: Tokens per row; ``None``: the batch's longest sample (see the module docstring).
    """

    def __init__(self, pad_token_id: int, pack_length: int | None = None) -> None:
        if pack_length is not None and pack_length < 1:
            raise ValueError(f"pack_length must be a positive number of tokens or None, got {pack_length}")
        self.pad_token_id = pad_token_id
        self.pack_length = pack_length

    def __call__(self, items: Sequence[dict[str, Any] | None]) -> dict[str, Any]:
        """Pack items.

        Returns:
            ``input_ids`` [r, n], ``labels`` [r, n], ``position_ids`` [r, n] (0, 1, ... per sample; the pad
            tail of a row counts as one more sample), ``attention_mask`` [r, n] (1 on sample tokens, 0 on
            the pad tail: for counting tokens, the model does not read it), ``pixel_values`` [N, c, h, w]
            and ``pixel_values_3d`` [N3, c, d, h, w] in packed order (or ``None``), ``ids`` (sample ids in
            packed order), ``target_index`` and ``num_input_tokens`` (as :class:`~medmvl.data.collate.Collator`),
            ``num_samples`` and ``skipped`` (items that were ``None``); only
            ``{"skipped": k}`` if every item was dropped.
        """
        kept = [item for item in items if item is not None]
        if not kept:
            return {"skipped": len(items)}
        lengths = [len(item["input_ids"]) for item in kept]
        rows = pack(lengths, self.pack_length or max(lengths))
        n = max(sum(lengths[i] for i in row) for row in rows)
        input_ids = torch.full((len(rows), n), self.pad_token_id, dtype=torch.long)  # [r, n]
        labels = torch.full((len(rows), n), IGNORE_INDEX, dtype=torch.long)  # [r, n]
        position_ids = torch.zeros((len(rows), n), dtype=torch.long)  # [r, n]
        attention_mask = torch.zeros((len(rows), n), dtype=torch.long)  # [r, n]
        order = [i for row in rows for i in row]
        for r, row in enumerate(rows):
            start = 0
            for i in row:
                item, end = kept[i], start + lengths[i]
                input_ids[r, start:end] = item["input_ids"]
                labels[r, start:end] = item["labels"] if "labels" in item else IGNORE_INDEX
                labels[r, start] = IGNORE_INDEX  # nothing of this sample precedes its first token
                position_ids[r, start:end] = torch.arange(lengths[i])
                attention_mask[r, start:end] = 1
                start = end
            position_ids[r, start:] = torch.arange(n - start)  # the pad tail: a segment of its own
        return {
            "input_ids": input_ids,
            "attention_mask": attention_mask,
            "labels": labels,
            "position_ids": position_ids,
            "target_index": supervised_index(labels),  # [s]
            "num_input_tokens": int(attention_mask.sum()),
            **concat_pixels([kept[i] for i in order]),  # in packed order
            "ids": [kept[i]["id"] for i in order],
            "num_samples": len(kept),
            "skipped": len(items) - len(kept),
        }
