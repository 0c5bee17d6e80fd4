"""Turn ``results/*.json`` into ``results/results.md``: the table the README shows, with the machine."""

from __future__ import annotations

import json
import os
from pathlib import Path

RESULTS = Path(os.environ.get("MEDMVL_BENCH_RESULTS") or Path(__file__).parent / "results")


def _load(name: str) -> dict:
    path = RESULTS / f"{name}.json"
    return json.loads(path.read_text()) if path.exists() else {}


def _pct(x: float) -> str:
    return f"{100 * x:.1f} %"


def render() -> str:
    train, gen, mem_m, mem_h, load3d = (
        _load(n) for n in ("train", "generate", "memory_medmvl", "memory_hf", "loader_3d")
    )
    m = train.get("machine") or gen.get("machine") or {}
    lines = [
        f"Machine: {m.get('cpu', '?')}, {m.get('cores', '?')} cores ({', '.join(m.get('isa', []))}), "
        f"torch {m.get('torch', '?')} with {m.get('torch_threads', '?')} thread(s), {m.get('date', '?')}; "
        f"load average at start {m.get('load_average_at_start', '?')}. Model: SigLIP-style ViT (64 px, "
        "patch 8, 64 tokens) + mlp + SmolLM2-135M-Instruct, fp32, SDPA, stage finetune.",
        "",
        "| measure | medmvl | transformers Llava | ratio | target |",
        "|---|---|---|---|---|",
    ]
    if train:
        t, r = train["throughput"], train["throughput"]["ratios"]
        mb, hp = t["medmvl_bucketed"], t["hf_padded"]
        lines.append(
            f"| (a) training tokens/s, forward + backward (medmvl bucketed, Llava padded) | "
            f"{mb['tokens_per_s']:.1f} | {hp['tokens_per_s']:.1f} | **{r['medmvl_bucketed_vs_hf_padded']:.2f}×** "
            "| ≥ 1.5× |"
        )
        lines.append(
            f"| (a) the same, with one AdamW update per batch of {train['args']['batch_size']} | "
            f"{mb['tokens_per_s_with_update']:.1f} | {hp['tokens_per_s_with_update']:.1f} | "
            f"{r['medmvl_bucketed_vs_hf_padded_with_update']:.2f}× | |"
        )
        lines.append(
            f"| (a) the same batches for both (LM-head saving only): padded / bucketed | | | "
            f"{r['same_batches_padded']:.2f}× / {r['same_batches_bucketed']:.2f}× | |"
        )
        e = train["epoch_non_pad_share"]
        lines.append(
            f"| (b) non-pad tokens per step, an epoch of {e['samples']} samples as the loader batches it | "
            f"{_pct(e['bucketed'])} (bucketed), {_pct(e['packed'])} (packed) | {_pct(e['padded'])} (padded) "
            "| | ≥ 95 % |"
        )
        lines.append(
            f"| (b) the same, in the timed steps ({len(mb['fwd_bwd_s'])} batches) | {_pct(mb['non_pad_share'])} "
            f"(bucketed), {_pct(t['medmvl_packed_row']['non_pad_share'])} (packed_row) | "
            f"{_pct(hp['non_pad_share'])} (padded) | | |"
        )
    if mem_m and mem_h:
        mm, mh = mem_m["memory"], mem_h["memory"]
        lines.append(
            f"| (c) peak RSS while training, MiB (above the loaded model) | {mm['peak_mib']:.0f} "
            f"(+{mm['training_mib']:.0f}) | {mh['peak_mib']:.0f} (+{mh['training_mib']:.0f}) | "
            f"{mh['training_mib'] / max(mm['training_mib'], 1):.2f}× less | |"
        )
    if gen:
        lines.append(
            f"| (d) generation tokens/s (batch {gen['args']['batch_size']}, {gen['args']['new_tokens']} new, "
            f"greedy; same tokens {_pct(gen['same_tokens'])}) | {gen['medmvl']['tokens_per_s']:.2f} | "
            f"{gen['hf']['tokens_per_s']:.2f} | **{gen['ratio']:.2f}×** | ≥ 1.0× |"
        )
    if load3d:
        consumed = load3d["training"]
        lines.append(
            f"| (e) 3D volumes/s: loader (1 worker, no cache / cached) vs training consumes | "
            f"{max(load3d['loader_no_cache']):.2f} / {max(load3d['loader_cached']):.2f} | "
            f"{consumed['volumes_per_s']:.3f} (training) | **{load3d['loader_over_training']:.1f}×** | > 1× |"
        )
    if train:
        f = train["llm_flops"]
        lines.append(
            f"| (f) LLM part (decoder + head, fwd + bwd) GFLOP/s vs fp32 matmul peak | "
            f"{f['flops_per_s'] / 1e9:.1f} | peak {f['matmul_peak_flops_per_s'] / 1e9:.1f} | "
            f"{_pct(f['share_of_peak'])} of peak | |"
        )
        lines += [
            "",
            "Batch layouts, the same samples (forward + backward tokens/s):",
            "",
            "| configuration | non-pad share | rows × width per step | tokens/s |",
            "|---|---|---|---|",
        ]
        for name, x in t.items():
            if name != "ratios":
                lines.append(
                    f"| {name} | {_pct(x['non_pad_share'])} | {x['rows_per_step']:.1f} × "
                    f"{x['width_per_step']:.0f} | {x['tokens_per_s']:.1f} |"
                )
        b = train["bf16"]
        lines += [
            "",
            f"bf16 on this CPU: matmul {b['matmul_bf16_flops_per_s'] / 1e9:.2f} GFLOP/s vs fp32 "
            f"{b['matmul_fp32_flops_per_s'] / 1e9:.2f}; a tiny-model training step with bf16 autocast took "
            f"{b['bf16_slowdown']:.0f}× as long as fp32.",
        ]
        if "error" in train.get("compile", {}):
            lines.append(f"torch.compile failed here: {train['compile']['error']}")
        elif "compile" in train:
            c = train["compile"]
            lines.append(
                f"torch.compile (decoder layers): first step {c['first_step_s']:.0f} s (compiling), then "
                f"{c['tokens_per_s']:.1f} tokens/s vs eager {c['eager_tokens_per_s']:.1f} ({c['speedup']:.2f}×)."
            )
    lines += real_shapes_tables()
    lines += ct_batch_table()
    return "\n".join(lines) + "\n"


def real_shapes_tables() -> list[str]:
    """``real_shapes.py``: (a) report-length answers at Qwen2.5-3B width, (c) padded / bucketed / packed."""
    shapes, mem_m, mem_h = (
        _load(n) for n in ("real_shapes", "real_shapes_memory_medmvl", "real_shapes_memory_hf")
    )
    if not shapes:
        return []
    m, a = shapes["machine"], shapes["a"]
    width = next((o.split("=")[1] for o in shapes["model"] if o.startswith("llm.config.hidden_size=")), "?")
    lines = [
        "",
        f"Real shapes ({m.get('date', '?')}, load average at start {m.get('load_average_at_start', '?')}): "
        f"Qwen2.5's 151,936-token vocabulary and tokenizer, an LLM of hidden size {width} "
        "(Qwen2.5-3B: 2048; 1 decoder layer, tied embeddings), 256 image tokens (128 px, patch 8), fp32, "
        f"random weights shared with the Llava twin (loss difference {shapes['loss_diff_medmvl_vs_llava']:.1e}).",
        "",
        "| measure | medmvl | transformers Llava | ratio | target |",
        "|---|---|---|---|---|",
        f"| (a) training tokens/s, batch {a['batch_size']} × {a['tokens_per_sample']:.0f} tokens "
        f"({a['supervised_per_sample']:.0f} supervised) | {a['medmvl_tokens_per_s']:.1f} | "
        f"{a['hf_tokens_per_s']:.1f} | **{a['ratio']:.2f}×** | ≥ 1.5× |",
    ]
    if mem_m and mem_h:
        lines.append(
            f"| (a) peak RSS of a training step, MiB (above the loaded model) | {mem_m['peak_rss_mib']:.0f} "
            f"(+{mem_m['above_loaded_mib']:.0f}) | {mem_h['peak_rss_mib']:.0f} (+{mem_h['above_loaded_mib']:.0f}) "
            f"| **{mem_h['above_loaded_mib'] / max(mem_m['above_loaded_mib'], 1):.2f}× less** | ≥ 2× |"
        )
    lines += [
        "",
        "(c) A mix of long (report) and short (closed question) samples, 4 a step, forward + backward:",
        "",
        "| layout | non-pad share | rows × width per step | tokens/s | vs Llava padded | target |",
        "|---|---|---|---|---|---|",
    ]
    for name, x in shapes["c"].items():
        rows = ", ".join(f"{r} × {w}" for r, w in x["rows_x_width"])
        target = "≥ 1.5×" if name.startswith("medmvl") else ""
        lines.append(
            f"| {name} | {_pct(x['non_pad_share'])} | {rows} | {x['tokens_per_s']:.1f} | "
            f"{x['vs_hf_padded']:.2f}× | {target} |"
        )
    return lines


def ct_batch_table() -> list[str]:
    """``ct_batch.py``: (b) a CT training batch per 3D stack, medmvl vs the HF LLM's own loss, and the loader."""
    ct = _load("ct_batch")
    if not ct.get("configs"):
        return []
    m = ct["machine"]
    lines = [
        "",
        f"(b) A CT batch at MedM-VL-CT-Chest shapes ({m.get('date', '?')}, load average at start "
        f"{m.get('load_average_at_start', '?')}): batch {ct['args']['batch_size']}, the LLM of (a); baseline the "
        "same encoder + connector into the HF LLM with inputs_embeds + labels (Llava has no 3D tower).",
        "",
        "| stack | image tokens / volume | steps/s medmvl / HF | ratio | peak RSS above loaded, MiB: medmvl / HF "
        "| loader volumes/s vs step | loader headroom (target > 1×) |",
        "|---|---|---|---|---|---|---|",
    ]
    for name, c in ct["configs"].items():
        if "medmvl" not in c:
            continue
        mem = c.get("memory", {})
        mm, mh = mem.get("medmvl", {}), mem.get("hf", {})
        memory = f"{mm['above_loaded_mib']:.0f} / {mh['above_loaded_mib']:.0f}" if mm and mh else "-"
        lines.append(
            f"| {name} ({c['config']['encoder_layers']} encoder layers) | {c['config']['image_tokens_per_volume']} "
            f"(encoder {c['config']['encoder_tokens_per_volume']}) | {c['medmvl']['steps_per_s']:.4f} / "
            f"{c['hf']['steps_per_s']:.4f} | **{c['ratio_steps_per_s']:.2f}×** | {memory} | "
            f"{c['loader_volumes_per_s']:.2f} vs {c['step_volumes_per_s']:.3f} | **{c['loader_headroom']:.0f}×** |"
        )
    return lines


def main() -> None:
    text = render()
    (RESULTS / "results.md").write_text(text)
    print(text)


if __name__ == "__main__":
    main()
