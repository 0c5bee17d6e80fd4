"""Convert public medical VQA / report benchmarks, as downloaded, into medmvl annotation JSON.

``convert(benchmark, src, out)`` reads the release in ``src`` (its own file names, columns and keys; each
converter module cites where its layout is documented) and writes ``<out>/<split>.json`` per released
split, the media under ``<out>/images`` / ``<out>/volumes`` (copied, or symlinked with ``link=True``;
never moved) and ``<out>/convert_report.json``: sample counts per split and answer type, the split files,
the media folders, and every skipped row with its file and row. Bad rows raise :class:`ConversionError`
listing all of them, unless ``skip_bad=True``.

A conversion is cached: when ``<out>/convert_report.json`` records the same source folder, options and
converter version, ``convert`` returns it without reading the release again (``force=True`` redoes it).

Records carry ``answer`` (the reference), ``answer_type`` (``closed`` / ``open``, or ``choice`` for
multiple-choice questions, scored by option letter: see ``medmvl.evaluation.predictions``), ``dataset``,
``split``, ``question_type`` where the release has one, and ``choices`` / ``answer_choice`` where it has
options. Benchmark pages: docs/benchmarks.md.
"""

from __future__ import annotations

import importlib
import json
from pathlib import Path
from typing import Any

from medmvl.evaluation.benchmarks.common import Context, ConversionError, RowProblem, problems_as_dicts

BENCHMARKS = ("vqa_rad", "slake", "path_vqa", "pmc_vqa", "omnimedvqa", "m3d_vqa", "m3d_cap", "ct_rate")
REPORT = "convert_report.json"
MAX_LISTED = 50
"""The most bad rows an error message lists; the rest are counted."""

__all__ = ["BENCHMARKS", "ConversionError", "RowProblem", "convert", "converter", "options_of"]


def converter(benchmark: str) -> Any:
    """The converter module of ``benchmark`` (imported on use).

    Raises:
        ValueError: ``benchmark`` is not one of ``BENCHMARKS``.
    """
    if benchmark not in BENCHMARKS:
        raise ValueError(f"unknown benchmark {benchmark!r}; expected one of {list(BENCHMARKS)}")
    return importlib.import_module(f"medmvl.evaluation.benchmarks.{benchmark}")


def options_of(benchmark: str) -> dict[str, tuple[str, ...]]:
    """``{option: allowed values}`` of a converter; the first value is the default."""
    return dict(converter(benchmark).OPTIONS)


def _resolve_options(benchmark: str, given: dict[str, Any]) -> dict[str, str]:
    allowed = options_of(benchmark)
    unknown = sorted(set(given) - set(allowed))
    if unknown:
        raise ValueError(
            f"{benchmark}: unknown option(s) {unknown}; its options: "
            + (", ".join(f"{k} ({'|'.join(v)})" for k, v in allowed.items()) or "none")
        )
    resolved = {}
    for name, values in allowed.items():
        value = given.get(name, values[0])
        if value not in values:
            raise ValueError(f"{benchmark}: option {name}={value!r}; expected one of {list(values)}")
        resolved[name] = value
    return resolved


def _cached(path: Path, key: dict[str, Any]) -> dict[str, Any] | None:
    try:
        report = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError):
        return None
    same = isinstance(report, dict) and all(report.get(k) == v for k, v in key.items())
    files_there = same and all(Path(f).is_file() for f in report.get("files", {}).values())
    return report if files_there else None


def _raise(benchmark: str, problems: list[RowProblem]) -> None:
    lines = [f"  {p}" for p in problems[:MAX_LISTED]]
    if len(problems) > MAX_LISTED:
        lines.append(f"  ... and {len(problems) - MAX_LISTED} more not listed ({len(problems)} in all)")
    raise ConversionError(
        f"{benchmark}: {len(problems)} row(s) cannot be converted (pass skip_bad=True / --skip-bad to leave "
        "them out and list them in convert_report.json):\n" + "\n".join(lines),
        problems,
    )


def convert(
    benchmark: str,
    src: Path,
    out: Path,
    *,
    link: bool = False,
    skip_bad: bool = False,
    force: bool = False,
    **options: Any,
) -> dict[str, Any]:
    """Convert the release of ``benchmark`` in ``src`` into ``out``; returns the report.

    Args:
        benchmark: One of ``BENCHMARKS``.
        src: The downloaded release folder (layout per benchmark: docs/benchmarks.md).
        out: The output folder (created).
        link: Symlink media instead of copying them.
        skip_bad: Leave bad rows out and list them in the report instead of raising.
        force: Convert again even when ``out`` holds this conversion.
        **options: Converter options (``options_of(benchmark)``), e.g. ``lang="all"`` for SLAKE.

    Returns:
        The report written to ``<out>/convert_report.json`` (``files``, ``image_dir`` / ``image3d_dir``,
        ``counts``, ``skipped``).

    Raises:
        ValueError: Unknown benchmark or option value.
        ConversionError: The release is missing files or has bad rows (each named with file and row) and
            ``skip_bad`` is false.
    """
    module = converter(benchmark)
    src, out = Path(src).expanduser().resolve(), Path(out).expanduser().resolve()
    resolved = _resolve_options(benchmark, options)
    key = {
        "benchmark": benchmark,
        "converter_version": module.VERSION,
        "source": str(src),
        "options": {**resolved, "link": link, "skip_bad": skip_bad},
    }
    report_path = out / REPORT
    if not force and (cached := _cached(report_path, key)) is not None:
        return cached
    if not src.exists():
        raise ConversionError(f"{benchmark}: source {src} does not exist")
    out.mkdir(parents=True, exist_ok=True)
    ctx = Context(out, link=link)
    splits = module.read(src, ctx, **resolved)
    if ctx.problems and not skip_bad:
        _raise(benchmark, ctx.problems)
    report: dict[str, Any] = {**key, "cited": module.SOURCE, "files": {}, "counts": {}}
    for split, records in splits.items():
        counts: dict[str, int] = {}
        for rec in records:
            counts[rec["answer_type"]] = counts.get(rec["answer_type"], 0) + 1
        report["counts"][split] = {"total": len(records), "answer_type": counts}
        if records:
            path = out / f"{split}.json"
            path.write_text(json.dumps(records, ensure_ascii=False, indent=1) + "\n", encoding="utf-8")
            report["files"][split] = str(path)
    for kind, name in (("image", "image_dir"), ("image3d", "image3d_dir")):
        if any(kind in rec for records in splits.values() for rec in records):
            report[name] = str(ctx.media_dir(kind))
    report["n_skipped"] = len(ctx.problems)
    report["skipped"] = problems_as_dicts(ctx.problems)
    report.update(ctx.notes)
    report_path.write_text(json.dumps(report, ensure_ascii=False, indent=1) + "\n", encoding="utf-8")
    return report
