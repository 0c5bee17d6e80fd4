"""Where a bf16-autocast CPU training step spends its time, against the same step in fp32.

One model built from the configs (default: the benchmark stack of ``common.MODEL``, SmolLM2-135M behind a
small ViT; ``--tiny``: ``train.yaml``'s defaults), one batch, forward under ``torch.autocast("cpu",
torch.bfloat16)`` exactly as Lightning's ``bf16-mixed`` runs it (backward and the AdamW update outside
autocast, fp32 master weights), and the same step without autocast; bf16 both with medmvl's fp32
attention for short sequences on the CPU (``sdpa_packed``, ``CPU_FP32_MAX_LEN``) and without. Prints the matmul peak of both dtypes,
the median step times and, from ``torch.profiler``, the top ops by self CPU time of each; ``--json``
writes the numbers. Not part of ``make bench``.

Usage: ``python experiments/bench/precision_profile.py [--tiny] [--threads 1] [--steps 3]``.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path
from typing import Any

import common
import torch
from torch.profiler import ProfilerActivity, profile

from medmvl.data.conversation import IGNORE_INDEX
from medmvl.data.schema import IMAGE_TOKEN
from medmvl.models.llm import attention

DEFAULT_MAX_LEN = attention.CPU_FP32_MAX_LEN


def batch(model: Any, rows: int, length: int, image_size: int) -> dict[str, torch.Tensor]:
    """``rows`` samples of ``length`` tokens, each with one image's tokens first; the last half supervised."""
    ids = torch.randint(100, 5000, (rows, length))
    ids[:, : model.image_token_counts[IMAGE_TOKEN]] = model.image_token_id
    labels = ids.clone()
    labels[:, : length // 2] = IGNORE_INDEX
    return {
        "input_ids": ids,
        "attention_mask": torch.ones_like(ids),
        "labels": labels,
        "pixel_values": torch.randn(rows, 3, image_size, image_size),
    }


# the steps compared: fp32; bf16 with medmvl's CPU attention upcast (sdpa_packed) off and on
CONFIGS = {"fp32": (False, False), "bf16_bf16_attention": (True, False), "bf16": (True, True)}


def step(model: Any, opt: torch.optim.Optimizer, inputs: dict, config: str) -> None:
    """One training step as Lightning runs it: forward (autocast for bf16), backward, AdamW update."""
    bf16, upcast = CONFIGS[config]
    attention.CPU_FP32_MAX_LEN = DEFAULT_MAX_LEN if upcast else -1
    with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
        loss = model(**inputs)["loss"]
    loss.backward()
    opt.step()
    opt.zero_grad(set_to_none=True)


def top_ops(prof: Any, k: int) -> list[dict[str, Any]]:
    events = sorted(prof.key_averages(), key=lambda e: e.self_cpu_time_total, reverse=True)
    total = sum(e.self_cpu_time_total for e in events) or 1
    return [
        {
            "op": e.key,
            "self_ms": e.self_cpu_time_total / 1e3,
            "share": e.self_cpu_time_total / total,
            "calls": e.count,
        }
        for e in events[:k]
    ]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tiny", action="store_true", help="train.yaml's defaults (tiny2d + tiny LLM)")
    parser.add_argument(
        "--overrides", nargs="*", default=None, help="train.yaml overrides, e.g. experiment=demo"
    )
    parser.add_argument("--steps", type=int, default=3, help="timed steps per precision (median)")
    parser.add_argument("--rows", type=int, default=4)
    parser.add_argument("--length", type=int, default=128)
    parser.add_argument("--top", type=int, default=12)
    parser.add_argument("--json", type=Path, default=None, help="write the numbers here")
    common.add_threads_arg(parser)
    args = parser.parse_args()
    common.set_threads(args.threads)

    overrides = args.overrides if args.overrides is not None else [] if args.tiny else common.MODEL
    model, cfg = common.build_model(overrides)
    model.train()
    image_size = model.image_config["image_size"][0] if model.image_config else 32
    inputs = batch(model, args.rows, args.length, image_size)
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-5)
    result: dict[str, Any] = {
        "machine": common.machine(),
        "model": overrides or "train.yaml defaults",
        "batch": [args.rows, args.length],
        "matmul_gflops": {
            "fp32": common.matmul_peak(torch.float32) / 1e9,
            "bf16": common.matmul_peak(torch.bfloat16) / 1e9,
        },
    }
    times: dict[str, list[float]] = {name: [] for name in CONFIGS}
    for name in CONFIGS:  # warm-up: kernels chosen, allocator grown, optimizer state made
        step(model, opt, inputs, name)
    for _ in range(args.steps):  # interleaved, so machine load hits all alike
        for name in CONFIGS:
            t0 = time.perf_counter()
            step(model, opt, inputs, name)
            times[name].append(time.perf_counter() - t0)
    result["step_s"] = {k: statistics.median(v) for k, v in times.items()}
    result["fp32_over"] = {k: result["step_s"]["fp32"] / v for k, v in result["step_s"].items()}
    for name in CONFIGS:
        with profile(activities=[ProfilerActivity.CPU]) as prof:
            step(model, opt, inputs, name)
        result[f"top_{name}"] = top_ops(prof, args.top)
    print(json.dumps({k: v for k, v in result.items() if not k.startswith("top_")}, indent=1))
    for name in CONFIGS:
        print(f"\n{name}: top ops by self CPU time")
        for row in result[f"top_{name}"]:
            print(f"  {row['op']:<40} {row['self_ms']:9.1f} ms  {row['share']:6.1%}  x{row['calls']}")
    if args.json:
        args.json.write_text(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
