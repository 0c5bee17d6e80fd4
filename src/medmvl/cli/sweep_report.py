"""``medmvl-sweep-report <sweep dir>``: one markdown table and one PNG of the metrics of every sweep job.

A Hydra sweep (``python train.py -m encoder=a,b connector=mlp,attn_pool``) leaves one folder per job
(``conf/hydra/default.yaml``: ``<num>_<overrides>``), each with ``.hydra/overrides.yaml`` (what the job
changed), ``csv/metrics.csv`` (logger ``csv``) and, for the demo, ``demo_results.json``. This command reads
them all, keeps the override keys whose values differ between jobs as the configuration columns, and
reports per job the final value of every validation metric (``val/*``), the last training loss, and the
numeric results of ``demo_results.json`` — MedM-VL's "what makes a good medical LVLM" ablation table. Jobs
without metrics (failed or still running) are listed with empty cells, not dropped.

Outputs ``sweep_report.md`` and ``sweep_report.png`` in the sweep folder (or ``--out``), and prints the
table.
"""

from __future__ import annotations

import argparse
import csv
import json
import math
import re
import sys
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

RESULT_FILES = ("demo_results.json",)
"""Per-job result files whose top-level numbers become metrics."""

SKIPPED_PREFIXES = ("n_", "chance_")
"""Result-file numbers left out of the default metrics: counts and chance levels, not outcomes."""

LOWER_IS_BETTER = re.compile(r"loss|perplexity|error|minutes|seconds")
"""Metrics matching this are better when lower (bold marks the best job per metric)."""


@dataclass
class Job:
    """One sweep job: its folder, overrides, final metrics and per-step curves."""

    dir: Path
    num: int
    overrides: dict[str, str]
    metrics: dict[str, float] = field(default_factory=dict)
    curves: dict[str, list[tuple[int, float]]] = field(default_factory=dict)


def find_jobs(sweep_dir: Path) -> list[Path]:
    """Job folders under ``sweep_dir`` (folders holding ``.hydra/overrides.yaml``), in job-number order."""
    dirs = [p.parent.parent for p in sweep_dir.rglob(".hydra/overrides.yaml")]
    return sorted(dirs, key=lambda d: (_job_num(d, sweep_dir), str(d)))


def _job_num(job_dir: Path, sweep_dir: Path) -> int:
    hydra_file = job_dir / ".hydra" / "hydra.yaml"
    if hydra_file.is_file():
        num = (yaml.safe_load(hydra_file.read_text()) or {}).get("hydra", {}).get("job", {}).get("num")
        if isinstance(num, int):
            return num
    match = re.match(r"(\d+)", job_dir.relative_to(sweep_dir).parts[0])
    return int(match.group(1)) if match else -1


def read_overrides(job_dir: Path) -> dict[str, str]:
    """``key=value`` lines of ``.hydra/overrides.yaml`` as a dict (``+``/``~`` prefixes stay in the key)."""
    path = job_dir / ".hydra" / "overrides.yaml"
    items = yaml.safe_load(path.read_text()) or []
    if not isinstance(items, list):
        raise ValueError(f"{path}: expected a list of 'key=value' overrides, got {type(items).__name__}")
    out = {}
    for item in items:
        key, sep, value = str(item).partition("=")
        out[key] = value if sep else ""
    return out


def read_metrics_csv(path: Path) -> tuple[dict[str, float], dict[str, list[tuple[int, float]]]]:
    """Final values and ``(step, value)`` curves of the ``val/*`` columns and ``train/loss`` of a CSV log."""
    with open(path, newline="") as f:
        rows = list(csv.DictReader(f))
    columns = {c for row in rows for c in row if c and (c.startswith("val/") or c == "train/loss")}
    curves: dict[str, list[tuple[int, float]]] = {}
    for column in sorted(columns):
        points = []
        for row in rows:
            value = row.get(column)
            if value not in (None, ""):
                step = row.get("step") or "0"
                points.append((int(float(step)), float(value)))
        if points:
            curves[column] = points
    return {c: p[-1][1] for c, p in curves.items()}, curves


def read_job(job_dir: Path, num: int) -> Job:
    """Overrides, metrics (``metrics.csv`` of this job's CSV logger, result files) of one job."""
    job = Job(job_dir, num, read_overrides(job_dir))
    for path in sorted(job_dir.glob("*/metrics.csv")):
        metrics, curves = read_metrics_csv(path)
        job.metrics.update(metrics)
        job.curves.update(curves)
    for name in RESULT_FILES:
        path = job_dir / name
        if path.is_file():
            results = json.loads(path.read_text())
            job.metrics.update(
                {
                    k: float(v)
                    for k, v in results.items()
                    if isinstance(v, (int, float)) and not isinstance(v, bool)
                }
            )
    return job


def varying_keys(jobs: Sequence[Job]) -> list[str]:
    """Override keys whose value is not the same in every job (missing counts as a value)."""
    keys = sorted({k for job in jobs for k in job.overrides})
    return [k for k in keys if len({job.overrides.get(k) for job in jobs}) > 1]


def default_metrics(jobs: Sequence[Job]) -> list[str]:
    """``val/*`` metrics first, then ``train/loss``, then result-file metrics; only those some job has."""
    names = {m for job in jobs for m in job.metrics}
    val = sorted(m for m in names if m.startswith("val/"))
    rest = sorted(m for m in names - set(val) - {"train/loss"} if not m.startswith(SKIPPED_PREFIXES))
    return val + (["train/loss"] if "train/loss" in names else []) + rest


def best_job(jobs: Sequence[Job], metric: str) -> Job | None:
    """The job with the best value of ``metric`` (lowest for losses, else highest)."""
    scored = [j for j in jobs if metric in j.metrics and math.isfinite(j.metrics[metric])]
    if not scored:
        return None
    pick = min if LOWER_IS_BETTER.search(metric) else max
    return pick(scored, key=lambda j: j.metrics[metric])


def label(job: Job, keys: Sequence[str]) -> str:
    """``enc=a, con=b`` from the varying keys (the job number when nothing varies)."""
    return ", ".join(f"{k}={job.overrides.get(k, '-')}" for k in keys) or f"job {job.num}"


def markdown(jobs: Sequence[Job], keys: Sequence[str], metrics: Sequence[str]) -> str:
    """The report table: one row per job, its varying overrides, then each metric (best in bold)."""
    best = {m: best_job(jobs, m) for m in metrics}
    head = ["job", *keys, *metrics]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for job in jobs:
        cells = [str(job.num), *(job.overrides.get(k, "-") for k in keys)]
        for m in metrics:
            value = job.metrics.get(m)
            text = "" if value is None else f"{value:.4g}"
            cells.append(f"**{text}**" if best[m] is job and len(jobs) > 1 else text)
        lines.append("| " + " | ".join(c.replace("|", "\\|") for c in cells) + " |")
    return "\n".join(lines)


def plot(jobs: Sequence[Job], keys: Sequence[str], metrics: Sequence[str], path: Path) -> Path:
    """One horizontal bar panel per metric (jobs on the y axis), plus ``val/loss`` curves when logged."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    curve_metric = "val/loss" if any(len(j.curves.get("val/loss", [])) > 1 for j in jobs) else None
    panels = list(metrics) + ([f"{curve_metric} (per step)"] if curve_metric else [])
    if not panels:
        raise ValueError("no metric to plot: the jobs have no metrics.csv val/* columns or result files")
    cols = min(3, len(panels))
    rows = math.ceil(len(panels) / cols)
    labels = [label(j, keys) for j in jobs]
    height = max(2.5, 0.35 * len(jobs) + 1.5)
    fig, axes = plt.subplots(rows, cols, figsize=(5.5 * cols, height * rows), squeeze=False)
    for ax, metric in zip(axes.flat, metrics):
        bar_panel(ax, jobs, labels, metric)
    if curve_metric:
        ax = axes.flat[len(metrics)]
        for job, text in zip(jobs, labels):
            if job.curves.get(curve_metric):
                steps, values = zip(*job.curves[curve_metric])
                ax.plot(steps, values, marker="o", markersize=3, label=text)
        ax.set_xlabel("step")
        ax.set_title(f"{curve_metric} per step", fontsize=10)
        ax.legend(fontsize=7, loc="upper right")
    for ax in list(axes.flat)[len(panels) :]:
        ax.axis("off")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def bar_panel(ax: Any, jobs: Sequence[Job], labels: Sequence[str], metric: str) -> None:
    """One metric's bars on ``ax``: the axis starts at zero (a 5.595 vs 5.61 gap looks as small as it is),
    every bar is labelled with its value, and the best job's bar is orange and says ``best``."""
    values = [j.metrics.get(metric, math.nan) for j in jobs]
    best = best_job(jobs, metric)
    colours = ["tab:orange" if best is not None and j is best else "tab:blue" for j in jobs]
    ax.barh(range(len(jobs)), values, color=colours)
    ax.set_yticks(range(len(jobs)), labels, fontsize=8)
    ax.invert_yaxis()
    direction = "lower" if LOWER_IS_BETTER.search(metric) else "higher"
    ax.set_title(f"{metric} ({direction} is better)", fontsize=10)
    finite = [v for v in values if math.isfinite(v)]
    lo, hi = min(finite + [0.0]), max(finite + [0.0])
    ax.set_xlim(lo * 1.15, hi * 1.25 if hi > 0 else 1.0)  # zero always in view; room for the labels
    for y, (job, v) in enumerate(zip(jobs, values)):
        if math.isfinite(v):
            text = f"{v:.4g}" + ("  best" if job is best else "")
            ax.annotate(text, (v, y), fontsize=7, va="center", xytext=(2, 0), textcoords="offset points")


def report(
    sweep_dir: Path, *, metrics: Sequence[str] | None = None, out: Path | None = None
) -> tuple[str, Path, Path]:
    """Write ``sweep_report.md`` and ``sweep_report.png`` for ``sweep_dir``; returns (table, md, png)."""
    sweep_dir = Path(sweep_dir)
    job_dirs = find_jobs(sweep_dir)
    if not job_dirs:
        raise FileNotFoundError(
            f"no sweep jobs under {sweep_dir}: expected folders with .hydra/overrides.yaml "
            "(the folder of a `python train.py -m ...` run)"
        )
    jobs = [read_job(d, _job_num(d, sweep_dir)) for d in job_dirs]
    keys = varying_keys(jobs)
    chosen = list(metrics) if metrics else default_metrics(jobs)
    table = markdown(jobs, keys, chosen)
    out = Path(out) if out else sweep_dir
    out.mkdir(parents=True, exist_ok=True)
    missing = [str(j.dir.relative_to(sweep_dir)) for j in jobs if not j.metrics]
    lines = [
        f"# Sweep report: {sweep_dir}",
        "",
        f"{len(jobs)} jobs; best value per metric in bold.",
        "",
        table,
    ]
    if missing:
        lines += ["", f"No metrics (failed or running): {', '.join(missing)}"]
    md = out / "sweep_report.md"
    md.write_text("\n".join(lines) + "\n")
    png = plot(jobs, keys, chosen, out / "sweep_report.png")
    return table, md, png


def main(argv: Sequence[str] | None = None) -> int:
    """Console script ``medmvl-sweep-report``."""
    parser = argparse.ArgumentParser(
        prog="medmvl-sweep-report",
        description="Table (markdown) and plot (PNG) of the metrics of every job of a Hydra sweep folder "
        "(python train.py -m ...): final val/* metrics and train/loss from each job's csv/metrics.csv, "
        "numbers from demo_results.json; configuration columns are the overrides that differ between jobs.",
    )
    parser.add_argument(
        "sweep_dir", type=Path, help="the sweep folder, e.g. outputs/train/multiruns/<date>_<time>"
    )
    parser.add_argument(
        "--metric",
        action="append",
        dest="metrics",
        help="metric to report (repeatable; default: every val/* metric, train/loss, demo results)",
    )
    parser.add_argument(
        "--out", type=Path, help="folder for sweep_report.md/.png (default: the sweep folder)"
    )
    args = parser.parse_args(argv)
    try:
        table, md, png = report(args.sweep_dir, metrics=args.metrics, out=args.out)
    except (FileNotFoundError, ValueError) as err:
        print(f"medmvl-sweep-report: {err}", file=sys.stderr)
        return 2
    print(table)
    print(f"\nwrote {md}\nwrote {png}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
