"""Held-out accuracy of a caption-pre-trained demo encoder alone (no LLM): the ceiling of the 2D demo.

For every held-out image of the built demo set, the encoder's argmax caption is compared, sentence by
sentence (one per organ, then modality + region), with the caption its labels give; facts the labels leave
``unknown`` are skipped. Trains each backbone variant with ``caption_pretrained(cache=False)``.

    python experiments/demo_2d/caption_probe.py            # after one `make train` (demo set built)
"""

from __future__ import annotations

import json
import tempfile
import time
from pathlib import Path

import torch
from hydra.utils import instantiate
from omegaconf import OmegaConf

from medmvl.assets import cache_dir
from medmvl.demo import sources as src
from medmvl.demo.caption_pretrain import caption_pretrained, load_captioned_images
from medmvl.demo.questions_2d import caption

CONF = Path(__file__).resolve().parents[2] / "src" / "medmvl" / "conf"
PATCH = "medmvl.models.encoders.patch.PatchEncoder"
VARIANTS = {
    "linear stem, width 256": {
        "_target_": PATCH,
        "image_size": 64,
        "patch_size": 16,
        "hidden_size": 256,
        "num_layers": 0,
    },
    "conv stem, width 128": {
        "_target_": PATCH,
        "image_size": 64,
        "patch_size": 16,
        "hidden_size": 128,
        "num_layers": 0,
        "stem": "conv",
    },
    "linear stem + 2 layers": {
        "_target_": PATCH,
        "image_size": 64,
        "patch_size": 16,
        "hidden_size": 256,
        "num_layers": 2,
    },
}
FACTS = ("liver", "heart", "stomach", "modality + region")


def main() -> None:
    torch.set_num_threads(1)
    root = cache_dir() / "demo_2d"
    views = {(v.source, v.index): v for v in src.load_views()}
    val = json.loads((root / "val.json").read_text())
    records = [
        {
            "id": s["id"],
            "image": s["image"],
            "conversations": [
                {"from": "human", "value": "<image>"},
                {"from": "gpt", "value": caption(views[(s["source"], s["source_index"])], s["flipped"])},
            ],
        }
        for s in val
    ]
    llm_cfg = OmegaConf.to_container(OmegaConf.load(CONF / "llm" / "smollm2.yaml"))
    tokenizer = instantiate(llm_cfg).tokenizer
    with tempfile.TemporaryDirectory() as tmp:
        val_file = Path(tmp) / "val_captions.json"
        val_file.write_text(json.dumps(records))
        for name, backbone in VARIANTS.items():
            start = time.time()
            enc = caption_pretrained(
                backbone=backbone,
                llm=llm_cfg,
                annotations=root / "captions.json",
                unknown_text="unknown",
                cache=False,
            ).eval()
            seconds = time.time() - start
            pixels, truths = load_captioned_images(val_file, enc.backbone.preprocess, root)
            with torch.no_grad():
                ids = enc.slot_logits(pixels).argmax(-1)  # [n, slots]
            vocab = torch.tensor(enc.vocab_ids)
            hits: dict[str, list[bool]] = {f: [] for f in FACTS}
            for row, truth in zip(ids, truths):
                pred = tokenizer.decode(vocab[row].tolist()).split(". ")
                for k, sentence in enumerate(truth.split(". ")[: len(FACTS)]):
                    if "unknown" not in sentence:
                        got = pred[k] if k < len(pred) else ""
                        hits[FACTS[k]].append(got.strip(" .") == sentence.strip(" ."))
            scores = ", ".join(
                f"{f} {100 * sum(h) / len(h):.1f} % (n {len(h)})" for f, h in hits.items() if h
            )
            print(f"{name}: trained in {seconds:.0f} s; held-out {scores}", flush=True)


if __name__ == "__main__":
    main()
