"""Markdown tables: medmvl's strict scores beside a protocol's, and a benchmark's published layout."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from medmvl.evaluation.protocols.base import BREAKDOWNS, Protocol

STRICT = (("closed_accuracy", "closed acc"), ("choice_accuracy", "choice acc"), ("recall", "open recall"))
LABELS = {"by_kind": "kind", "by_question_type": "type", "by_dataset": "dataset"}


def cell(value: Any, unavailable: bool = False) -> str:
    """A metric in percent; ``n/a`` when it cannot be computed here, ``-`` when undefined."""
    if unavailable:
        return "n/a"
    return "-" if value is None else f"{100 * value:.1f}"


def side_by_side(strict: dict[str, Any], report: dict[str, Any], protocol: Protocol) -> str:
    """One row per group (overall first): n, medmvl's strict accuracies and open recall, then the
    protocol's metrics; a note under the table names every unavailable metric and why."""
    missing = protocol.unavailable()
    header = [
        "group",
        "n",
        *(f"medmvl {t}" for _, t in STRICT),
        *(f"{protocol.name} {t}" for _, t in protocol.columns),
    ]
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join(["---"] + ["---:"] * (len(header) - 1)) + "|"]
    groups = [("overall", strict["overall"], report["overall"])]
    for name, _ in BREAKDOWNS:
        groups += [(f"{LABELS[name]}: {g}", strict[name][g], report[name][g]) for g in report.get(name, {})]
    for label, mine, theirs in groups:
        cells = [label.replace("|", "\\|"), str(theirs["n"])]
        cells += [cell(mine.get(k)) for k, _ in STRICT]
        cells += [cell(theirs.get(k), k in missing) for k, _ in protocol.columns]
        lines.append("| " + " | ".join(cells) + " |")
    table = "\n".join(lines) + "\n"
    shown = {k for k, _ in protocol.columns}
    notes = [f"- {k}: unavailable — {why}" for k, why in missing.items() if k in shown]
    return table + ("\n" + "\n".join(notes) + "\n" if notes else "")


def benchmark_table(
    title: str,
    columns: Sequence[dict[str, Any]],
    strict: dict[str, Any],
    report: dict[str, Any],
    protocol: Protocol,
    references: Sequence[dict[str, Any]],
) -> str:
    """The layout of a published table: this model by the protocol and by medmvl, then reference rows.

    Each column is ``{title, protocol, medmvl, group}``: the metric key in the protocol's and in medmvl's
    report (``medmvl`` may be null) and the report group (``overall`` by default, or e.g.
    ``by_question_type/Modality``). Reference rows are ``{model, source, values: {title: number}}``.
    """
    missing = protocol.unavailable()
    header = ["model", "scored by", *(c["title"] for c in columns)]
    lines = [f"**{title}**", "", "| " + " | ".join(header) + " |", "|---|---|" + "---:|" * len(columns)]

    def entry(source: dict[str, Any], group: str | None) -> dict[str, Any]:
        if not group or group == "overall":
            return source["overall"]
        kind, _, name = group.partition("/")
        return source.get(kind, {}).get(name, {})

    ours = [cell(entry(report, c.get("group")).get(c["protocol"]), c["protocol"] in missing) for c in columns]
    lines.append("| this model | " + protocol.name + " | " + " | ".join(ours) + " |")
    strict_cells = [
        cell(entry(strict, c.get("group")).get(c["medmvl"])) if c.get("medmvl") else "-" for c in columns
    ]
    lines.append("| this model | medmvl (strict) | " + " | ".join(strict_cells) + " |")
    for ref in references:
        values = ref.get("values", {})
        row = [f"{values[c['title']]:.2f}" if c["title"] in values else "-" for c in columns]
        lines.append(f"| {ref['model']} | published ({ref['source']}) | " + " | ".join(row) + " |")
    if not references:
        lines += ["", "No published reference rows: none could be confirmed offline (docs/protocols.md)."]
    return "\n".join(lines) + "\n"
