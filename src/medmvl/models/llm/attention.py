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

On the CPU, attention of short sequences under bf16 (``trainer.precision=bf16-mixed``: autocast runs
SDPA in bf16) is computed in fp32, autocast off, and the output cast to bf16: torch 2.14's CPU
flash-attention kernel is slower in bf16 than in fp32 there (causal SDPA forward + backward, 9 heads of
64, one thread, AMD EPYC with AVX-512 BF16, 2026-12-03: 8 x 96 tokens 31 ms bf16 vs 15 ms fp32, 18 ms
with the casts; 16 x 32: 15 vs 4 ms; 8 x 128: 35 vs 27 ms; 2 x 512: 77 vs 80 ms, so from
``CPU_FP32_MAX_LEN`` positions on bf16 stays). docs/precision.md has the whole-step numbers.
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
# bf16 attention on the CPU is upcast to fp32 up to this many query positions (per sample when packed)
CPU_FP32_MAX_LEN = 256


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
    if _upcast(query, key, value, bounds):  # fp32 kernels, autocast (which would cast back to bf16) off
        if attention_mask is not None and attention_mask.is_floating_point():
            attention_mask = attention_mask.float()  # SDPA takes a float mask in the query's dtype
        with torch.autocast("cpu", enabled=False):
            out, weights = _attend(
                module,
                query.float(),
                key.float(),
                value.float(),
                attention_mask,
                bounds,
                dropout,
                scaling,
                **kwargs,
            )
        return out.to(torch.bfloat16), weights
    return _attend(module, query, key, value, attention_mask, bounds, dropout, scaling, **kwargs)


def _attend(
    module: nn.Module,
    query: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    attention_mask: torch.Tensor | None,
    bounds: torch.Tensor | list[int] | None,
    dropout: float,
    scaling: float | None,
    **kwargs: Any,
) -> tuple[torch.Tensor, None]:
    if bounds is None or query.shape[2] != key.shape[2]:  # not packed, or decoding with a cache
        return sdpa_attention_forward(
            module, query, key, value, attention_mask, dropout=dropout, scaling=scaling, **kwargs
        )
    return _per_sample(query, key, value, bounds, dropout, scaling)


def _upcast(
    query: torch.Tensor, key: torch.Tensor, value: torch.Tensor, bounds: torch.Tensor | list[int] | None
) -> bool:
    """Whether attention on the CPU runs in fp32 instead of bf16: bf16 inputs, or bf16 autocast (which
    runs SDPA in bf16; the inputs are partly fp32 there, RoPE promotes q and k), and at most
    ``CPU_FP32_MAX_LEN`` query positions (the longest packed sample's)."""
    if query.device.type != "cpu":
        return False
    autocast = torch.is_autocast_enabled("cpu") and torch.get_autocast_dtype("cpu") == torch.bfloat16
    if not autocast and torch.bfloat16 not in (query.dtype, key.dtype, value.dtype):
        return False
    if bounds is None:
        return query.shape[2] <= CPU_FP32_MAX_LEN
    offsets = bounds.tolist() if isinstance(bounds, torch.Tensor) else list(bounds)
    return max((b - a for a, b in zip(offsets[:-1], offsets[1:])), default=0) <= CPU_FP32_MAX_LEN


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
