"""Answer every record of a MedM-VL / LLaVA inference file, resumably, one turn or every turn.

Output: the input records, in input order, each with the generated ``gpt`` turn appended (where MedM-VL /
LLaVA tools read it) and the same text in a ``prediction`` field. The input's conversation is kept as it
was, a final reference ``gpt`` turn included; ``answer`` holds the reference: the record's own ``answer``,
else its final ``gpt`` turn, else ``null`` (so no scorer takes the prediction for the reference:
``evaluate.py`` scores ``prediction`` against ``answer``). With ``multi_turn=True`` every human turn is
answered in order with the model's own earlier answers in context (as MedM-VL's
``inference_multiturn.py``); the input's ``gpt`` turns are not shown to the model and are kept, one per
human turn (``null`` where the input has none), in ``reference_turns``; ``prediction`` is the last answer.

Why a side file: a run of hours must survive a kill. Each finished batch is appended to
``<output>.partial.jsonl`` and flushed; the JSON ``output`` is written atomically (temporary file +
rename) when the run ends, also on an exception, and the side file is then removed. A rerun first merges
both (a last line cut by a kill is dropped with a warning) and skips every id already answered.

Where the answers came from: the output is a plain JSON list of records (what ``evaluate.py`` and other
readers expect), so its origin goes to a sidecar ``<output>.origin``, and the side file's first line is
the same record as ``{"medmvl_output": {...}}``. Both hold the model (``path``: the folder or checkpoint
file read, resolved; ``weights``: the sha256 of each weights file), the prompt settings (``format``,
``system_prompt``, ``max_length``) and the generation settings (``max_new_tokens``, ``temperature``,
``top_p``, ``num_beams``, ``text_only``, ``multi_turn``). A rerun into an output made with other weights
or settings is refused, naming each difference as ``key: old -> new`` (a model folder that only moved,
same weights, resumes); so is an output that records no origin (an older medmvl's, another tool's).
``overwrite=True`` removes the output, its sidecar and side file and starts afresh.
"""

from __future__ import annotations

import hashlib
import inspect
import json
import logging
import os
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

from medmvl.data.schema import (
    IMAGE3D_TOKEN,
    IMAGE_TOKEN,
    AnnotationError,
    Sample,
    Turn,
    raise_on_errors,
    validate_records,
)
from medmvl.inference.generator import Generator

log = logging.getLogger("medmvl.infer")
PARTIAL_SUFFIX = ".partial.jsonl"
ORIGIN_SUFFIX = ".origin"
META_KEY = "medmvl_output"
"""The key of the side file's first line, which holds the run's settings (no record has it)."""
META_VERSION = 1
WEIGHT_SUFFIXES = (".safetensors", ".ckpt", ".bin", ".pt", ".pth")
GENERATION_KEYS = ("max_new_tokens", "temperature", "top_p", "num_beams", "text_only")
_GENERATE_DEFAULTS = {
    k: p.default for k, p in inspect.signature(Generator.generate).parameters.items() if k in GENERATION_KEYS
}


class ResumeMismatch(AnnotationError):
    """An existing output was made with other weights or settings (or does not say which)."""

    def __init__(self, message: str, differences: Sequence[str] = ()) -> None:
        super().__init__(message)
        self.differences = list(differences)


def partial_path(output: Path) -> Path:
    """The side file finished batches are appended to: ``<output>.partial.jsonl``."""
    return output.with_name(output.name + PARTIAL_SUFFIX)


def meta_path(output: Path) -> Path:
    """The sidecar recording the model and settings that wrote ``output``: ``<output>.origin``."""
    output = Path(output)
    return output.with_name(output.name + ORIGIN_SUFFIX)


def weights_digest(path: str | os.PathLike) -> dict[str, str]:
    """``{file: "sha256:<hex>"}`` of a model's weights, read in 1 MiB blocks (never whole into memory).

    A file (a Lightning checkpoint) is its own weights, named by its file name; a folder's weights are its
    files with a weights suffix (``model.safetensors``, a LoRA ``adapters/<name>/adapter_model.safetensors``,
    a MedM-VL folder's shards), named by their path inside it.
    """
    path = Path(path)
    if path.is_file():
        return {path.name: _sha256(path)}
    files = sorted(p for p in path.rglob("*") if p.is_file() and p.name.endswith(WEIGHT_SUFFIXES))
    return {p.relative_to(path).as_posix(): _sha256(p) for p in files}


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as f:
        while block := f.read(2**20):
            digest.update(block)
    return f"sha256:{digest.hexdigest()}"


def model_origin(path: str | os.PathLike | None) -> dict[str, Any]:
    """``{"path", "weights"}`` of the model read from ``path`` (``None``: an in-memory model, unrecorded)."""
    if path is None:
        return {"path": None, "weights": None}
    log.info("hashing the weights of %s (recorded with the output)", path)
    return {"path": str(Path(path).resolve()), "weights": weights_digest(path)}


def output_meta(
    generator: Generator,
    *,
    model: str | os.PathLike | Mapping[str, Any] | None = None,
    multi_turn: bool = False,
    **generate_kwargs: Any,
) -> dict[str, Any]:
    """What an output records about its origin (module docstring): model, prompt and generation settings.

    Args:
        generator: Its prompt settings are recorded.
        model: The folder or checkpoint file the generator's model was read from (hashed), or a
            :func:`model_origin` already computed.
        multi_turn: As given to :func:`answer_file`.
        **generate_kwargs: As given to :func:`answer_file`; unset generation settings are
            ``Generator.generate``'s defaults, other keys (``image_dir``, ``batch_size``) are not recorded.
    """
    conversation = generator.conversation
    return {
        "format_version": META_VERSION,
        "model": dict(model) if isinstance(model, Mapping) else model_origin(model),
        "prompt": {
            "format": conversation.format,
            "system_prompt": conversation.system_prompt,
            "max_length": int(conversation.max_length),
        },
        "generation": generation_settings(multi_turn=multi_turn, **generate_kwargs),
    }


def generation_settings(*, multi_turn: bool = False, **generate_kwargs: Any) -> dict[str, Any]:
    """The recorded generation settings (``Generator.generate``'s defaults for those not given)."""
    generation = {k: generate_kwargs.get(k, _GENERATE_DEFAULTS[k]) for k in GENERATION_KEYS}
    return {**generation, "multi_turn": bool(multi_turn)}


def meta_differences(old: Mapping[str, Any], new: Mapping[str, Any]) -> list[str]:
    """``key: old -> new`` for each recorded setting that differs (the model's path alone is not one).

    Only the sections ``new`` has are compared (``model``, ``prompt``, ``generation``), so a check before
    the model is loaded can leave out the prompt settings it does not know yet.
    """
    ignored = ("model.path", "format_version")
    flat_old = _flatten({k: v for k, v in old.items() if k in new})
    flat_new = _flatten(new)
    keys = [k for k in dict.fromkeys([*flat_new, *flat_old]) if k not in ignored]
    return [
        f"{k}: {_shown(flat_old.get(k))} -> {_shown(flat_new.get(k))}"
        for k in keys
        if flat_old.get(k) != flat_new.get(k)
    ]


def _flatten(tree: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    """Nested settings as ``{"generation.top_p": ..., "model.weights[model.safetensors]": ...}``."""
    out: dict[str, Any] = {}
    for key, value in tree.items():
        if not prefix:
            name = key
        elif "." in key or "/" in key:  # a file name
            name = f"{prefix}[{key}]"
        else:
            name = f"{prefix}.{key}"
        if isinstance(value, Mapping):
            out.update(_flatten(value, name))
        else:
            out[name] = value
    return out


def _shown(value: Any) -> str:
    """A setting as an error message shows it: a hash by its first 12 hex digits, text quoted."""
    if isinstance(value, str) and value.startswith("sha256:"):
        return value[:19] + "…"
    return repr(value) if isinstance(value, str) else str(value)


def with_prediction(record: dict[str, Any], prediction: str) -> dict[str, Any]:
    """``record`` with the generated gpt turn appended and in ``prediction``; ``answer`` holds the reference.

    The conversation is kept as it was (a final gpt turn, the reference, stays); ``answer`` is the
    record's own, else that final gpt turn, else ``None``.
    """
    out = dict(record)
    turns = list(out["conversations"])
    reference = turns[-1]["value"] if turns and turns[-1].get("from") == "gpt" else None
    out.setdefault("answer", reference)
    out["conversations"] = [*turns, {"from": "gpt", "value": prediction}]
    out["prediction"] = prediction
    return out


def with_dialogue(record: dict[str, Any], answers: Sequence[str]) -> dict[str, Any]:
    """``record`` with each human turn followed by the model's answer; input gpt turns in ``reference_turns``.

    ``prediction`` is the answer to the last turn; ``answer`` the record's own, else the input's final gpt
    turn, else ``None``.
    """
    out = dict(record)
    turns = list(out["conversations"])
    humans = turns[0::2]
    references = [t["value"] for t in turns[1::2]] + [None] * (len(humans) - len(turns[1::2]))
    out.setdefault("answer", turns[-1]["value"] if len(turns) % 2 == 0 else None)
    out["conversations"] = [m for h, a in zip(humans, answers) for m in (h, {"from": "gpt", "value": a})]
    out["reference_turns"] = references
    out["prediction"] = answers[-1] if answers else None
    return out


def dialogue_prefix(sample: Sample, answers: Sequence[str]) -> Sample:
    """The prompt for human turn ``len(answers)``: earlier human turns, each followed by its given answer.

    Only the images whose placeholders occur in the prefix are kept (a later turn may add an image).
    """
    humans = [t for t in sample.turns if t.role == "human"]
    k = len(answers)
    turns = [m for h, a in zip(humans[:k], answers) for m in (h, Turn("gpt", a))] + [humans[k]]
    n2d = sum(t.text.count(IMAGE_TOKEN) for t in turns if t.role == "human")
    n3d = sum(t.text.count(IMAGE3D_TOKEN) for t in turns if t.role == "human")
    return Sample(
        sample.id,
        tuple(turns),
        sample.images[:n2d],
        sample.images3d[:n3d],
        sample.index,
        sample.source,
        sample.answer,
    )


def answer_dialogues(generator: Generator, samples: Sequence[Sample], **kwargs: Any) -> list[list[str]]:
    """Answer every human turn of every sample, turn by turn (one batched round per turn index)."""
    answers: list[list[str]] = [[] for _ in samples]
    rounds = max((sum(t.role == "human" for t in s.turns) for s in samples), default=0)
    for k in range(rounds):
        active = [i for i, s in enumerate(samples) if sum(t.role == "human" for t in s.turns) > k]
        replies = generator.generate([dialogue_prefix(samples[i], answers[i]) for i in active], **kwargs)
        for i, reply in zip(active, replies):
            answers[i].append(reply)
    return answers


def read_done(output: Path) -> dict[str, dict[str, Any]]:
    """Records already answered: those of ``output`` (JSON list) and of its partial side file."""
    done: dict[str, dict[str, Any]] = {}
    if output.exists():
        try:
            rows = json.loads(output.read_text(encoding="utf-8"))
        except json.JSONDecodeError as err:
            raise AnnotationError(
                f"output {output} exists but is not valid JSON ({err}); move it away"
            ) from err
        if not isinstance(rows, list):
            raise AnnotationError(f"output {output} exists but is not a JSON list of records")
        done.update((str(r["id"]), r) for r in rows if isinstance(r, dict) and "id" in r)
    partial = partial_path(output)
    if partial.exists():
        lines = partial.read_text(encoding="utf-8").splitlines()
        for line_no, line in enumerate(lines, 1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except json.JSONDecodeError as err:
                if line_no == len(lines):
                    log.warning("%s: dropping its last line, cut short by an interruption", partial)
                    continue
                raise AnnotationError(f"{partial}: line {line_no} is not valid JSON ({err})") from err
            if line_no == 1 and _meta_line(row) is not None:
                continue
            done[str(row["id"])] = row
    return done


def _meta_line(row: Any) -> dict[str, Any] | None:
    """The settings of a side file's first line ``{"medmvl_output": {...}}``; ``None`` for a record."""
    if isinstance(row, dict) and "id" not in row and isinstance(row.get(META_KEY), dict):
        return row[META_KEY]
    return None


def recorded_meta(output: Path) -> list[tuple[Path, dict[str, Any] | None]]:
    """What each existing file of ``output`` records about its origin: ``(file, settings or None)``.

    The JSON output's settings are in its sidecar, the side file's in its first line; a file that records
    none (an empty side file has nothing to protect and is left out) comes with ``None``.
    """
    found: list[tuple[Path, dict[str, Any] | None]] = []
    if output.exists():
        sidecar = meta_path(output)
        meta = None
        if sidecar.is_file():
            try:
                meta = json.loads(sidecar.read_text(encoding="utf-8"))
            except json.JSONDecodeError as err:
                raise AnnotationError(f"{sidecar} is not valid JSON ({err}); move it away") from err
        found.append((output, meta if isinstance(meta, dict) else None))
    partial = partial_path(output)
    if partial.exists():
        with partial.open(encoding="utf-8") as f:
            first = f.readline()
        if first.strip():
            try:
                meta = _meta_line(json.loads(first))
            except json.JSONDecodeError:
                meta = None
            found.append((partial, meta))
    return found


def check_resume(output: Path, meta: Mapping[str, Any]) -> None:
    """Refuse to resume into ``output`` when its files were made with other weights or settings.

    ``meta``: what :func:`output_meta` returns, or some of its sections (see :func:`meta_differences`).

    Raises:
        ResumeMismatch: A file records other settings (each difference named ``key: old -> new``), or
            records none.
    """
    for path, old in recorded_meta(output):
        if old is None:
            where = f"no {meta_path(output).name}" if path == output else "no settings line first"
            raise ResumeMismatch(
                f"{path} exists but does not record which model and settings wrote it ({where}: written by "
                "an older medmvl or another tool), so its answers may be another model's. Rerun with "
                "overwrite=true to answer afresh, or choose another output="
            )
        differences = meta_differences(old, meta)
        if differences:
            listed = "\n".join(f"  {d}" for d in differences)
            raise ResumeMismatch(
                f"{path} holds answers made with other settings; refusing to resume into it:\n{listed}\n"
                "Rerun with overwrite=true to answer afresh, or choose another output=",
                differences,
            )
        if old.get("model", {}).get("path") != meta.get("model", {}).get("path"):
            log.info(
                "%s: same weights as recorded, now read from %s", path, meta.get("model", {}).get("path")
            )


def remove_output(output: Path) -> None:
    """Delete ``output``, its sidecar and its side file (``overwrite=True``)."""
    for path in (output, meta_path(output), partial_path(output)):
        if path.exists():
            log.info("overwrite: removing %s", path)
            path.unlink()


def write_output(
    output: Path,
    records: Sequence[Any],
    done: dict[str, dict[str, Any]],
    meta: Mapping[str, Any] | None = None,
) -> None:
    """Write the answered records atomically: input order first, then ids no longer in the input.

    ``meta`` (what :func:`output_meta` returns) goes to the sidecar :func:`meta_path`, written first.
    """
    if meta is not None:
        _write_atomic(meta_path(output), json.dumps(meta, indent=1, ensure_ascii=False))
    ids = [str(r["id"]) for r in records if isinstance(r, dict) and "id" in r]
    known = set(ids)
    rows = [done[i] for i in ids if i in done] + [r for i, r in done.items() if i not in known]
    _write_atomic(output, json.dumps(rows, indent=1, ensure_ascii=False))


def _write_atomic(path: Path, text: str) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(text, encoding="utf-8")
    os.replace(tmp, path)


def answer_file(
    generator: Generator,
    annotations: str | os.PathLike,
    output: str | os.PathLike,
    *,
    model: str | os.PathLike | None = None,
    overwrite: bool = False,
    multi_turn: bool = False,
    batch_size: int = 8,
    on_progress: Callable[[int, int], None] | None = None,
    **generate_kwargs: Any,
) -> Path:
    """Answer every not-yet-answered record of ``annotations`` into ``output``; returns ``output``.

    Args:
        generator: Builds prompts and generates.
        annotations: The inference file (conversations without the final ``gpt`` turn).
        output: The JSON file written (resumed when it or its partial side file exists and records the
            same weights and settings; see the module docstring).
        model: The folder or checkpoint file ``generator``'s model was read from: its path and weights'
            hashes are recorded (``None``: recorded as ``null``, for a model built in memory).
        overwrite: Remove an existing output (with its sidecar and side file) and answer every record.
        multi_turn: Answer every human turn in order (see module docstring); else the last one.
        batch_size: Records per batch (and per write of the side file).
        on_progress: Called as ``on_progress(done_now, total_to_do)`` at the start and after each batch.
        **generate_kwargs: ``image_dir``, ``image3d_dir``, ``text_only``, ``max_new_tokens``,
            ``temperature``, ``top_p``, ``num_beams``, ... (``Generator.generate``).

    Raises:
        AnnotationError: The annotation file is missing or invalid, or the existing output is unreadable.
        ResumeMismatch: The existing output was made with other weights or settings, or records none.
    """
    source, output = Path(annotations), Path(output)
    if not source.is_file():
        raise AnnotationError(f"annotation file {str(source)!r} does not exist")
    try:
        records = json.loads(source.read_text(encoding="utf-8"))
    except json.JSONDecodeError as err:
        raise AnnotationError(f"{source}: not valid JSON ({err})") from err
    samples, problems = validate_records(records, source=str(source), require_answer=False)
    raise_on_errors(problems)
    meta = output_meta(generator, model=model, multi_turn=multi_turn, **generate_kwargs)
    if overwrite:
        remove_output(output)
    else:
        check_resume(output, meta)
    output.parent.mkdir(parents=True, exist_ok=True)
    done = read_done(output)
    if partial_path(output).exists():  # consolidate, so appending never continues a cut line
        write_output(output, records, done, meta)
        partial_path(output).unlink()
    todo = [s for s in samples if s.id not in done]
    log.info(
        "%s: %d records, %d already in %s, %d to answer",
        source,
        len(samples),
        len(samples) - len(todo),
        output,
        len(todo),
    )
    if on_progress:
        on_progress(0, len(todo))
    try:
        with partial_path(output).open("w", encoding="utf-8") as side:
            side.write(json.dumps({META_KEY: meta}, ensure_ascii=False) + "\n")
            side.flush()
            for start in range(0, len(todo), batch_size):
                chunk = todo[start : start + batch_size]
                if multi_turn:
                    replies = answer_dialogues(generator, chunk, batch_size=batch_size, **generate_kwargs)
                    rows = [with_dialogue(records[s.index], a) for s, a in zip(chunk, replies)]
                else:
                    answers = generator.generate(chunk, batch_size=batch_size, **generate_kwargs)
                    rows = [with_prediction(records[s.index], a) for s, a in zip(chunk, answers)]
                for row in rows:
                    done[str(row["id"])] = row
                    side.write(json.dumps(row, ensure_ascii=False) + "\n")
                side.flush()
                if on_progress:
                    on_progress(start + len(chunk), len(todo))
    finally:
        write_output(output, records, done, meta)
        partial_path(output).unlink(missing_ok=True)
    return output
