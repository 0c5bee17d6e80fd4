"""What ``evaluate.py`` does with ``protocol=`` and ``benchmark=``: build the protocol, convert a
benchmark's release into the annotation file to answer, and score and tabulate by the protocol."""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf, open_dict

from medmvl.evaluation.predictions import PredictionRow
from medmvl.evaluation.protocols.base import Protocol
from medmvl.evaluation.protocols.medmvl import MedmvlProtocol
from medmvl.evaluation.protocols.table import benchmark_table, side_by_side

log = logging.getLogger("medmvl.evaluate")


def build_protocol(node: DictConfig | None) -> Protocol:
    """Instantiate ``cfg.protocol`` (``_target_`` + constructor arguments); medmvl's when absent."""
    if node is None:
        return MedmvlProtocol()
    from hydra.utils import instantiate

    protocol = instantiate(node, _convert_="all")
    if not isinstance(protocol, Protocol):
        raise TypeError(f"protocol._target_ {node._target_!r} is not a medmvl Protocol")
    return protocol


def prepare_benchmark(cfg: DictConfig, output_dir: Path) -> dict[str, Any]:
    """Convert ``cfg.benchmark``'s release in ``data.root`` (cached) and point ``data`` at its split.

    Returns the converter's report. Raises ``ValueError`` naming the missing setting or split.
    """
    bench = cfg.benchmark
    if cfg.model is None:
        raise ValueError(f"benchmark={bench.name} needs model=<dir> to answer its {bench.split} split")
    if cfg.data.get("root") is None:
        raise ValueError(f"benchmark={bench.name} needs data.root=<the downloaded release folder>")
    from medmvl.evaluation.benchmarks import convert

    root = Path(cfg.data.root)
    out = Path(bench.converted_dir) if bench.get("converted_dir") else output_dir / "converted"
    options = OmegaConf.to_container(bench.options, resolve=True) if bench.get("options") else {}
    report = convert(bench.converter, root, out, **options)
    files = report.get("files", {})
    if bench.split not in files:
        raise ValueError(
            f"benchmark={bench.name}: the conversion of {root} has no split {bench.split!r} "
            f"(it has {sorted(files)}); set benchmark.split"
        )
    with open_dict(cfg):
        cfg.data.annotations = files[bench.split]
        if report.get("image_dir") and cfg.data.image_dir is None:
            cfg.data.image_dir = report["image_dir"]
        if report.get("image3d_dir") and cfg.data.image3d_dir is None:
            cfg.data.image3d_dir = report["image3d_dir"]
        labels = bench.get("reference_labels")
        if labels and "reference_labels" in (cfg.protocol or {}) and cfg.protocol.reference_labels is None:
            cfg.protocol.reference_labels = str(root / labels)
    log.info("benchmark %s: answering %s", bench.name, files[bench.split])
    return report


def score_by_protocol(
    rows: Sequence[PredictionRow], strict: dict[str, Any], per_question: list[dict[str, Any]], cfg: DictConfig
) -> tuple[dict[str, Any], str]:
    """Score ``rows`` by ``cfg.protocol``; returns ``(metrics.json entries, table text)``.

    medmvl's protocol adds nothing. Another adds ``protocol`` (name, references, unavailable metrics and
    its report) to metrics.json, its scores to each ``per_question`` line, and a table of medmvl's strict
    scores beside its own; with ``benchmark=`` also the benchmark table with the published rows.
    """
    protocol = build_protocol(cfg.get("protocol"))
    bench = cfg.get("benchmark")
    if isinstance(protocol, MedmvlProtocol) and bench is None:
        return {}, ""
    entries: dict[str, Any] = {}
    text = ""
    if not isinstance(protocol, MedmvlProtocol):
        report, scores = protocol.evaluate(rows)
        for line, score in zip(per_question, scores):
            line[protocol.name] = score
        entries["protocol"] = {**protocol.describe(), "metrics": report}
        text = f"\nScored by {protocol.name} beside medmvl (strict):\n\n" + side_by_side(
            strict, report, protocol
        )
    else:
        report = strict
    if bench is not None:
        columns = OmegaConf.to_container(bench.columns, resolve=True)
        references = OmegaConf.to_container(bench.references, resolve=True) if bench.get("references") else []
        text += "\n" + benchmark_table(bench.title, columns, strict, report, protocol, references)
        entries["benchmark"] = {"name": bench.name, "split": bench.split, "references": references}
    return entries, text
