"""Training at real shapes: Qwen2.5's 151,936-token vocabulary, CT-length image blocks, report answers.

The LLM is Qwen2.5-3B's width (hidden 2048, 16 heads, 2 KV heads, intermediate 11008, tied embeddings,
the real Qwen2.5 tokenizer from ``llm=tiny``) with ``--layers`` decoder layers (1 by default: the CPU
cannot train 36 in minutes); the vision tower is a from-scratch SigLIP-style ViT at 128 px, patch 8 ->
256 image tokens (a CT volume's ``attn_pool`` block). Random weights; the Llava twin has the same ones.

* (a) report generation: samples with ~400-token answers. Training tokens/s, forward + backward, medmvl
  (chunked LM-head loss on the supervised positions) against ``LlavaForConditionalGeneration`` (logits
  over the vocabulary at every position), steps interleaved; ``--memory medmvl|hf`` (a fresh process per
  system): peak resident memory of one training step, and above the loaded model.
* (c) layouts: a mix of long (report) and short (closed question) samples, medmvl ``padded`` (data
  order), ``bucketed`` (``LengthBuckets``) and ``packed`` (``pack_length`` rows, ``sdpa_packed``), against
  Llava padded.

Usage: ``python experiments/bench/real_shapes.py [--layers 1] [--repeats 1] [--quick]``; writes
``results/real_shapes.json`` (and ``results/real_shapes_memory_<system>.json`` with ``--memory``).
"""

from __future__ import annotations

import argparse
import random
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

import common
import torch
from train_speed import INPUTS, hf_step, layout_batches, tokens

from medmvl.data.collate import Collator
from medmvl.data.packing import PackingCollator

HERE = Path(__file__).parent


def model_overrides(layers: int, quick: bool = False) -> list[str]:
    """Qwen2.5-3B's width (``quick``: a 256-wide smoke-test LLM, the same vocabulary and token counts)."""
    hidden, intermediate, heads = (256, 512, 4) if quick else (2048, 11008, 16)
    return [
        "encoder=siglip_small",
        "encoder.config.image_size=128",
        "encoder.config.patch_size=8",
        "connector=mlp",
        "llm=tiny",
        f"llm.config.hidden_size={hidden}",
        f"llm.config.intermediate_size={intermediate}",
        f"llm.config.num_attention_heads={heads}",
        "llm.config.num_key_value_heads=2",
        f"llm.config.num_hidden_layers={layers}",
        "stage=finetune",
    ]


def write_samples(folder: Path, long: int, short: int, answer_words: int, seed: int = 0) -> Path:
    """``long`` report samples (``answer_words`` words, ~1.3 tokens each) and ``short`` closed questions."""
    import json

    import numpy as np
    from PIL import Image

    rng = random.Random(seed)
    folder.mkdir(parents=True, exist_ok=True)
    words = lambda k: " ".join(rng.choice(common.WORDS) for _ in range(k))  # noqa: E731
    records = []
    kinds = ["long"] * long + ["short"] * short
    rng.shuffle(kinds)
    for i, kind in enumerate(kinds):
        pixels = np.random.default_rng(i).integers(0, 255, (128, 128, 3), dtype=np.uint8)
        Image.fromarray(pixels).save(folder / f"{i}.png")
        prompt = f"<image>\n{words(rng.randint(8, 20))}?"
        answer = words(answer_words + rng.randint(-20, 20)) if kind == "long" else words(rng.randint(1, 6))
        conv = [{"from": "human", "value": prompt}, {"from": "gpt", "value": f"{answer}."}]
        records.append({"id": str(i), "image": [f"{i}.png"], "conversations": conv})
    path = folder / "mix.json"
    path.write_text(json.dumps(records))
    return path


def fwd_bwd(model: Any, batch: dict) -> float:
    return common.timed(lambda: model(**{k: batch[k] for k in INPUTS if k in batch})["loss"].backward())


def zero(module: torch.nn.Module) -> None:
    for p in module.parameters():
        p.grad = None


def memory(system: str, args: argparse.Namespace) -> dict:
    """Peak RSS of one forward + backward of (a)'s first batch, in this (fresh) process."""
    model, _ = common.build_model(model_overrides(args.layers, args.quick))
    folder = Path(tempfile.mkdtemp(prefix="medmvl-bench-"))
    items = common.items(model, write_samples(folder, args.batch_size, 0, args.answer_words))
    batch = Collator(model.tokenizer.pad_token_id)(items[: args.batch_size])
    runner = model
    if system == "hf":
        runner = common.llava_twin(model)
        del model
    loaded = common.rss_mib()
    common.peak_rss_reset()
    seconds = hf_step(runner, _NoOpt(), batch)[0] if system == "hf" else fwd_bwd(runner, batch)
    peak = common.rss_mib("VmHWM")
    out = {"system": system, "peak_rss_mib": round(peak, 1), "loaded_rss_mib": round(loaded, 1)}
    out |= {"above_loaded_mib": round(peak - loaded, 1), "seconds": round(seconds, 2)}
    out |= {"tokens": tokens(batch), "machine": common.machine()}
    common.save(f"real_shapes_memory_{system}", out)
    return out


class _NoOpt:
    def step(self) -> None: ...

    def zero_grad(self, set_to_none: bool = True) -> None: ...


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--layers", type=int, default=1)
    parser.add_argument("--batch-size", type=int, default=2)
    parser.add_argument("--answer-words", type=int, default=300, help="~1.3 tokens a word: ~400 tokens")
    parser.add_argument("--mix", type=int, default=8, help="(c): samples, half long and half short")
    parser.add_argument("--repeats", type=int, default=1)
    parser.add_argument("--memory", choices=["medmvl", "hf"], default=None)
    parser.add_argument("--skip-memory", action="store_true")
    parser.add_argument("--quick", action="store_true", help="a 256-wide LLM: checks the script runs")
    common.add_threads_arg(parser)
    args = parser.parse_args()
    common.set_threads(args.threads)
    if args.memory:
        memory(args.memory, args)
        return
    machine = common.machine()
    model, _ = common.build_model(model_overrides(args.layers, args.quick))
    twin = common.llava_twin(model)
    pad = model.tokenizer.pad_token_id
    folder = Path(tempfile.mkdtemp(prefix="medmvl-bench-"))
    reports = common.items(model, write_samples(folder / "a", 2 * args.batch_size, 0, args.answer_words))
    mix = common.items(
        model, write_samples(folder / "c", args.mix // 2, args.mix - args.mix // 2, args.answer_words, 1)
    )
    a_batches = layout_batches(reports, args.batch_size, "padded", pad)
    with torch.no_grad():
        b = a_batches[0]
        ours = model(**{k: b[k] for k in INPUTS if k in b})["loss"]
        theirs = twin(**{k: b[k] for k in ("input_ids", "attention_mask", "pixel_values", "labels")}).loss
    diff = abs(float(ours) - float(theirs))
    longest = max(len(it["input_ids"]) for it in mix)
    c_batches = {
        "medmvl_padded": layout_batches(mix, 4, "padded", pad),
        "medmvl_bucketed": layout_batches(mix, 4, "bucketed", pad),
        # rows of two report samples' length: the short samples fill the long ones' rows
        "medmvl_packed": [PackingCollator(pad, 2 * longest)(mix[i : i + 4]) for i in range(0, len(mix), 4)],
        "hf_padded": layout_batches(mix, 4, "padded", pad),
    }
    times: dict[str, list[float]] = {"a_medmvl": [], "a_hf": [], **{f"c_{k}": [] for k in c_batches}}
    for _ in range(args.repeats):  # every configuration once per round: machine load hits them alike
        for batch in a_batches:
            times["a_medmvl"].append(fwd_bwd(model, batch))
            times["a_hf"].append(hf_step(twin, _NoOpt(), batch)[0])
            zero(model), zero(twin)
        for name, batches in c_batches.items():
            for batch in batches:
                runner = (
                    (lambda b: hf_step(twin, _NoOpt(), b)[0])
                    if name.startswith("hf")
                    else (lambda b: fwd_bwd(model, b))
                )
                times[f"c_{name}"].append(runner(batch))
                zero(model), zero(twin)
    a_tokens = sum(tokens(b) for b in a_batches)
    result: dict[str, Any] = {
        "machine": machine,
        "model": model_overrides(args.layers, args.quick),
        "loss_diff_medmvl_vs_llava": diff,
        "a": {
            "batch_size": args.batch_size,
            "tokens_per_sample": statistics.mean(len(it["input_ids"]) for it in reports),
            "supervised_per_sample": statistics.mean(int((it["labels"] != -100).sum()) for it in reports),
            "medmvl_tokens_per_s": a_tokens * args.repeats / sum(times["a_medmvl"]),
            "hf_tokens_per_s": a_tokens * args.repeats / sum(times["a_hf"]),
        },
        "c": {},
    }
    result["a"]["ratio"] = result["a"]["medmvl_tokens_per_s"] / result["a"]["hf_tokens_per_s"]
    for name, batches in c_batches.items():
        n = sum(tokens(b) for b in batches)
        cells = sum(b["input_ids"].numel() for b in batches)
        result["c"][name] = {
            "tokens_per_s": n * args.repeats / sum(times[f"c_{name}"]),
            "non_pad_share": n / cells,
            "rows_x_width": [[*b["input_ids"].shape] for b in batches],
        }
    base = result["c"]["hf_padded"]["tokens_per_s"]
    for name in c_batches:
        result["c"][name]["vs_hf_padded"] = result["c"][name]["tokens_per_s"] / base
    common.save("real_shapes", result)
    print(result)
    if not args.skip_memory:
        for system in ("medmvl", "hf"):
            cmd = [
                sys.executable,
                str(HERE / "real_shapes.py"),
                "--memory",
                system,
                "--layers",
                str(args.layers),
            ]
            cmd += ["--batch-size", str(args.batch_size), "--answer-words", str(args.answer_words)]
            cmd += ["--quick"] if args.quick else []
            subprocess.run(cmd + (["--threads", str(args.threads)] if args.threads else []), check=True)


if __name__ == "__main__":
    main()
