"""Chunked LM-head cross-entropy: the same loss and gradients as the full-logits path."""

from __future__ import annotations

import copy

import pytest
import torch
import torch.nn.functional as F
from peft import LoraConfig, get_peft_model
from torch import nn

from medmvl.data.conversation import IGNORE_INDEX
from medmvl.models.loss import (
    LinearCrossEntropy,
    TiedGrad,
    balanced_chunk,
    default_chunk_size,
    lm_head_loss,
    resolve_loss,
    shares_tied_weight,
    tied_embedding,
)
from medmvl.models.vlm import MedVLM


def _case(bias: bool, s: int = 37, d: int = 16, v: int = 300, seed: int = 0):
    torch.manual_seed(seed)
    head = nn.Linear(d, v, bias=bias)
    rows = torch.randn(s, d, requires_grad=True)  # [s, d]
    targets = torch.randint(0, v, (s,))  # [s]
    return head, rows, targets


def _grads(loss: torch.Tensor, head: nn.Module, rows: torch.Tensor) -> list[torch.Tensor]:
    params = [p for p in head.parameters() if p.requires_grad]
    return list(torch.autograd.grad(loss, [rows, *params]))


def _reference(head: nn.Module, rows: torch.Tensor, targets: torch.Tensor, softcap: float | None = None):
    logits = head(rows).float()  # [s, v]
    if softcap:
        logits = torch.tanh(logits / softcap) * softcap
    return F.cross_entropy(logits, targets, reduction="sum")


@pytest.mark.parametrize("bias", [False, True])  # Phi-2's head has a bias
@pytest.mark.parametrize("softcap", [None, 5.0])
@pytest.mark.parametrize("chunk", [1, 8, 64])
def test_chunked_equals_full(bias: bool, softcap: float | None, chunk: int) -> None:
    head, rows, targets = _case(bias)
    ref = _reference(head, rows, targets, softcap)
    out = lm_head_loss(rows, targets, head, impl="chunked", chunk_size=chunk, softcap=softcap)
    torch.testing.assert_close(out, ref, rtol=1e-5, atol=1e-5)
    for got, want in zip(_grads(out, head, rows), _grads(ref, head, rows)):
        torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-6)


def test_tied_weights_get_both_gradients() -> None:
    """A head tied to the input embeddings receives the sum of both uses' gradients."""
    torch.manual_seed(0)
    embed = nn.Embedding(50, 8)
    head = nn.Linear(8, 50, bias=False)
    head.weight = embed.weight
    ids, targets = torch.randint(0, 50, (21,)), torch.randint(0, 50, (21,))
    grads = []
    for impl in ("full", "chunked"):
        embed.weight.grad = None
        rows = torch.tanh(embed(ids))  # [s, d]
        (lm_head_loss(rows, targets, head, impl=impl, chunk_size=4) * 0.5).backward()
        grads.append(embed.weight.grad.clone())
    torch.testing.assert_close(grads[1], grads[0], rtol=1e-5, atol=1e-6)


def test_frozen_head_and_no_grad() -> None:
    head, rows, targets = _case(bias=True)
    head.requires_grad_(False)
    out = lm_head_loss(rows, targets, head, chunk_size=5)
    (grad,) = torch.autograd.grad(out, rows)
    ref = _reference(head, rows, targets)
    torch.testing.assert_close(grad, torch.autograd.grad(ref, rows)[0], rtol=1e-5, atol=1e-6)
    with torch.no_grad():
        torch.testing.assert_close(lm_head_loss(rows, targets, head, chunk_size=5), ref.detach())


def test_lora_wrapped_head_uses_checkpointed_chunks() -> None:
    """A PEFT LoRA ``lm_head`` is not a plain Linear: each chunk is recomputed in backward instead."""
    torch.manual_seed(0)
    base = nn.Sequential()
    base.add_module("lm_head", nn.Linear(16, 120))
    model = get_peft_model(
        base, LoraConfig(r=4, lora_alpha=8, target_modules=["lm_head"], init_lora_weights=False)
    )
    head = model.base_model.model.lm_head
    assert type(head) is not nn.Linear
    _, rows, targets = _case(bias=False, v=120)
    ref = _reference(head, rows, targets)
    out = lm_head_loss(rows, targets, head, chunk_size=6)
    torch.testing.assert_close(out, ref, rtol=1e-5, atol=1e-5)
    for got, want in zip(_grads(out, head, rows), _grads(ref, head, rows)):
        torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-6)


def test_bf16_matches_full_to_bf16_rounding() -> None:
    head, rows, targets = _case(bias=False, v=1000)
    head, rows = head.to(torch.bfloat16), rows.detach().to(torch.bfloat16).requires_grad_()
    ref = _reference(head, rows, targets)
    out = lm_head_loss(rows, targets, head, chunk_size=7)
    torch.testing.assert_close(out, ref, rtol=1e-3, atol=1e-3)
    for got, want in zip(_grads(out, head, rows), _grads(ref, head, rows)):
        assert got.dtype == want.dtype
        torch.testing.assert_close(got.float(), want.float(), rtol=2e-2, atol=2e-3)


def test_autocast_bf16_matches_full() -> None:
    """fp32 weights under bf16 autocast (``bf16-mixed``): the logits matmul in bf16 as the full path's."""
    head, rows, targets = _case(bias=True, v=1000)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        ref = _reference(head, rows, targets)
        out = lm_head_loss(rows, targets, head, impl="chunked", chunk_size=7)
    torch.testing.assert_close(out, ref, rtol=1e-4, atol=1e-3)
    for got, want in zip(_grads(out, head, rows), _grads(ref, head, rows)):
        torch.testing.assert_close(got.float(), want.float(), rtol=2e-2, atol=5e-3)


@pytest.mark.parametrize(("rows", "chunk", "want"), [(763, 220, 191), (440, 220, 220), (5, 64, 5), (0, 8, 1)])
def test_balanced_chunks(rows: int, chunk: int, want: int) -> None:
    assert balanced_chunk(rows, chunk) == want


def test_names_and_sizes() -> None:
    assert resolve_loss("auto") == "chunked"
    with pytest.raises(ValueError, match="llm.loss must be one of"):
        resolve_loss("fused")
    assert default_chunk_size(151_936) == 220
    assert default_chunk_size(10) == 4096
    assert issubclass(LinearCrossEntropy, torch.autograd.Function)


def test_model_loss_chunked_equals_full(tiny_model: MedVLM) -> None:
    """The whole model: the same loss and LLM gradients with ``llm.loss`` chunked and full."""
    model = copy.deepcopy(tiny_model)
    m = model.connector.num_tokens
    ids = [model.image_token_id] * m + list(range(10, 40))
    input_ids = torch.tensor([ids, ids[:-7] + [model.tokenizer.pad_token_id] * 7])  # [2, t]
    labels = input_ids.clone()
    labels[:, : m + 3] = IGNORE_INDEX
    labels[1, -7:] = IGNORE_INDEX
    batch = {
        "input_ids": input_ids,
        "attention_mask": (labels != IGNORE_INDEX).long() | (input_ids != model.tokenizer.pad_token_id),
        "labels": labels,
        "pixel_values": torch.randn(2, 3, 32, 32),
    }
    results = []
    for impl, chunk in (("full", None), ("chunked", 4)):
        model.loss_impl, model.loss_chunk_size = impl, chunk
        model.zero_grad()
        out = model(**batch)
        out["loss"].backward()
        grads = {n: p.grad.clone() for n, p in model.llm.named_parameters() if p.grad is not None}
        results.append((out["loss"].detach(), grads))
    (loss_full, g_full), (loss_chunk, g_chunk) = results
    torch.testing.assert_close(loss_chunk, loss_full, rtol=1e-6, atol=1e-6)
    assert g_full.keys() == g_chunk.keys() and g_full
    for name in g_full:
        torch.testing.assert_close(g_chunk[name], g_full[name], rtol=1e-4, atol=1e-6, msg=name)


@pytest.mark.parametrize("padding_idx", [None, 3])
def test_tied_embedding_shares_one_gradient_buffer(padding_idx: int | None) -> None:
    """``tied_embedding`` + the head's buffer: the same gradients as autograd's two dense ones, summed."""
    torch.manual_seed(0)
    embed = nn.Embedding(50, 8, padding_idx=padding_idx)
    head = nn.Linear(8, 50, bias=False)
    head.weight = embed.weight
    assert shares_tied_weight(embed, head)
    ids = torch.tensor([3, 1, 3, 7, 49, 0, 3, 12, 7])
    targets = torch.randint(0, 50, (8,))
    grads = []
    for use_buffer in (False, True):
        embed.weight.grad = None
        tied = TiedGrad() if use_buffer else None
        e = tied_embedding(embed, ids, tied) if use_buffer else embed(ids)  # [9, d]
        rows = torch.tanh(e[:-1])  # [8, d]
        (lm_head_loss(rows, targets, head, impl="chunked", chunk_size=3, tied=tied) * 0.5).backward()
        grads.append(embed.weight.grad.clone())
        assert tied is None or tied.grad is None  # handed to the weight, not kept
    torch.testing.assert_close(grads[1], grads[0], rtol=1e-5, atol=1e-6)
    if padding_idx is not None:  # the padding row: only the head's share, as nn.Embedding does
        assert grads[1][padding_idx].abs().sum() > 0


def test_tied_detection() -> None:
    embed, head = nn.Embedding(20, 4), nn.Linear(4, 20, bias=False)
    assert not shares_tied_weight(embed, head)  # separate weights
    head.weight = embed.weight
    assert shares_tied_weight(embed, head)
    embed.weight.requires_grad_(False)
    assert not shares_tied_weight(embed, head)  # frozen (LoRA): nothing to share


def test_flop_counter_sees_the_chunked_matmuls() -> None:
    """``FlopCounterMode`` (the MFU check of ``gpu_scale.py``) counts the chunked path as the full one:
    forward, grad-rows and grad-weight matmuls, 3 x 2 x s x d x v (an in-place ``addmm_`` it does not count)."""
    from torch.utils.flop_counter import FlopCounterMode

    head, rows, targets = _case(bias=False)
    counts = []
    for impl in ("full", "chunked"):
        counter = FlopCounterMode(display=False)
        with counter:
            lm_head_loss(rows, targets, head, impl=impl, chunk_size=8).backward()
        counts.append(counter.get_total_flops())
    s, d, v = rows.shape[0], rows.shape[1], head.out_features
    assert counts == [3 * 2 * s * d * v] * 2
