"""Lightning runs on one CUDA GPU, each through ``train.py`` in its own process (CUDA only).

What ``make test`` cannot check on a CPU machine: the ``gpu`` trainer (bf16-mixed) learns, block-diagonal
packing trains on CUDA, ``trainer=fsdp`` (FSDP2 over NCCL, here one rank) saves a sharded checkpoint,
resumes and exports, with activation checkpointing too, and ``compile=true`` trains. The data is the
tests' colour set (solid-colour PNGs, "What colour is this?"), the model the tiny stack of ``conf/``.
Writes ``gpu_checks.json`` (exit status, first/last loss, wall seconds per run) to the results folder.

Usage: ``python experiments/bench/gpu_checks.py [--cpu] [--only=gpu_packing,...]`` (``--cpu``: 3-step smoke test of the script on a CPU).
"""

from __future__ import annotations

import csv
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import common

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))
from tests.helpers.colour import write_colour_set  # noqa: E402

COMMON = [
    "logger=csv",
    "trainer.max_epochs=100",
    "trainer.log_every_n_steps=1",
    "stage.llm.lr=1e-3",
    "stage.connector.lr=1e-3",
    "callbacks.val_predictions=null",
]
GPU = ["trainer=gpu"]
FSDP = ["trainer=fsdp", "trainer.accelerator=gpu", "trainer.devices=1"]
# --cpu: a smoke test of this script on a CPU machine (fp32, gloo)
CPU = {
    "trainer=gpu": ["trainer.accelerator=cpu"],
    "trainer.accelerator=gpu": ["trainer.accelerator=cpu", "trainer.strategy.param_dtype=null"],
}
RUNS: dict[str, list[str]] = {
    "gpu_bf16_mixed": [*GPU, "trainer.max_steps=30"],
    "gpu_packing": [*GPU, "data.packing=true", "trainer.max_steps=30"],
    "gpu_compile": [*GPU, "compile=true", "trainer.max_steps=30"],
    "fsdp_first_2_steps": [*FSDP, "trainer.max_steps=2", "save_model=false"],
    "fsdp_resume_to_6": [*FSDP, "trainer.max_steps=6", "ckpt_path=last"],
    "fsdp_activation_checkpointing": [
        *FSDP,
        "trainer.strategy.activation_checkpointing=true",
        "trainer.max_steps=30",
    ],
}
FOLDER = {"fsdp_resume_to_6": "fsdp_first_2_steps"}  # the resume continues the 2-step run


def losses(run: Path) -> list[float]:
    path = run / "csv" / "metrics.csv"
    if not path.is_file():
        return []
    with open(path) as f:
        rows = [(int(r["step"]), float(r["train/loss"])) for r in csv.DictReader(f) if r.get("train/loss")]
    return [loss for _, loss in sorted(rows)]


def main() -> None:
    smoke = "--cpu" in sys.argv[1:]
    work = Path(tempfile.mkdtemp(prefix="medmvl-gpu-checks-"))
    ann = write_colour_set(work / "data", n=16)
    data = [f"data.annotations={ann}", f"data.image_dir={work / 'data' / 'imgs'}", "data.batch_size=4"]
    out: dict[str, Any] = {}
    only = next((a.split("=", 1)[1].split(",") for a in sys.argv[1:] if a.startswith("--only=")), list(RUNS))
    for name, extra in ((n, RUNS[n]) for n in only):
        run = work / FOLDER.get(name, name)
        if smoke:
            extra = [o for e in extra for o in ([e, *CPU[e]] if e in CPU else [e]) if o != "trainer=gpu"]
            extra = [e.replace("max_steps=30", "max_steps=3") for e in extra]
        cmd = [sys.executable, str(ROOT / "train.py"), *COMMON, *data, *extra, f"hydra.run.dir={run}"]
        t0 = time.perf_counter()
        proc = subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT, timeout=300)
        seen = losses(run)
        out[name] = {
            "returncode": proc.returncode,
            "seconds": round(time.perf_counter() - t0, 1),
            "steps_logged": len(seen),
            "first_loss": seen[0] if seen else None,
            "last_loss": seen[-1] if seen else None,
            "files": sorted(
                str(p.relative_to(run)) for p in run.rglob("*") if p.suffix in (".distcp", ".safetensors")
            ),
        }
        if proc.returncode:
            out[name]["stderr_tail"] = proc.stderr[-3000:]
        print(name, {k: v for k, v in out[name].items() if k != "stderr_tail"}, flush=True)
        if proc.returncode:
            print(proc.stderr[-3000:], flush=True)
    common.save("gpu_checks_cpu_smoke" if smoke else "gpu_checks", out)


if __name__ == "__main__":
    main()
