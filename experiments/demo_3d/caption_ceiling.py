"""The 3D demo's ceiling before any LLM time: how well the caption-pre-trained encoder alone answers.

Builds (or loads from the cache) the encoder of ``experiment=demo_3d`` exactly as ``train.py`` does, reads
each held-out volume's caption from the encoder's slots (greedy word per slot), and answers every held-out
question from that caption alone: presence from "seen" / "absent", the side from "on the left/right", the
larger of two organs from "The largest is the X". A question whose fact the caption leaves ``unknown`` (or
names neither organ) counts as wrong. Also reports per-slot accuracy against the true held-out captions.

    python experiments/demo_3d/caption_ceiling.py [hydra overrides, e.g. encoder.steps=600]
"""

from __future__ import annotations

import json
import re
import sys
import time
from collections import defaultdict
from pathlib import Path

import torch
from hydra import compose, initialize_config_dir
from hydra.utils import instantiate

import medmvl
from medmvl.demo import build_3d as demo3d
from medmvl.demo.caption_pretrain import caption_targets, load_captioned_images
from medmvl.demo.captions_3d import caption_3d

CONF = Path(medmvl.__file__).parent / "conf"


def answer_from_caption(text: str, question: str, choices: list[str]) -> str | None:
    """The answer the caption gives to one demo question, or ``None`` when it does not say."""
    organs = [o for o in demo3d.ORGANS if f"the {o}" in question]
    if choices == ["yes", "no"]:
        m = re.search(rf"The {organs[0]} (?:is|are) (seen|absent)", text)
        return None if m is None else {"seen": "yes", "absent": "no"}[m.group(1)]
    if choices == ["left", "right"]:
        m = re.search(rf"The {organs[0]} (?:is|are) seen on the (left|right)", text)
        return None if m is None else m.group(1)
    m = re.search(r"The largest is the (\w+)", text)
    return m.group(1) if m and m.group(1) in choices else None


def main(overrides: list[str]) -> None:
    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        cfg = compose(config_name="train", overrides=["experiment=demo_3d", *overrides])
    torch.set_num_threads(1)
    start = time.time()
    encoder = instantiate(cfg.encoder).eval()  # caption pre-training (or the cached result)
    print(f"encoder ready in {time.time() - start:.0f} s")
    tokenizer = instantiate(cfg.llm.tokenizer)
    root = Path(cfg.data.root)
    val = json.loads((root / "val.json").read_text())
    truth = []
    for s in val:
        z0, z1 = s["z_range"]
        c = s["crop"]
        r = demo3d.Render(z0, z1 - z0 + 1, c["x0"], c["y0"], c["side"], s["flipped"])
        truth.append(caption_3d(demo3d.labels(r)))
    records = [
        {
            "id": s["id"],
            "image3d": s["image3d"],
            "conversations": [{"from": "human", "value": "<image3d>"}, {"from": "gpt", "value": t}],
        }
        for s, t in zip(val, truth)
    ]
    tmp = root / ".val_captions.json"
    tmp.write_text(json.dumps(records))
    volumes, _ = load_captioned_images(tmp, encoder.preprocess, root, dict(cfg.data.volume))
    tmp.unlink()
    with torch.no_grad():
        pred_ids = torch.cat([encoder.slot_logits(v).argmax(-1) for v in volumes.split(32)])  # [n, s]
    vocab = encoder.vocab_ids
    texts = [tokenizer.decode([vocab[i] for i in row]) for row in pred_ids.tolist()]
    targets, ids = caption_targets(truth, tokenizer, encoder.num_slots, unknown_text="unknown")
    gold = torch.tensor(
        [[vocab.index(ids[t]) if t >= 0 and ids[t] in vocab else -2 for t in row] for row in targets.tolist()]
    )
    known = gold != -100
    known &= targets != -100
    slot_acc = (pred_ids == gold)[known].float().mean().item()
    per_type: dict[str, list[int]] = defaultdict(list)
    per_key: dict[tuple, list[int]] = defaultdict(list)
    for s, text in zip(val, texts):
        q = s["conversations"][0]["value"].removeprefix("<image3d>\n")
        hit = int(answer_from_caption(text, q, s["choices"]) == s["answer"])
        per_type[s["question_type"]].append(hit)
        organ = next((o for o in demo3d.ORGANS if f"the {o}" in q), "")
        per_key[(s["question_type"], organ, s["answer"], s["z_range"][0])].append(hit)
    for key, hits in sorted(per_key.items()):
        print(f"  {' '.join(map(str, key)):40s} {sum(hits)}/{len(hits)}")
    print(f"held-out slot accuracy (supervised slots): {slot_acc:.1%}")
    total = [x for v in per_type.values() for x in v]
    for qtype, hits in sorted(per_type.items()):
        print(f"  {qtype:20s} n={len(hits):3d}  answered from the caption: {sum(hits) / len(hits):.1%}")
    print(f"  {'all closed':20s} n={len(total):3d}  answered from the caption: {sum(total) / len(total):.1%}")
    print("example:", texts[0], "\n  truth:", truth[0])


if __name__ == "__main__":
    main(sys.argv[1:])
