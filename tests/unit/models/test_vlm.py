"""MedVLM: merge by placeholder, loud count checks, loss on supervised positions, cached generation."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from medmvl.data.conversation import IGNORE_INDEX
from medmvl.models.vlm import MedVLM


def _ids(model: MedVLM, layout: list[str | int]) -> list[int]:
    """Token ids for a layout of text pieces and image blocks (an int = that many image tokens)."""
    out: list[int] = []
    for piece in layout:
        if isinstance(piece, int):
            out += [model.image_token_id] * piece
        else:
            out += model.tokenizer(piece, add_special_tokens=False).input_ids
    return out


def test_connector_sized_from_built_parts(tiny_model: MedVLM) -> None:
    assert tiny_model.encoder.grid == (4, 4)
    assert tiny_model.connector.num_tokens == 16
    assert tiny_model.image_token_counts == {"<image>": 16}
    assert tiny_model.connector.proj[0].in_features == tiny_model.encoder.out_dim
    assert tiny_model.connector.proj[-1].out_features == tiny_model.llm.config.hidden_size


def test_merge_places_features_at_placeholders(tiny_model: MedVLM) -> None:
    m = tiny_model.connector.num_tokens
    a = _ids(tiny_model, ["Look:", m, "then", m, "end"])  # two images in sample 0
    b = _ids(tiny_model, ["A much longer prefix before the image", m])  # one image at the end
    t = max(len(a), len(b))
    pad = tiny_model.tokenizer.pad_token_id
    input_ids = torch.tensor([a + [pad] * (t - len(a)), b + [pad] * (t - len(b))])
    pixels = torch.randn(3, 3, 32, 32)
    with torch.no_grad():
        merged = tiny_model.merge(input_ids, pixels)
        feats = tiny_model.get_image_features(pixels)  # [3, m, d]
        text = tiny_model.llm.get_input_embeddings()(input_ids)
    img = input_ids == tiny_model.image_token_id
    torch.testing.assert_close(merged[~img], text[~img])
    starts0 = [i for i in range(len(a)) if a[i] == tiny_model.image_token_id and (i == 0 or a[i - 1] != a[i])]
    start1 = b.index(tiny_model.image_token_id)
    torch.testing.assert_close(merged[0, starts0[0] : starts0[0] + m], feats[0])
    torch.testing.assert_close(merged[0, starts0[1] : starts0[1] + m], feats[1])
    torch.testing.assert_close(merged[1, start1 : start1 + m], feats[2])


def test_count_mismatch_is_loud(tiny_model: MedVLM) -> None:
    ids = torch.tensor([_ids(tiny_model, ["x", tiny_model.connector.num_tokens - 1])])
    with pytest.raises(ValueError, match="image tokens and features do not match"):
        tiny_model.merge(ids, torch.randn(1, 3, 32, 32))
    with pytest.raises(ValueError, match="no pixel_values"):
        tiny_model.merge(ids, None)


def test_loss_equals_full_logits_reference(tiny_model: MedVLM) -> None:
    m = tiny_model.connector.num_tokens
    ids = torch.tensor([_ids(tiny_model, ["Q:", m, "What is it? A: a chest x-ray."])])
    labels = ids.clone()
    labels[:, : ids.shape[1] - 5] = IGNORE_INDEX
    pixels = torch.randn(1, 3, 32, 32)
    mask = torch.ones_like(ids)
    with torch.no_grad():
        out = tiny_model(input_ids=ids, attention_mask=mask, labels=labels, pixel_values=pixels)
        embeds = tiny_model.merge(ids, pixels)
        logits = tiny_model.llm(inputs_embeds=embeds, attention_mask=mask).logits
    ref = F.cross_entropy(logits[0, :-1], labels[0, 1:], ignore_index=IGNORE_INDEX)
    torch.testing.assert_close(out["loss"], ref, rtol=1e-5, atol=1e-5)
    assert int(out["num_tokens"]) == 5


def test_generate_with_cache_matches_manual_greedy(tiny_model: MedVLM) -> None:
    m = tiny_model.connector.num_tokens
    ids = torch.tensor([_ids(tiny_model, [m, "Describe the image."])])
    mask = torch.ones_like(ids)
    pixels = torch.randn(1, 3, 32, 32)
    new = tiny_model.generate(ids, mask, pixels, max_new_tokens=6, do_sample=False, eos_token_id=None)
    assert new.shape == (1, 6)
    with torch.no_grad():
        embeds = tiny_model.merge(ids, pixels)
        manual = []
        for _ in range(6):
            logits = tiny_model.llm(inputs_embeds=embeds).logits[:, -1]
            nxt = logits.argmax(-1)
            manual.append(int(nxt))
            embeds = torch.cat([embeds, tiny_model.llm.get_input_embeddings()(nxt)[:, None]], dim=1)
    assert new[0].tolist() == manual
