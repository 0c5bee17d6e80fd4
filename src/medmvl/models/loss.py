"""Next-token cross-entropy of the LM head without the ``[supervised tokens, vocab]`` logits in memory.

``MedVLM.forward`` gathers the hidden states before each supervised target (``[s, d]``) and calls
:func:`lm_head_loss`, which returns the *summed* cross-entropy over the ``s`` targets. Implementations
(``llm.loss``):

* ``full`` -- ``head(rows).float()`` then ``F.cross_entropy``: the ``[s, v]`` fp32 logits, their softmax
  and their gradient all live at once (``3 x s x v x 4`` bytes: 1.9 GB for 1,600 targets of Qwen2.5's
  151,936-token vocabulary).
* ``chunked`` -- the rows in chunks of ``chunk_size``. For a plain ``nn.Linear`` head (bias or none, tied
  or not) :class:`LinearCrossEntropy` computes each chunk's loss *and* its gradients (w.r.t. the rows, the
  weight and the bias) in the forward pass, so no chunk's logits outlive it; backward only scales the
  stored gradients (three matmuls per chunk, as ``full``). Any other head (a PEFT LoRA-wrapped ``lm_head``,
  an FSDP2-sharded one, whose weight is only gathered inside its own forward) runs each chunk under
  ``torch.utils.checkpoint``: the chunk's logits are recomputed in backward (one more matmul per chunk).
  With the head's weight tied to the input embedding (Qwen2.5 up to 3B, Llama-3.2, SmolLM2) and both
  trained, :func:`tied_embedding` and the head share one fp32 gradient buffer (a :class:`TiedGrad`): the
  head's chunks accumulate into it in the forward, the embedding's backward adds its rows into the same
  buffer, and the weight receives it once. Autograd alone would hold a second dense ``[v, d]`` gradient
  (the embedding's) and then their sum: 1.2 GB each for Qwen2.5-3B's in fp32.
* ``liger`` -- Liger-Kernel's fused linear cross-entropy (CUDA, ``pip install liger-kernel``).
* ``auto`` -- ``chunked`` on every device.

Logit soft-capping (``cap * tanh(logits / cap)``, the LLM config's ``final_logit_softcapping``) is applied
by every implementation. The families medmvl ships configs for (Qwen2.5, Llama-3.2, Phi-3, Phi-2 -- whose
head has a bias -- and SmolLM2) have none.
"""

from __future__ import annotations

import importlib.util
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.checkpoint import checkpoint

LOSSES = ("auto", "chunked", "full", "liger")
# chunk rows so that one chunk's fp32 logits are ~2**25 elements (128 MiB): 220 rows of a 152k vocabulary
CHUNK_ELEMENTS = 2**25


def resolve_loss(name: str) -> str:
    """``auto`` -> ``chunked``; ``liger`` is checked to be importable. Raises ``ValueError`` otherwise."""
    if name not in LOSSES:
        raise ValueError(f"llm.loss must be one of {LOSSES}, got {name!r}")
    if name == "liger" and importlib.util.find_spec("liger_kernel") is None:
        raise ValueError("llm.loss=liger needs liger-kernel (pip install liger-kernel, CUDA only)")
    return "chunked" if name == "auto" else name


def default_chunk_size(vocab: int) -> int:
    """Rows per chunk for a ``vocab``-wide head: ``CHUNK_ELEMENTS // vocab``, within [32, 4096]."""
    return max(32, min(4096, CHUNK_ELEMENTS // max(vocab, 1)))


def lm_head_loss(
    rows: torch.Tensor,
    targets: torch.Tensor,
    head: nn.Module,
    *,
    impl: str = "chunked",
    chunk_size: int | None = None,
    softcap: float | None = None,
    tied: TiedGrad | None = None,
) -> torch.Tensor:
    """Summed cross-entropy of ``head(rows)`` against ``targets``.

    Args:
        rows: hidden states ``[s, d]`` (the position before each target).
        targets: token ids ``[s]`` (every one supervised: no ignore index).
        head: the LM head (``nn.Linear``, or any module mapping ``[s, d] -> [s, v]``).
        impl: ``full`` | ``chunked`` | ``liger`` (``auto`` resolved by :func:`resolve_loss`).
        chunk_size: rows per chunk; ``None``: :func:`default_chunk_size` of the head's width.
        softcap: final logit soft-capping, or ``None``.
        tied: the buffer from :func:`tied_embedding` when the rows come from the head's own (tied)
            embedding; the head's weight gradient then reaches the weight through the embedding.

    Returns:
        The fp32 scalar ``sum_i CE(logits_i, targets_i)``.
    """
    impl = resolve_loss(impl)
    if impl == "full" or rows.shape[0] == 0:
        return _chunk_loss(head, rows, targets, softcap)
    weight, bias = getattr(head, "weight", None), getattr(head, "bias", None)
    if impl == "liger":
        return _liger_loss(rows, targets, weight, bias, softcap)
    size = chunk_size or default_chunk_size(weight.shape[0] if weight is not None else 32_768)
    if _plain_linear(head):
        if tied is not None and torch.is_grad_enabled():  # the weight's gradient via tied_embedding
            return LinearCrossEntropy.apply(rows, weight.detach(), bias, targets, size, softcap, tied)
        return LinearCrossEntropy.apply(rows, weight, bias, targets, size, softcap)
    grad = torch.is_grad_enabled()
    total = rows.new_zeros((), dtype=torch.float32)
    for start in range(0, rows.shape[0], size):
        h, t = rows[start : start + size], targets[start : start + size]  # [c, d], [c]
        if grad:
            total = total + checkpoint(_chunk_loss, head, h, t, softcap, use_reentrant=False)
        else:
            total = total + _chunk_loss(head, h, t, softcap)
    return total


class TiedGrad:
    """The fp32 ``[v, d]`` gradient of a weight shared by the input embedding and the LM head."""

    def __init__(self) -> None:
        self.grad: torch.Tensor | None = None


def shares_tied_weight(embedding: nn.Module, head: nn.Module) -> bool:
    """Whether ``embedding`` and the plain-``nn.Linear`` ``head`` share one trainable plain weight."""
    weight = getattr(embedding, "weight", None)
    return (
        type(embedding) is nn.Embedding
        and _plain_linear(head)
        and head.weight is weight
        and weight.requires_grad
        and embedding.max_norm is None
        and not embedding.sparse
    )


def tied_embedding(embedding: nn.Embedding, ids: torch.Tensor, tied: TiedGrad) -> torch.Tensor:
    """``embedding(ids)`` whose weight gradient is the head's (``tied.grad``) plus its own rows."""
    return _TiedEmbedding.apply(ids, embedding.weight, tied, embedding.padding_idx)


class _TiedEmbedding(torch.autograd.Function):
    """Lookup whose backward adds its rows into the head's gradient buffer (``index_add_``, in place).

    The head's backward always runs first (the embeddings feed the head), so ``tied.grad`` holds the
    head's gradient by then; without one (no supervised rows) a zero buffer is made.
    """

    @staticmethod
    def forward(
        ctx: Any, ids: torch.Tensor, weight: torch.Tensor, tied: TiedGrad, padding_idx: int | None
    ) -> torch.Tensor:
        ctx.save_for_backward(ids)
        ctx.tied, ctx.padding_idx, ctx.shape = tied, padding_idx, weight.shape
        ctx.dtype = weight.dtype
        return F.embedding(ids, weight, padding_idx)  # [..., d]

    @staticmethod
    def backward(ctx: Any, grad_out: torch.Tensor) -> tuple[torch.Tensor | None, ...]:
        (ids,) = ctx.saved_tensors
        grad, ctx.tied.grad = ctx.tied.grad, None
        if grad is None:
            grad = grad_out.new_zeros(ctx.shape, dtype=torch.float32)  # [v, d]
        ids, rows = ids.flatten(), grad_out.reshape(-1, ctx.shape[1])  # [n], [n, d]
        if ctx.padding_idx is not None:  # nn.Embedding: the padding row gets no gradient
            keep = ids != ctx.padding_idx
            ids, rows = ids[keep], rows[keep]
        grad.index_add_(0, ids, rows.to(grad.dtype))
        return None, grad.to(ctx.dtype), None, None


def _plain_linear(head: nn.Module) -> bool:
    """A bare ``nn.Linear`` whose weight is a plain tensor (not a PEFT wrapper, not FSDP-sharded)."""
    if type(head) is not nn.Linear:
        return False
    return type(head.weight.data) is torch.Tensor


def _chunk_loss(head: nn.Module, h: torch.Tensor, t: torch.Tensor, softcap: float | None) -> torch.Tensor:
    logits = head(h).float()  # [c, v]
    if softcap:
        logits = torch.tanh(logits / softcap) * softcap
    return F.cross_entropy(logits, t, reduction="sum")


def _liger_loss(
    rows: torch.Tensor,
    targets: torch.Tensor,
    weight: torch.Tensor | None,
    bias: torch.Tensor | None,
    softcap: float | None,
) -> torch.Tensor:
    from liger_kernel.transformers.fused_linear_cross_entropy import LigerFusedLinearCrossEntropyLoss

    if weight is None or not rows.is_cuda:
        raise ValueError("llm.loss=liger needs a linear LM head on a CUDA device; use chunked elsewhere")
    kwargs: dict[str, Any] = {"reduction": "sum"}
    if softcap:
        kwargs["softcap"] = softcap
    out = LigerFusedLinearCrossEntropyLoss(**kwargs)(weight, rows, targets, bias)
    return (out[0] if isinstance(out, tuple) else out).float()


def balanced_chunk(rows: int, chunk_size: int) -> int:
    """The chunk size that splits ``rows`` into as many chunks as ``chunk_size`` does, evenly: no small last
    chunk (a [103, v] matmul runs at two thirds of a [220, v] one's FLOP rate on a 2-core CPU)."""
    chunks = max(1, -(-rows // max(chunk_size, 1)))
    return max(1, -(-rows // chunks))


def _autocast_weight(weight: torch.Tensor) -> torch.Tensor:
    """``weight`` in the autocast dtype when autocast is on (the dtype its matmuls would cast it to), else
    itself. A detached or tied weight is not in autocast's cast cache, so each chunk's two matmuls would
    otherwise cast the whole ``[v, d]`` weight again."""
    device = weight.device.type
    if weight.dtype != torch.float32 or not torch.is_autocast_enabled(device):
        return weight
    return weight.detach().to(torch.get_autocast_dtype(device))


def _chunk_logits(
    h: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None, out: torch.Tensor
) -> torch.Tensor:
    """``h @ weight.T + bias`` in fp32, written into ``out`` (one buffer reused by every chunk: no fresh
    ``[c, v]`` allocation, so no page faults, per chunk)."""  # [c, d] -> [c, v]
    if weight.dtype != torch.float32 or torch.is_autocast_enabled(h.device.type):
        return out.copy_(F.linear(h, weight, bias))  # the matmul in the weight's (autocast) dtype, upcast
    if bias is None:
        return torch.mm(h, weight.t(), out=out)
    return torch.addmm(bias.float(), h, weight.t(), out=out)


class LinearCrossEntropy(torch.autograd.Function):
    """``sum CE(rows @ weight.T + bias, targets)``, chunk by chunk, gradients computed in the forward.

    Per chunk of ``c`` rows: logits ``[c, v]`` (fp32; max-shifted, exponentiated and normalised in
    place, so one ``[c, v]`` buffer), their log-sum-exp, the loss, then the softmax minus the one-hot
    target is the gradient of the logits; ``grad_rows = g @ weight`` and ``grad_weight += g.T @ rows``
    (accumulated in fp32, in place). Only ``[s, d]``, ``[v, d]`` and ``[v]`` gradients
    are kept for backward. The matmuls run in the weight's dtype, as ``F.linear`` does for ``full``.
    """

    @staticmethod
    def forward(
        ctx: Any,
        rows: torch.Tensor,
        weight: torch.Tensor,
        bias: torch.Tensor | None,
        targets: torch.Tensor,
        chunk_size: int,
        softcap: float | None,
        tied: TiedGrad | None = None,
    ) -> torch.Tensor:
        need_rows, need_weight, need_bias = ctx.needs_input_grad[:3]
        need_weight = need_weight or tied is not None
        ctx.tied = tied
        grad_rows = torch.empty_like(rows) if need_rows else None  # [s, d]
        grad_weight = torch.zeros_like(weight, dtype=torch.float32) if need_weight else None  # [v, d]
        grad_bias = torch.zeros_like(bias, dtype=torch.float32) if need_bias else None  # [v]
        total = torch.zeros((), dtype=torch.float32, device=rows.device)
        chunk_size = balanced_chunk(rows.shape[0], chunk_size)
        buffer = rows.new_empty((chunk_size, weight.shape[0]), dtype=torch.float32)  # [c, v], every chunk's
        matmul_weight = _autocast_weight(weight)  # [v, d]; under autocast cast once, not twice per chunk
        for start in range(0, rows.shape[0], chunk_size):
            h, t = rows[start : start + chunk_size], targets[start : start + chunk_size]  # [c, d], [c]
            logits = _chunk_logits(h, matmul_weight, bias, buffer[: h.shape[0]])  # [c, v] fp32
            capped = None
            if softcap:
                capped = torch.tanh(logits / softcap)  # [c, v]
                logits = capped * softcap
            picked = logits.gather(1, t.unsqueeze(1)).squeeze(1)  # [c]
            top = logits.amax(1, keepdim=True)  # [c, 1]
            g = logits.sub_(top).exp_()  # [c, v]: exp(logits - max), in place (no logsumexp temporary)
            norm = g.sum(1, keepdim=True)  # [c, 1]
            total += (top.squeeze(1) + norm.log().squeeze(1) - picked).sum()  # log-sum-exp - picked
            if grad_rows is None and grad_weight is None and grad_bias is None:
                continue
            g.div_(norm)  # [c, v]: softmax
            g[torch.arange(t.shape[0], device=t.device), t] -= 1.0
            if capped is not None:
                g.mul_(1.0 - capped.square_())
            g = g.to(weight.dtype)  # [c, v]
            if grad_rows is not None:
                grad_rows[start : start + chunk_size] = g @ matmul_weight  # [c, d]
            if grad_weight is not None:  # [v, d], accumulated without a [v, d] temporary in fp32
                if weight.dtype == torch.float32:
                    # addmm with out= (not addmm_): FlopCounterMode has no formula for the in-place op
                    torch.addmm(grad_weight, g.t(), h.to(weight.dtype), out=grad_weight)
                else:  # low-precision product (one [v, d] temporary in that dtype), added in fp32
                    grad_weight.add_(g.t() @ h.to(weight.dtype))
            if grad_bias is not None:
                grad_bias += g.float().sum(0)  # [v]
        ctx.save_for_backward(*(x for x in (grad_rows, grad_weight, grad_bias) if x is not None))
        ctx.present = (grad_rows is not None, grad_weight is not None, grad_bias is not None)
        ctx.dtypes = (rows.dtype, weight.dtype, None if bias is None else bias.dtype)
        return total

    @staticmethod
    def backward(ctx: Any, grad_out: torch.Tensor) -> tuple[torch.Tensor | None, ...]:
        saved = iter(ctx.saved_tensors)
        # scaled in place: a second [v, d] copy would double the peak (the buffers are ours, freed after)
        grads = [next(saved).mul_(grad_out) if present else None for present in ctx.present]
        if ctx.tied is not None:  # fp32, to the tied embedding's backward, which runs next
            ctx.tied.grad, grads[1] = grads[1], None
        grads = [None if g is None else g.to(dtype) for g, dtype in zip(grads, ctx.dtypes)]
        return (*grads, None, None, None, None)
