"""Time the demo's LoRA training step on this machine: fp32 vs bf16 autocast, padded vs length-bucketed.

    python experiments/demo_speed/step_time.py experiment=demo --steps 6 --rounds 2

Builds the experiment's model, stage and data module exactly as train.py does, takes the first training
batches, and times forward + backward + AdamW step per variant, variants interleaved (A/B/A/B) so a shared
machine's load hits them alike. Prints seconds per step and tokens per batch for each variant.
"""

from __future__ import annotations

import argparse
import contextlib
import statistics
import time
from pathlib import Path

import torch
from hydra import compose, initialize_config_dir

from medmvl.cli.train import _fit_parts
from medmvl.models.build import build_part

CONF = str(Path(__file__).resolve().parents[2] / "src/medmvl/conf")


def batches(dm, bucket: bool, n: int) -> list:
    dm.hparams.bucket_by_length = bucket
    dm.setup("fit")
    out = []
    for b in dm.train_dataloader():
        out.append(b)
        if len(out) == n:
            break
    return out


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("overrides", nargs="*")
    ap.add_argument("--steps", type=int, default=6)
    ap.add_argument("--rounds", type=int, default=2)
    args = ap.parse_args()
    with initialize_config_dir(CONF, version_base="1.3"):
        cfg = compose(
            "train",
            overrides=[*args.overrides, "logger=[]", "paths.output_dir=/tmp/demo_step_time"],
            return_hydra_config=False,
        )
    tokenizer = build_part(cfg, "llm.tokenizer")
    module, dm, _ = _fit_parts(cfg, tokenizer)
    dm.prepare_data()
    padded = batches(dm, False, args.steps)
    bucketed = batches(dm, True, args.steps)
    params = [p for p in module.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=1e-4)
    module.train()

    def run(data, bf16: bool) -> float:
        ctx = torch.autocast("cpu", dtype=torch.bfloat16) if bf16 else contextlib.nullcontext()
        t = time.perf_counter()
        for b in data:
            with ctx:
                loss = module(b)["loss"]
            loss.backward()
            opt.step()
            opt.zero_grad(set_to_none=True)
        return (time.perf_counter() - t) / len(data)

    variants = {
        "fp32 padded": (padded, False),
        "fp32 bucketed": (bucketed, False),
        "bf16 padded": (padded, True),
        "bf16 bucketed": (bucketed, True),
    }
    for name, (data, _) in variants.items():
        tok = sum(int(b["attention_mask"].sum()) for b in data) / len(data)
        width = sum(b["input_ids"].numel() for b in data) / len(data)
        print(f"{name}: {tok:.0f} real tokens / {width:.0f} slots per batch", flush=True)
    run(padded[:1], False)
    run(padded[:1], True)
    times: dict[str, list[float]] = {k: [] for k in variants}
    for r in range(args.rounds):
        for name, (data, bf16) in variants.items():
            times[name].append(run(data, bf16))
            print(f"round {r} {name}: {times[name][-1]:.2f} s/step", flush=True)
    print(f"torch threads {torch.get_num_threads()}")
    for name, ts in times.items():
        print(f"{name}: median {statistics.median(ts):.2f} s/step ({', '.join(f'{t:.2f}' for t in ts)})")


if __name__ == "__main__":
    main()
