"""Packed rows: restarting positions, no attention across samples, the same logits and loss as unpacked."""

from __future__ import annotations

import lightning as L
import pytest
import torch

from medmvl.data.collate import Collator
from medmvl.data.conversation import IGNORE_INDEX
from medmvl.data.packing import PackingCollator, pack
from medmvl.models.build import build_model
from medmvl.models.vlm import MedVLM
from tests.conftest import compose_train

PAD = 0


@pytest.fixture(scope="module")
def model() -> MedVLM:
    L.seed_everything(0)
    return build_model(compose_train([])).eval()


def _item(model: MedVLM, sid: str, prompt: int, answer: int, images: int, seed: int) -> dict:
    """A sample: ``images`` image blocks, ``prompt`` text tokens, then ``answer`` supervised tokens."""
    g = torch.Generator().manual_seed(seed)
    n_img = model.image_token_counts["<image>"]
    text = torch.randint(100, 5000, (prompt + answer,), generator=g)
    ids = torch.cat([torch.full((images * n_img,), model.image_token_id), text])
    labels = ids.clone()
    labels[: len(ids) - answer] = IGNORE_INDEX
    pixels = torch.randn(images, 3, 32, 32, generator=g) if images else None
    return {"id": sid, "input_ids": ids, "labels": labels, "pixel_values": pixels, "pixel_values_3d": None}


@pytest.fixture(scope="module")
def items(model: MedVLM) -> list[dict]:
    shapes = [(5, 3, 1), (30, 12, 1), (2, 2, 0), (11, 6, 2), (7, 20, 1), (3, 1, 1)]
    return [_item(model, f"s{k}", *shape, seed=k) for k, shape in enumerate(shapes)]


def test_pack_respects_capacity_and_places_every_sample_once() -> None:
    lengths = [50, 10, 40, 30, 20, 60, 5]
    rows = pack(lengths, 70)
    assert sorted(i for row in rows for i in row) == list(range(len(lengths)))
    assert all(sum(lengths[i] for i in row) <= 70 for row in rows)
    assert len(rows) == 4  # 215 tokens need at least ceil(215 / 70) = 4 rows of 70
    with pytest.raises(ValueError, match="longer than the packed row length"):
        pack([80], 70)


def test_collate_restarts_positions_and_keeps_image_order(model: MedVLM, items: list[dict]) -> None:
    batch = PackingCollator(PAD)(items)
    longest = max(len(it["input_ids"]) for it in items)
    assert batch["input_ids"].shape[1] == longest  # rows no wider than the padded batch
    assert batch["input_ids"].shape[0] < len(items)  # and fewer of them
    assert int(batch["attention_mask"].sum()) == sum(len(it["input_ids"]) for it in items)
    by_id = {it["id"]: it for it in items}
    for r in range(batch["input_ids"].shape[0]):
        starts = (batch["position_ids"][r] == 0).nonzero().flatten().tolist()
        for sid_start in starts:  # every segment counts 0, 1, 2, ... up to the next restart
            seg = batch["position_ids"][r, sid_start:]
            stop = next((k for k in range(1, len(seg)) if seg[k] == 0), len(seg))
            assert seg[:stop].tolist() == list(range(stop))
    # images follow the samples' packed order, which is the order of the placeholders in the rows
    expected = torch.cat(
        [by_id[s]["pixel_values"] for s in batch["ids"] if by_id[s]["pixel_values"] is not None]
    )
    assert torch.equal(batch["pixel_values"], expected)
    # a sample's first label is ignored: nothing may learn to predict the next sample's first token
    starts = batch["position_ids"] == 0
    assert (batch["labels"][starts] == IGNORE_INDEX).all()


def _segments(batch: dict, items: list[dict]) -> list[tuple[dict, int, int]]:
    """(item, row, start) of every packed sample: rows hold consecutive ``ids``, left to right."""
    by_id, ids, out = {it["id"]: it for it in items}, iter(batch["ids"]), []
    for r in range(batch["input_ids"].shape[0]):
        start = 0
        while start < batch["input_ids"].shape[1] and batch["attention_mask"][r, start]:
            item = by_id[next(ids)]
            out.append((item, r, start))
            start += len(item["input_ids"])
    return out


def test_packed_logits_equal_unpacked(model: MedVLM, items: list[dict]) -> None:
    batch = PackingCollator(PAD)(items)
    segments = _segments(batch, items)
    assert len(segments) == len(items) and len({r for _, r, _ in segments}) < len(items)
    with torch.no_grad():
        packed = model(
            input_ids=batch["input_ids"],
            attention_mask=batch["attention_mask"],
            pixel_values=batch["pixel_values"],
            position_ids=batch["position_ids"],
        )["logits"]  # [r, n, v]
        for item, r, start in segments:
            n = len(item["input_ids"])
            assert torch.equal(batch["input_ids"][r, start : start + n], item["input_ids"])
            alone = model(
                input_ids=item["input_ids"][None],
                attention_mask=torch.ones(1, n, dtype=torch.long),
                pixel_values=item["pixel_values"],
            )["logits"][0]  # [n, v]
            torch.testing.assert_close(packed[r, start : start + n], alone, atol=2e-5, rtol=1e-4)


def test_packed_loss_equals_padded_loss(model: MedVLM, items: list[dict]) -> None:
    padded, packed = Collator(PAD)(items), PackingCollator(PAD)(items)
    with torch.no_grad():
        want = model(**{k: padded[k] for k in ("input_ids", "attention_mask", "labels", "pixel_values")})
        got = model(
            **{
                k: packed[k]
                for k in ("input_ids", "attention_mask", "labels", "pixel_values", "position_ids")
            }
        )
    assert int(got["num_tokens"]) == int(want["num_tokens"])
    torch.testing.assert_close(got["loss"], want["loss"], atol=1e-5, rtol=1e-5)


def test_fixed_pack_length_fills_rows(items: list[dict]) -> None:
    total = sum(len(it["input_ids"]) for it in items)
    batch = PackingCollator(PAD, pack_length=total)(items)
    assert batch["input_ids"].shape == (1, total)  # one row, no padding at all
    assert int(batch["attention_mask"].sum()) == total


def test_data_packing_switch_trains(tmp_path) -> None:
    """``data.packing`` / ``bucket_by_length``: the loader buckets and packs, the module takes position ids."""
    from hydra.utils import instantiate

    from medmvl.cli.train import train
    from tests.helpers.colour import write_colour_set

    ann = write_colour_set(tmp_path / "data")
    overrides = [
        "debug=fast",
        "data.packing=true",
        "data.pack_length=512",
        "data.bucket_by_length=true",
        f"data.annotations={ann}",
        f"data.image_dir={tmp_path / 'data' / 'imgs'}",
    ]
    cfg = compose_train(overrides, output_dir=tmp_path / "run")
    model = build_model(cfg)
    dm = instantiate(cfg.data, _convert_="all")(
        tokenizer=model.tokenizer,
        image_token_counts=model.image_token_counts,
        image_config=model.image_config,
    )
    loader = dm.train_dataloader()
    assert loader.sampler.arrange is not None  # length buckets, then packing within each batch
    batch = next(iter(loader))
    assert batch["input_ids"].shape[0] == 1 and "position_ids" in batch  # 4 short samples in one row
    assert "train/loss" in train(cfg)


def test_frozen_encoder_has_no_graph_and_head_sees_only_supervised_positions(
    items: list[dict], monkeypatch: pytest.MonkeyPatch
) -> None:
    """The two always-on savings: no autograd through a frozen tower, LM head on supervised tokens only."""
    from omegaconf import OmegaConf

    from medmvl.training.stages import apply_stage

    cfg = compose_train(["stage=finetune"])  # encoder frozen, connector + LLM trained
    model = build_model(cfg)
    apply_stage(model, OmegaConf.to_container(cfg.stage, resolve=True))
    seen: dict[str, torch.Tensor] = {}
    model.encoder.register_forward_hook(lambda m, i, out: seen.update(encoder=out))
    model.connector.register_forward_hook(lambda m, i, out: seen.update(connector=out))
    import medmvl.models.vlm as vlm

    loss = vlm.lm_head_loss  # the LM head's input, whichever loss implementation (chunked by default)
    monkeypatch.setattr(
        vlm, "lm_head_loss", lambda rows, *a, **k: (seen.update(head_in=rows), loss(rows, *a, **k))[1]
    )
    batch = PackingCollator(PAD)(items)
    out = model(
        **{k: batch[k] for k in ("input_ids", "attention_mask", "labels", "pixel_values", "position_ids")}
    )
    out["loss"].backward()
    assert seen["encoder"].grad_fn is None and not seen["encoder"].requires_grad
    assert seen["connector"].requires_grad
    supervised = int((batch["labels"][:, 1:] != IGNORE_INDEX).sum())
    assert seen["head_in"].shape[0] == supervised == int(out["num_tokens"])


@pytest.mark.parametrize("collate", [Collator, PackingCollator])
def test_host_target_index_gives_the_fallback_loss(model: MedVLM, items: list[dict], collate) -> None:
    """The collators' ``target_index`` (counted on the host) selects exactly the supervised targets."""
    batch = collate(PAD)(items)
    labels = batch["labels"]
    index = batch["target_index"]
    t = labels.shape[1]
    want_positions = [
        r * t + c for r in range(labels.shape[0]) for c in range(1, t) if labels[r, c] != IGNORE_INDEX
    ]
    assert index.tolist() == want_positions  # row-major, column 0 never a target (nothing precedes it)
    assert batch["num_input_tokens"] == int(batch["attention_mask"].sum())
    keys = ("input_ids", "attention_mask", "labels", "pixel_values", "position_ids")
    with torch.no_grad():
        inputs = {k: batch[k] for k in keys if k in batch}
        want, got = model(**inputs), model(**inputs, target_index=index)
    assert int(got["num_tokens"]) == int(want["num_tokens"]) == len(index)
    torch.testing.assert_close(got["loss"], want["loss"], atol=0, rtol=0)
