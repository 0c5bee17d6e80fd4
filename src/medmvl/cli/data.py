"""``medmvl-data``: dataset chores from the shell, one argparse subcommand each.

``medmvl-data build-demo`` builds (or reuses) the real-scan 2D demo VQA set and prints its folder (first
line, for scripts) and the sample counts per question type and answer; ``build-demo-3d`` does the same
for the real-CT 3D demo set (``medmvl.demo.build_3d``). Further subcommands (e.g.
``check``) add a ``_add_<name>(subparsers)`` function that registers a parser with ``func=`` and list it
in ``SUBCOMMANDS``.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections.abc import Callable, Sequence
from pathlib import Path


def _print_build(folder: Path) -> int:
    """Print a demo build's folder, then its questions per split, type and answer (from ``meta.json``)."""
    print(folder)
    counts = json.loads((folder / "meta.json").read_text())["counts"]
    for split, info in counts.items():
        print(f"{split}: {info['total']} samples")
        for qtype, answers in info["question_types"].items():
            print(f"  {qtype:<18} " + ", ".join(f"{a}: {n}" for a, n in answers.items()))
    return 0


def _build_demo(args: argparse.Namespace) -> int:
    from medmvl.demo.build_2d import build_demo_2d

    folder = build_demo_2d(
        args.out,
        seed=args.seed,
        n_train=args.n_train,
        n_val=args.n_val,
        image_size=args.image_size,
        turns=args.turns,
        n_reading=args.n_reading,
        force=args.force,
    )
    return _print_build(folder)


def _add_build_demo(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "build-demo",
        help="build the 2D demo VQA set from real scans shipped on PyPI",
        description="Build (or reuse, when the folder holds the same build) the real-scan 2D demo set: "
        "train.json, val.json, captions.json (image-caption pairs of the training images), images/ and "
        "meta.json in LLaVA annotation format.",
    )
    p.add_argument("--out", type=Path, default=None, help="output folder (default: <medmvl cache>/demo_2d)")
    p.add_argument("--seed", type=int, default=0, help="seed of the plan and augmentations (default: 0)")
    p.add_argument("--n-train", type=int, default=3000, help="training questions (default: 3000)")
    p.add_argument("--n-val", type=int, default=400, help="held-out questions, one image each (default: 400)")
    p.add_argument("--image-size", type=int, default=128, help="PNG side in pixels (default: 128)")
    p.add_argument("--turns", type=int, default=4, help="most questions per training image (default: 4)")
    p.add_argument(
        "--n-reading",
        type=int,
        default=0,
        help="text-only reading questions about synthetic captions added to train.json (default: 0)",
    )
    p.add_argument("--force", action="store_true", help="rebuild even if the folder holds this build")
    p.set_defaults(func=_build_demo)


def _check(args: argparse.Namespace) -> int:
    from medmvl.data.media import check_media
    from medmvl.data.schema import AnnotationError, read_annotations

    status = 0
    for path in args.annotations:
        try:
            samples, problems = read_annotations(path, require_answer=not args.inference)
        except AnnotationError as err:
            print(f"error: {err}")
            status = 1
            continue
        # paths resolve as training and infer.py resolve them: relative to --image-dir / --image3d-dir,
        # each defaulting to the annotation file's folder; --images also decodes every file
        folder = Path(path).parent
        found = check_media(
            samples,
            image_dir=args.image_dir or folder,
            image3d_dir=args.image3d_dir or folder,
            read=args.images,
        )
        problems = sorted([*problems, *found], key=lambda p: -1 if p.index is None else p.index)
        errors = sum(p.severity == "error" for p in problems)
        for problem in problems:
            print(f"{problem.severity}: {problem}")
        print(f"{path}: {errors} error(s), {len(problems) - errors} warning(s)")
        status = status or int(errors > 0)
    return status


def _add_check(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "check",
        help="report every problem of annotation files at once (exit 1 if any error)",
        description="Report every problem of annotation files at once: JSON, schema, roles, placeholder "
        "counts, duplicate ids, text encoding, and every image/volume path (inside its folder and present, "
        "resolved as training resolves it); with --images every file is also decoded (readable, finite). "
        "Token length is checked when training builds the dataset.",
    )
    p.add_argument("annotations", nargs="+", help="MedM-VL / LLaVA annotation JSON files")
    p.add_argument(
        "--inference", action="store_true", help="files without the final gpt turn (inference input)"
    )
    p.add_argument(
        "--images",
        action="store_true",
        help="also decode every image and volume file (paths are always checked)",
    )
    p.add_argument(
        "--image-dir", type=Path, default=None, help="folder of relative image paths (default: the file's)"
    )
    p.add_argument(
        "--image3d-dir",
        type=Path,
        default=None,
        help="folder of relative image3d paths (default: the file's, as data.image3d_dir in training)",
    )
    p.set_defaults(func=_check)


def _build_demo_3d(args: argparse.Namespace) -> int:
    from medmvl.demo.build_3d import build_demo_3d

    folder = build_demo_3d(
        args.out,
        seed=args.seed,
        n_train=args.n_train,
        n_val=args.n_val,
        depth=args.depth,
        volume_size=args.volume_size,
        turns=args.turns,
        force=args.force,
    )
    return _print_build(folder)


def _add_build_demo_3d(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "build-demo-3d",
        help="build the 3D demo VQA set from the real chest CT shipped on PyPI",
        description="Build (or reuse, when the folder holds the same build) the real-CT 3D demo set: "
        "train.json, val.json, captions.json, volumes/ (.npy) and meta.json in LLaVA annotation format "
        "(image3d).",
    )
    p.add_argument("--out", type=Path, default=None, help="output folder (default: <medmvl cache>/demo_3d)")
    p.add_argument("--seed", type=int, default=0, help="seed of the plan, crops and jitter (default: 0)")
    p.add_argument("--n-train", type=int, default=1000, help="training samples (default: 1000)")
    p.add_argument("--n-val", type=int, default=150, help="validation samples (default: 150)")
    p.add_argument("--depth", type=int, default=6, help="CT slices per sub-volume (default: 6)")
    p.add_argument(
        "--volume-size",
        type=int,
        nargs=3,
        default=[6, 64, 64],
        metavar=("D", "H", "W"),
        help="stored volume size (default: 6 64 64)",
    )
    p.add_argument("--turns", type=int, default=1, help="most questions per training volume (default: 1)")
    p.add_argument("--force", action="store_true", help="rebuild even if the folder holds this build")
    p.set_defaults(func=_build_demo_3d)


def _convert(args: argparse.Namespace) -> int:
    from medmvl.evaluation.benchmarks import ConversionError, convert

    options = {k: getattr(args, k) for k in ("lang", "task", "report") if getattr(args, k) is not None}
    try:
        report = convert(
            args.benchmark,
            args.src,
            args.out,
            link=args.link,
            skip_bad=args.skip_bad,
            force=args.force,
            **options,
        )
    except (ConversionError, ValueError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 1
    print(Path(args.out).resolve() / "convert_report.json")
    for split, info in report["counts"].items():
        kinds = ", ".join(f"{k}: {n}" for k, n in info["answer_type"].items())
        where = report["files"].get(split, "(no samples, not written)")
        print(f"{split}: {info['total']} samples" + (f" ({kinds})" if kinds else "") + f" -> {where}")
    if report["n_skipped"]:
        print(f"skipped {report['n_skipped']} bad row(s), listed in convert_report.json")
    return 0


def _add_convert(subparsers: argparse._SubParsersAction) -> None:
    from medmvl.evaluation.benchmarks import BENCHMARKS

    p = subparsers.add_parser(
        "convert",
        help="convert a downloaded medical VQA / report benchmark into annotation JSON",
        description="Convert a benchmark's released files (as downloaded; layouts in docs/benchmarks.md) into "
        "<out>/<split>.json per released split, media under <out>/images or <out>/volumes (copied, or "
        "symlinked with --link; never moved) and <out>/convert_report.json. Bad rows (missing question, "
        "answer or image, unknown answer type) stop the conversion, all listed with file and row, unless "
        "--skip-bad. A folder holding the same conversion (source, options, converter version) is reused.",
    )
    p.add_argument("benchmark", choices=BENCHMARKS, help="the benchmark")
    p.add_argument("src", type=Path, help="the downloaded release folder")
    p.add_argument("out", type=Path, help="the output folder")
    p.add_argument("--link", action="store_true", help="symlink images and volumes instead of copying them")
    p.add_argument("--skip-bad", action="store_true", help="leave bad rows out and list them in the report")
    p.add_argument(
        "--force", action="store_true", help="convert again even if the folder holds this conversion"
    )
    p.add_argument(
        "--lang", choices=("en", "zh", "all"), default=None, help="slake: question language (default: en)"
    )
    p.add_argument(
        "--task",
        choices=("both", "closed", "open"),
        default=None,
        help="m3d_vqa: closed (multiple choice), open or both per row (default: both)",
    )
    p.add_argument(
        "--report",
        choices=("findings", "impressions", "both"),
        default=None,
        help="ct_rate: the report section to generate (default: findings)",
    )
    p.set_defaults(func=_convert)


SUBCOMMANDS: tuple[Callable[[argparse._SubParsersAction], None], ...] = (
    _add_build_demo,
    _add_build_demo_3d,
    _add_check,
    _add_convert,
)


def build_parser() -> argparse.ArgumentParser:
    """The ``medmvl-data`` parser with every subcommand of ``SUBCOMMANDS``."""
    parser = argparse.ArgumentParser(prog="medmvl-data", description="medmvl dataset tools")
    subparsers = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for add in SUBCOMMANDS:
        add(subparsers)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``medmvl-data`` console script; returns the exit status."""
    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except BrokenPipeError:  # e.g. ``medmvl-data build-demo | head -1``: the reader has what it wanted
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 0


if __name__ == "__main__":
    sys.exit(main())
