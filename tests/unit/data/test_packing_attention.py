"""Packed rows under ``sdpa_packed``: per-sample attention (no cross-sample work), the unpacked results."""

from __future__ import annotations

import copy

import lightning as L
import pytest
import torch

import medmvl.models.llm.attention as attention
from medmvl.data.collate import Collator
from medmvl.data.conversation import IGNORE_INDEX
from medmvl.data.packing import PackingCollator, varlen_kwargs
from medmvl.models.build import build_model
from medmvl.models.llm.loader import resolve_attn_implementation
from medmvl.models.vlm import MedVLM
from tests.conftest import compose_train

PAD = 0


@pytest.fixture(scope="module")
def model() -> MedVLM:
    L.seed_everything(0)
    return build_model(compose_train([]))


def _items(model: MedVLM) -> list[dict]:
    n_img = model.image_token_counts["<image>"]
    out = []
    for k, (prompt, answer) in enumerate([(5, 40), (30, 3), (8, 12), (2, 25)]):
        g = torch.Generator().manual_seed(k)
        ids = torch.cat(
            [
                torch.full((n_img,), model.image_token_id),
                torch.randint(100, 5000, (prompt + answer,), generator=g),
            ]
        )
        labels = ids.clone()
        labels[: len(ids) - answer] = IGNORE_INDEX
        pixels = torch.randn(1, 3, 32, 32, generator=g)
        out.append({"id": str(k), "input_ids": ids, "labels": labels, "pixel_values": pixels})
    return out


def test_varlen_kwargs_cut_at_restarts_and_rows() -> None:
    pos = torch.tensor([[0, 1, 2, 0, 1, 0], [0, 1, 2, 3, 4, 5]])  # [2, 6]
    kw = varlen_kwargs(pos)
    assert kw["cu_seq_lens_q"].tolist() == [0, 3, 5, 6, 12]
    assert kw["cu_seq_lens_q"].dtype == torch.int32 and kw["max_length_q"] == 6
    assert kw["cu_seq_lens_k"] is kw["cu_seq_lens_q"]


def test_auto_is_packed_sdpa_on_cpu(model: MedVLM) -> None:
    assert resolve_attn_implementation("auto") == "sdpa_packed"
    assert resolve_attn_implementation("sdpa") == "sdpa"
    assert model.llm.config._attn_implementation == "sdpa_packed"


def test_packed_sdpa_attends_within_samples_only(model: MedVLM, monkeypatch: pytest.MonkeyPatch) -> None:
    """Every SDPA call of a packed forward covers one sample (no query scores a key of another sample),
    and the loss and gradients equal the padded batch's."""
    items = _items(model)
    packed = PackingCollator(PAD, pack_length=sum(len(it["input_ids"]) for it in items))(items)
    assert packed["input_ids"].shape[0] == 1  # all four samples in one row
    lengths = sorted(len(it["input_ids"]) for it in items)
    calls: list[int] = []
    sdpa = attention.F.scaled_dot_product_attention

    def spy(q, *args, **kwargs):
        if kwargs.get("is_causal"):  # the LLM's (the vision tower's attention is not causal)
            calls.append(q.shape[2])
        return sdpa(q, *args, **kwargs)

    monkeypatch.setattr(attention.F, "scaled_dot_product_attention", spy)
    keys = ("input_ids", "attention_mask", "labels", "pixel_values")
    results = []
    for batch, extra in ((packed, ("position_ids",)), (Collator(PAD)(items), ())):
        m = copy.deepcopy(model)
        out = m(**{k: batch[k] for k in keys + extra})
        out["loss"].backward()
        grads = {n: p.grad for n, p in m.llm.named_parameters() if p.grad is not None}
        results.append((out["loss"].detach(), grads))
        if extra:
            layers = m.llm.config.num_hidden_layers
            assert sorted(calls) == sorted(lengths * layers)  # one call per sample and layer, its length
    (loss_packed, g_packed), (loss_padded, g_padded) = results
    torch.testing.assert_close(loss_packed, loss_padded, rtol=1e-5, atol=1e-5)
    for name, grad in g_padded.items():
        torch.testing.assert_close(g_packed[name], grad, rtol=1e-3, atol=1e-5, msg=name)


def test_packed_sdpa_equals_dense_block_mask(model: MedVLM) -> None:
    """``sdpa_packed`` gives transformers' ``sdpa`` (dense block-diagonal mask) hidden states."""
    items = _items(model)
    batch = PackingCollator(PAD)(items)  # rows as long as the longest sample: two or more rows
    assert batch["input_ids"].shape[0] > 1
    embeds = model.merge(batch["input_ids"], batch["pixel_values"]).detach()  # [r, n, d]
    decoder = model.llm.get_decoder()
    kw = {"inputs_embeds": embeds, "position_ids": batch["position_ids"], "use_cache": False}
    with torch.no_grad():
        ours = decoder(**kw, **varlen_kwargs(batch["position_ids"])).last_hidden_state
        decoder.config._attn_implementation = "sdpa"
        try:
            dense = decoder(**kw).last_hidden_state
        finally:
            decoder.config._attn_implementation = "sdpa_packed"
    real = batch["attention_mask"].bool()  # the pad tail is a segment of its own in both
    torch.testing.assert_close(ours[real], dense[real], rtol=1e-4, atol=1e-5)
