"""Training throughput: medmvl vs transformers' Llava, batch layouts, LLM FLOP/s, torch.compile, bf16.

One process, one model, the same samples for every configuration (``common.write_mix``), training steps
with the ``finetune`` stage (vision tower frozen; projector + LLM trained), fp32, SDPA. Each step is timed
as forward + backward (where the implementations differ) and, apart, the AdamW update (the same work
for both; amortised over gradient accumulation in real runs). Steps of all configurations are
interleaved, so machine load hits them alike. Tokens = sample tokens (image tokens included, padding not).

* (a) tokens/s of medmvl (``data.bucket_by_length`` batches, LM head on supervised positions only)
  against ``LlavaForConditionalGeneration`` with identical weights on right-padded batches in data order
  (its standard use: logits over the whole vocabulary at every position); and both on the same batches
  (padded, bucketed), which isolates the LM-head saving.
* (b) non-pad share per step and medmvl tokens/s of each layout: ``padded``, ``bucketed``, ``packed``
  (``data.packing=true``: rows as long as the batch's longest sample, block-diagonal attention) and
  ``packed_row`` (one row per batch, ``data.pack_length`` = the batch's tokens).
* (f) executed FLOPs of the LLM part (decoder + LM head, forward + backward; ``FlopCounterMode``) per
  second, against the fp32 matmul peak measured in the same run.
* ``--compile``: ``compile=true`` (decoder layers compiled in place); first step (compiling) and steady
  tokens/s on the bucketed batches.
* ``bf16``: bf16 autocast against fp32 on this CPU (matmul peak, and a step of the tiny model).
* ``--memory medmvl|hf``: (c) peak resident memory of training steps of one system, in a fresh process.

Usage: ``python experiments/bench/train_speed.py [--steps 3 --batch-size 8] [--compile]``.
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
from pathlib import Path
from typing import Any

import common
import torch

from medmvl.data.collate import Collator
from medmvl.data.conversation import IGNORE_INDEX
from medmvl.data.packing import PackingCollator
from medmvl.data.sampling.bucketing import LengthBuckets

INPUTS = ("input_ids", "attention_mask", "labels", "pixel_values", "position_ids", "target_index")


def layout_batches(items: list[dict], batch_size: int, layout: str, pad_id: int) -> list[dict]:
    """Collate ``items`` into batches of ``batch_size`` samples in one layout.

    ``padded`` / ``packed`` / ``packed_row``: batches in data order (random with respect to length), one
    sample per row / packed into rows as long as the batch's longest sample / one row per batch;
    ``bucketed``: the same samples ordered by ``data.bucket_by_length``'s ``LengthBuckets`` (one window
    over all of them), one sample per row.
    """
    if layout == "bucketed":
        buckets = LengthBuckets([len(it["input_ids"]) for it in items], batch_size, window=len(items))
        items = [items[i] for i in buckets(list(range(len(items))), epoch=0)]
    chunks = [items[i : i + batch_size] for i in range(0, len(items), batch_size)]
    if layout == "packed":
        return [PackingCollator(pad_id)(chunk) for chunk in chunks]
    if layout == "packed_row":  # one row per batch: pack_length = the batch's total
        return [PackingCollator(pad_id, sum(len(it["input_ids"]) for it in c))(c) for c in chunks]
    return [Collator(pad_id)(chunk) for chunk in chunks]  # padded, bucketed


def tokens(batch: dict) -> int:
    return int(batch["attention_mask"].sum())


def medmvl_step(model: Any, opt: torch.optim.Optimizer, batch: dict) -> tuple[float, float]:
    """One training step; returns (forward + backward seconds, optimizer-step seconds)."""

    def fwd_bwd() -> None:
        model(**{k: batch[k] for k in INPUTS if k in batch})["loss"].backward()

    return common.timed(fwd_bwd), common.timed(lambda: _update(opt))


def hf_step(twin: Any, opt: torch.optim.Optimizer, batch: dict) -> tuple[float, float]:
    """One training step of the Llava twin (its own loss: logits over the vocabulary at every position)."""

    def fwd_bwd() -> None:
        twin(
            input_ids=batch["input_ids"],
            attention_mask=batch["attention_mask"],
            pixel_values=batch["pixel_values"],
            labels=batch["labels"],
        ).loss.backward()

    return common.timed(fwd_bwd), common.timed(lambda: _update(opt))


def _update(opt: torch.optim.Optimizer) -> None:
    opt.step()
    opt.zero_grad(set_to_none=True)


def optimizer(module: torch.nn.Module) -> torch.optim.Optimizer:
    # a tiny learning rate: the weights stay close to the start, the work per step is the same
    return torch.optim.AdamW([p for p in module.parameters() if p.requires_grad], lr=1e-7)


def setup(samples: int) -> tuple[Any, Any, list[dict], int]:
    model, _ = common.build_model()
    folder = Path(tempfile.mkdtemp(prefix="medmvl-bench-"))
    items = common.items(model, common.write_mix(folder, samples))
    return model, folder, items, model.tokenizer.pad_token_id


def same_function(model: Any, twin: Any, items: list[dict], pad_id: int) -> float:
    """|loss(medmvl, packed) - loss(Llava, padded)| on one batch: the two compute the same model."""
    with torch.no_grad():
        packed, padded = PackingCollator(pad_id)(items), Collator(pad_id)(items)
        ours = model(**{k: packed[k] for k in INPUTS})["loss"]
        theirs = twin(
            input_ids=padded["input_ids"],
            attention_mask=padded["attention_mask"],
            pixel_values=padded["pixel_values"],
            labels=padded["labels"],
        ).loss
    return abs(float(ours) - float(theirs))


CONFIGS = {  # name: (system, layout)
    "medmvl_bucketed": ("medmvl", "bucketed"),
    "medmvl_padded": ("medmvl", "padded"),
    "medmvl_packed": ("medmvl", "packed"),
    "medmvl_packed_row": ("medmvl", "packed_row"),
    "hf_padded": ("hf", "padded"),
    "hf_bucketed": ("hf", "bucketed"),
}


def throughput(model: Any, twin: Any, items: list[dict], args: argparse.Namespace, pad_id: int) -> dict:
    """(a), (b): every configuration on the same samples, steps interleaved (round-robin, rotating)."""
    warm, timed_items = items[: args.batch_size], items[args.batch_size : args.batch_size * (args.steps + 1)]
    nets = {"medmvl": (model, medmvl_step, optimizer(model)), "hf": (twin, hf_step, optimizer(twin))}
    for net, step, opt in nets.values():  # warm-up
        step(net, opt, Collator(pad_id)(warm))
    batches = {
        name: layout_batches(timed_items, args.batch_size, layout, pad_id)
        for name, (_, layout) in CONFIGS.items()
    }
    times: dict[str, list[tuple[float, float]]] = {name: [] for name in CONFIGS}
    names = list(CONFIGS)
    for i in range(args.steps):
        for name in names[i % len(names) :] + names[: i % len(names)]:
            net, step, opt = nets[CONFIGS[name][0]]
            times[name].append(step(net, opt, batches[name][i]))
        print(f"  step {i}: " + ", ".join(f"{n} {times[n][-1][0]:.1f}s" for n in names), flush=True)
    out: dict[str, Any] = {}
    for name in names:
        real = sum(tokens(b) for b in batches[name])
        fwd_bwd, update = sum(x for x, _ in times[name]), sum(u for _, u in times[name])
        out[name] = {
            "tokens": real,
            "tokens_per_s": real / fwd_bwd,  # forward + backward
            "tokens_per_s_with_update": real / (fwd_bwd + update),  # + one AdamW step per batch
            "non_pad_share": real / sum(b["input_ids"].numel() for b in batches[name]),
            "rows_per_step": statistics.mean(b["input_ids"].shape[0] for b in batches[name]),
            "width_per_step": statistics.mean(b["input_ids"].shape[1] for b in batches[name]),
            "fwd_bwd_s": [round(x, 3) for x, _ in times[name]],
            "update_s": [round(u, 3) for _, u in times[name]],
        }
    tps = {name: out[name]["tokens_per_s"] for name in names}
    out["ratios"] = {
        # (a): each system batched its own way -- medmvl's CPU recommendation vs Llava's default
        "medmvl_bucketed_vs_hf_padded": tps["medmvl_bucketed"] / tps["hf_padded"],
        "medmvl_bucketed_vs_hf_padded_with_update": out["medmvl_bucketed"]["tokens_per_s_with_update"]
        / out["hf_padded"]["tokens_per_s_with_update"],
        # the same batches for both: the supervised-only LM head alone
        "same_batches_padded": tps["medmvl_padded"] / tps["hf_padded"],
        "same_batches_bucketed": tps["medmvl_bucketed"] / tps["hf_bucketed"],
    }
    return out


def epoch_shares(items: list[dict], batch_size: int, pad_id: int) -> dict:
    """(b) over a whole epoch of the mix, as the training loader batches it (no timing: shapes only).

    ``bucketed`` uses the loader's own window (``LengthBuckets`` default, 32 batches), so this is the share
    ``data.bucket_by_length=true`` gives in training; the timed runs bucket a smaller pool.
    """
    lengths = [len(it["input_ids"]) for it in items]
    order = LengthBuckets(lengths, batch_size)(list(range(len(items))), epoch=0)
    chunks = {
        "padded": [items[i : i + batch_size] for i in range(0, len(items), batch_size)],
        "bucketed": [[items[i] for i in order[k : k + batch_size]] for k in range(0, len(order), batch_size)],
    }
    out = {}
    for name, collate, which in (
        ("padded", Collator(pad_id), "padded"),
        ("packed", PackingCollator(pad_id), "padded"),
        ("bucketed", Collator(pad_id), "bucketed"),
    ):
        batches = [collate(c) for c in chunks[which]]
        out[name] = sum(tokens(b) for b in batches) / sum(b["input_ids"].numel() for b in batches)
    out["samples"] = len(items)
    return out


def llm_flops(model: Any, items: list[dict], args: argparse.Namespace, pad_id: int, peak: float) -> dict:
    """(f): executed FLOPs of the LLM part (decoder + supervised LM head, fwd + bwd) per second."""
    from torch.utils.flop_counter import FlopCounterMode

    batch = PackingCollator(pad_id)(items[: args.batch_size])
    with torch.no_grad():
        embeds = model.merge(batch["input_ids"], batch["pixel_values"])  # [r, n, d]
    keep = batch["labels"][:, 1:] != IGNORE_INDEX  # [r, n-1]

    def llm_step() -> None:
        hidden = model.llm.get_decoder()(
            inputs_embeds=embeds, position_ids=batch["position_ids"], use_cache=False
        ).last_hidden_state  # [r, n, d]
        logits = model.llm.get_output_embeddings()(hidden[:, :-1][keep]).float()  # [s, v]
        torch.nn.functional.cross_entropy(logits, batch["labels"][:, 1:][keep]).backward()
        model.zero_grad(set_to_none=True)

    llm_step()  # warm-up
    counter = FlopCounterMode(display=False)
    with counter:
        llm_step()
    flops = counter.get_total_flops()
    seconds = min(common.timed(llm_step) for _ in range(2))
    return {
        "tokens": tokens(batch),
        "flops_per_step": flops,
        "seconds": seconds,
        "flops_per_s": flops / seconds,
        "matmul_peak_flops_per_s": peak,
        "share_of_peak": flops / seconds / peak,
    }


def compiled(model: Any, items: list[dict], args: argparse.Namespace, pad_id: int, eager_tps: float) -> dict:
    """``torch.compile`` of every decoder layer (in place): first step (compiles) and steady tokens/s."""
    from medmvl.training.distributed import compile_blocks

    compile_blocks(model.llm)  # what compile=true does
    opt = optimizer(model)
    first = medmvl_step(model, opt, Collator(pad_id)(items[: args.batch_size]))[0]  # compiles
    # the batches of the eager measurement (``throughput``'s medmvl_bucketed)
    batches = layout_batches(
        items[args.batch_size : args.batch_size * (args.steps + 1)], args.batch_size, "bucketed", pad_id
    )
    times = [medmvl_step(model, opt, b)[0] for b in batches]
    real = sum(tokens(b) for b in batches)
    return {
        "first_step_s": first,
        "step_s": [round(t, 3) for t in times],
        "tokens_per_s": real / sum(times),
        "eager_tokens_per_s": eager_tps,
        "speedup": real / sum(times) / eager_tps,
    }


def bf16_autocast() -> dict:
    """bf16 on this CPU: matmul peak, and one training step of the tiny model with and without autocast."""
    from medmvl.models.build import build_model

    cfg = common.compose_cfg([])
    torch.manual_seed(0)
    model = build_model(cfg)
    ids = torch.randint(100, 5000, (4, 96))
    ids[:, :16] = model.image_token_id
    labels = ids.clone()
    labels[:, :60] = IGNORE_INDEX
    pixels = torch.randn(4, 3, 32, 32)

    def step() -> None:
        loss = model(input_ids=ids, attention_mask=torch.ones_like(ids), labels=labels, pixel_values=pixels)
        loss["loss"].backward()
        model.zero_grad(set_to_none=True)

    step()
    fp32 = min(common.timed(step) for _ in range(3))
    with torch.autocast("cpu", dtype=torch.bfloat16):
        step()
        bf16 = common.timed(step)
    return {
        "matmul_fp32_flops_per_s": common.matmul_peak(torch.float32, 512),
        "matmul_bf16_flops_per_s": common.matmul_peak(torch.bfloat16, 512, repeat=2),
        "tiny_step_fp32_s": fp32,
        "tiny_step_bf16_autocast_s": bf16,
        "bf16_slowdown": bf16 / fp32,
    }


def memory(system: str, args: argparse.Namespace) -> dict:
    """(c): peak resident memory while training ``system`` (fresh process; after the model is loaded)."""
    model, _, items, pad_id = setup(args.batch_size * 3)
    net = model if system == "medmvl" else common.llava_twin(model)
    if system == "hf":
        del model
    opt = optimizer(net)
    layout, step = ("bucketed", medmvl_step) if system == "medmvl" else ("padded", hf_step)
    batches = layout_batches(items, args.batch_size, layout, pad_id)
    loaded = common.rss_mib()
    common.peak_rss_reset()
    for batch in batches:
        step(net, opt, batch)
    peak = common.rss_mib("VmHWM")
    return {"loaded_mib": loaded, "peak_mib": peak, "training_mib": peak - loaded}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=3, help="timed steps per system (after one warm-up)")
    parser.add_argument("--batch-size", type=int, default=8, help="samples per step")
    parser.add_argument("--compile", action="store_true", help="also measure torch.compile")
    parser.add_argument("--epoch-samples", type=int, default=256, help="mix size for the epoch non-pad share")
    parser.add_argument("--memory", choices=("medmvl", "hf"), help="only measure peak memory of one system")
    common.add_threads_arg(parser)
    args = parser.parse_args()
    common.set_threads(args.threads)
    torch.manual_seed(0)
    if args.memory:
        common.save(f"memory_{args.memory}", {"args": vars(args), "memory": memory(args.memory, args)})
        return
    result: dict[str, Any] = {"machine": common.machine(), "args": vars(args)}
    peak = common.matmul_peak()
    model, _, items, pad_id = setup(max(args.epoch_samples, args.batch_size * (args.steps + 1)))
    result["epoch_non_pad_share"] = epoch_shares(items, args.batch_size, pad_id)
    twin = common.llava_twin(model)
    result["same_function_loss_diff"] = same_function(model, twin, items[: args.batch_size], pad_id)
    print("(a), (b) medmvl vs Llava, batch layouts", flush=True)
    result["throughput"] = throughput(model, twin, items, args, pad_id)
    del twin
    print("(f) LLM FLOP/s", flush=True)
    result["llm_flops"] = llm_flops(model, items, args, pad_id, max(peak, common.matmul_peak()))
    print("bf16", flush=True)
    result["bf16"] = bf16_autocast()
    if args.compile:
        print("torch.compile", flush=True)
        eager = result["throughput"]["medmvl_bucketed"]["tokens_per_s"]
        try:
            result["compile"] = compiled(model, items, args, pad_id, eager)
        except Exception as err:  # noqa: BLE001 -- report it with the other numbers
            result["compile"] = {"error": f"{type(err).__name__}: {err}"[:500]}
    common.save("train", result)


if __name__ == "__main__":
    main()
