"""``sdpa_packed``: PyTorch SDPA that attends within each packed sample only (no cross-sample work).

transformers' ``sdpa`` runs a packed row (``position_ids`` restarting at every sample) as one
``[t, t]`` attention with a dense block-diagonal mask: every query scores every key of the row, and the
masked path cannot use SDPA's causal kernels. ``sdpa_packed`` instead cuts the flattened rows at the
sample boundaries given as ``cu_seq_lens_q`` (the variable-length keyword arguments flash-attention reads;
:func:`medmvl.data.packing.varlen_kwargs` builds them, ``MedVLM.forward`` passes them for packed batches)
and runs one causal SDPA per sample: attention work is ``sum n_i^2`` instead of ``t^2``. Without those
keyword arguments (padded or bucketed batches, generation with a KV cache) it is transformers' ``sdpa``,
mask and all.

FlexAttention (``attn_implementation=flex_attention``, transformers builds a ``BlockMask`` from packed
``position_ids``) is the GPU alternative without flash-attn; on the CPU, torch 2.14 has no FlexAttention
backward ("FlexAttention does not support backward on CPU"), so it cannot train there.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from transformers import AttentionInterface
from transformers.integrations.sdpa_attention import sdpa_attention_forward
from transformers.masking_utils import ALL_MASK_ATTENTION_FUNCTIONS, sdpa_mask

NAME = "sdpa_packed"


def packed_sdpa_forward(
    module: nn.Module,
    query: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    attention_mask: torch.Tensor | None,
    dropout: float = 0.0,
    scaling: float | None = None,
    **kwargs: Any,
) -> tuple[torch.Tensor, None]:
    """transformers attention-interface function: ``[b, h, t, d]`` q/k/v -> ``[b, t, h, d]``.

    With ``cu_seq_lens_q`` (``[n + 1]`` offsets of the ``n`` samples in the flattened ``b * t`` tokens),
    one causal SDPA per sample; else :func:`sdpa_attention_forward` unchanged.
    """
    bounds = kwargs.get("cu_seq_lens_q")
    if bounds is None or query.shape[2] != key.shape[2]:  # not packed, or decoding with a cache
        return sdpa_attention_forward(
            module, query, key, value, attention_mask, dropout=dropout, scaling=scaling, **kwargs
        )
    return _per_sample(query, key, value, bounds, dropout, scaling)


@torch.compiler.disable  # host offsets and a loop over samples: eager inside a compiled decoder layer
def _per_sample(
    query: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    bounds: torch.Tensor | list[int],
    dropout: float,
    scaling: float | None,
) -> tuple[torch.Tensor, None]:
    """One causal SDPA per sample of the flattened rows (``bounds``: ``[n + 1]`` offsets)."""
    b, h, t, d = query.shape
    groups = h // key.shape[1]
    q = query.transpose(1, 2).reshape(b * t, h, d)  # [b*t, h, d]
    k = key.transpose(1, 2).reshape(b * t, key.shape[1], d)  # [b*t, h_kv, d]
    v = value.transpose(1, 2).reshape(b * t, value.shape[1], value.shape[3])  # [b*t, h_kv, d_v]
    offsets = bounds.tolist() if isinstance(bounds, torch.Tensor) else list(bounds)
    pieces = []
    for start, end in zip(offsets[:-1], offsets[1:]):
        qs = q[start:end].transpose(0, 1).unsqueeze(0)  # [1, h, n, d]
        ks = k[start:end].transpose(0, 1).unsqueeze(0)  # [1, h_kv, n, d]
        vs = v[start:end].transpose(0, 1).unsqueeze(0)  # [1, h_kv, n, d_v]
        if groups > 1:  # the CPU's causal kernels take equal heads
            ks, vs = ks.repeat_interleave(groups, dim=1), vs.repeat_interleave(groups, dim=1)
        out = F.scaled_dot_product_attention(qs, ks, vs, dropout_p=dropout, is_causal=True, scale=scaling)
        pieces.append(out[0].transpose(0, 1))  # [n, h, d_v]
    return torch.cat(pieces).view(b, t, h, -1), None  # [b, t, h, d_v]


def register() -> str:
    """Register ``sdpa_packed`` with transformers (its masks are ``sdpa``'s); returns the name."""
    AttentionInterface.register(NAME, packed_sdpa_forward)
    ALL_MASK_ATTENTION_FUNCTIONS.register(NAME, sdpa_mask)
    return NAME
