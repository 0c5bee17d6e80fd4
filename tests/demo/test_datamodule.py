"""The demo data module builds the real-scan set in prepare_data and serves it like user data."""

from __future__ import annotations

import json

from hydra.utils import instantiate

from tests.conftest import ROOT, compose_train


def test_demo_is_what_make_train_runs_and_not_the_default(tmp_path) -> None:
    cfg = compose_train(["experiment=demo"], output_dir=tmp_path)
    assert cfg.data._target_.endswith("DemoDataModule") and cfg.llm.gguf_file.endswith(".gguf")
    assert cfg.post_train._target_.endswith("demo_report") and cfg.stage.llm.mode == "lora"
    plain = compose_train([], output_dir=tmp_path)
    assert plain.data._target_.endswith(".MedVLDataModule") and plain.post_train is None
    makefile = (ROOT / "Makefile").read_text()
    assert "$(BIN)/python train.py experiment=demo $(ARGS)" in makefile


def test_prepare_data_builds_and_batches(tmp_path) -> None:
    cfg = compose_train(
        [
            "data=demo_2d",
            f"data.root={tmp_path / 'demo'}",
            "data.n_train=24",
            "data.n_val=12",
            "data.image_size=32",
            "data.turns=2",
            "data.num_workers=0",
            "data.batch_size=4",
        ],
        output_dir=tmp_path,
    )
    tokenizer = instantiate(cfg.llm.tokenizer)
    image_config = {"image_size": (32, 32), "image_mean": (0.5,) * 3, "image_std": (0.5,) * 3, "channels": 3}
    dm = instantiate(cfg.data)(
        tokenizer=tokenizer, image_token_counts={"<image>": 16}, image_config=image_config
    )
    dm.prepare_data()
    assert (tmp_path / "demo" / "train.json").exists() and (tmp_path / "demo" / "val.json").exists()
    dm.setup("fit")
    train = json.loads((tmp_path / "demo" / "train.json").read_text())
    assert len(dm.train_set) == len(train) < 24 and len(dm.val_set) == 12
    assert sum(len(s["conversations"]) // 2 for s in train) == 24  # 24 questions, up to 2 per image
    batch = next(iter(dm.train_dataloader()))
    assert batch["pixel_values"].shape == (4, 3, 32, 32)
    assert int((batch["input_ids"] == tokenizer.convert_tokens_to_ids("<image>")).sum()) == 4 * 16
