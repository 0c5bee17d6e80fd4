"""``make bench``: every benchmark in its own process, then ``results/results.md`` from their JSON.

Usage: ``python experiments/bench/run.py [--threads 1] [--compile] [--quick]``; ``--quick`` runs the smallest
sizes (a smoke test of the scripts, not numbers to quote).
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).parent


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: one per core)")
    parser.add_argument("--compile", action="store_true", help="also measure torch.compile (slow to compile)")
    parser.add_argument("--quick", action="store_true", help="smallest sizes: checks the scripts run")
    args = parser.parse_args()
    threads = ["--threads", str(args.threads)] if args.threads else []
    quick = {
        "train": ["--steps", "1", "--batch-size", "4", "--epoch-samples", "16"],
        "generate": ["--batch-size", "2", "--new-tokens", "4", "--repeats", "1"],
        "loader": ["--volumes", "2", "--steps", "1"],
        "real_shapes": ["--quick", "--answer-words", "40", "--mix", "4"],
        "ct_batch": ["--quick"],
    }
    size = quick if args.quick else {name: [] for name in quick}
    if args.quick:  # smoke numbers must not overwrite the recorded results
        os.environ["MEDMVL_BENCH_RESULTS"] = tempfile.mkdtemp(prefix="medmvl-bench-quick-")
        print(f"--quick: results go to {os.environ['MEDMVL_BENCH_RESULTS']}")
    jobs = [
        ["train_speed.py", *size["train"], *(["--compile"] if args.compile else [])],
        ["train_speed.py", "--memory", "medmvl", *size["train"]],
        ["train_speed.py", "--memory", "hf", *size["train"]],
        ["generate_speed.py", *size["generate"]],
        ["loader_3d.py", *size["loader"]],
        ["real_shapes.py", *size["real_shapes"]],  # and its --memory medmvl|hf processes
        ["ct_batch.py", *size["ct_batch"]],  # and its memory and loader processes
    ]
    for job in jobs:
        t0 = time.perf_counter()
        print(f"== {' '.join(job)}", flush=True)
        subprocess.run([sys.executable, str(HERE / job[0]), *job[1:], *threads], check=True)
        print(f"== done in {time.perf_counter() - t0:.0f} s", flush=True)
    subprocess.run([sys.executable, str(HERE / "report.py")], check=True)


if __name__ == "__main__":
    main()
