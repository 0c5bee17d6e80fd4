"""``python evaluate.py ...`` / ``medmvl-evaluate ...``: score predictions, optionally answering a file first.

``predictions=<file(s)>`` scores what ``infer.py`` wrote; ``model=<dir> data.annotations=<file>`` runs
``infer.py``'s file inference into ``<output_dir>/predictions.json`` first (resumable the same way), so
one command goes from a saved model to a score table. ``protocol=<name>`` also scores by a reference
scorer's definitions (docs/protocols.md), printed beside medmvl's strict scores; ``benchmark=<name>
model=<dir> data.root=<download>`` converts a benchmark's release, answers its test split and prints the
table in the layout of the published ones. Writes ``metrics.json`` (overall and per kind,
question type and dataset), ``metrics.md`` (the same as a markdown table) and ``scores.jsonl`` (one line
per question), prints the table, and prints the path of ``metrics.json`` last. Bad input stops the run
before anything is written, with one ``AnnotationError`` that lists every problem of every prediction file
(file, record index, id and field; the first 50, then how many more). Metric definitions: docs/metrics.md.
"""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path
from typing import Any

import hydra
from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig, OmegaConf

from medmvl.evaluation.classes import classes_table, closed_by_answer, single_word_open
from medmvl.evaluation.predictions import load_predictions
from medmvl.evaluation.protocols.run import prepare_benchmark, score_by_protocol
from medmvl.evaluation.report import build_report, markdown_table

log = logging.getLogger("medmvl.evaluate")


def evaluate(cfg: DictConfig) -> dict[str, Any]:
    """Run the job of a composed ``evaluate.yaml``; returns the report (with ``files`` and ``metrics_file``)."""
    output_dir = Path(cfg.output_dir or HydraConfig.get().runtime.output_dir)
    if cfg.get("question") is not None:
        raise ValueError("evaluate.py scores files: use infer.py for one question")
    if cfg.get("benchmark") is not None:
        prepare_benchmark(cfg, output_dir)
    if cfg.model is not None:
        if cfg.data.annotations is None:
            raise ValueError("model=... needs data.annotations=<inference file> to answer before scoring")
        output = Path(cfg.output) if cfg.output else output_dir / "predictions.json"
        from medmvl.cli.infer import build_generator, infer_file  # torch: only when a model answers

        files = [str(infer_file(build_generator(cfg), cfg, output))]
        names = [Path(cfg.data.annotations).stem]  # records without `dataset`: the annotation file's name
    elif cfg.predictions is not None:
        value = cfg.predictions
        files = [str(p) for p in (OmegaConf.to_container(value) if OmegaConf.is_list(value) else [value])]
        names = None
    else:
        raise ValueError(
            "give predictions=<file> (or a list) to score, or model=<dir> data.annotations=<file> to answer "
            "and score"
        )
    rows = load_predictions(
        files, type_keys=list(cfg.type_keys), dataset_key=cfg.dataset_key, dataset_names=names
    )
    if not rows:
        raise ValueError(f"no records to score in {files}")
    report, per_question = build_report(rows)
    report["closed_by_answer"] = closed_by_answer(rows)
    table = markdown_table(report)
    if report["closed_by_answer"]:
        table += "\nClosed questions by reference answer:\n\n" + classes_table(report["closed_by_answer"])
    if one_word := single_word_open(rows):
        log.warning(
            "%d open question(s) have a one-word reference and are scored by recall; if they are closed "
            "(a fixed set of answers), give them choices or answer_type: closed (docs/metrics.md)",
            one_word,
        )
    extra, protocol_table = score_by_protocol(rows, report, per_question, cfg)
    table += protocol_table
    output_dir.mkdir(parents=True, exist_ok=True)
    metrics_file = output_dir / "metrics.json"
    payload = {"files": files, "definitions": "docs/metrics.md", **report, **extra}
    metrics_file.write_text(json.dumps(payload, indent=2), encoding="utf-8")
    (output_dir / "metrics.md").write_text(table, encoding="utf-8")
    with (output_dir / "scores.jsonl").open("w", encoding="utf-8") as f:
        f.writelines(json.dumps(row, ensure_ascii=False) + "\n" for row in per_question)
    print(table, flush=True)
    return {**payload, "metrics_file": str(metrics_file)}


@hydra.main(version_base="1.3", config_path="../conf", config_name="evaluate")
def main(cfg: DictConfig) -> None:
    """Hydra entry point (console script ``medmvl-evaluate`` and ``evaluate.py``); prints metrics.json last."""
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    print(evaluate(cfg)["metrics_file"], flush=True)


if __name__ == "__main__":
    main()
