"""Answer every record of a MedM-VL / LLaVA inference file, resumably, one turn or every turn.

Output: the input records, in input order, each with the generated ``gpt`` turn appended (a final ``gpt``
turn already in the input is the reference: it moves to ``answer`` unless the record has one). With
``multi_turn=True`` every human turn is answered in order with the model's own earlier answers in
context (as MedM-VL's ``inference_multiturn.py``); the input's ``gpt`` turns are not shown to the model
and are kept, one per human turn (``null`` where the input has none), in ``reference_turns``.

Why a side file: a run of hours must survive a kill. Each finished batch is appended to
``<output>.partial.jsonl`` and flushed; the JSON ``output`` is written atomically (temporary file +
rename) when the run ends, also on an exception, and the side file is then removed. A rerun first merges
both (a last line cut by a kill is dropped with a warning) and skips every id already answered.
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Callable, Sequence
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


def partial_path(output: Path) -> Path:
    """The side file finished batches are appended to: ``<output>.partial.jsonl``."""
    return output.with_name(output.name + PARTIAL_SUFFIX)


def with_prediction(record: dict[str, Any], prediction: str) -> dict[str, Any]:
    """``record`` with the generated gpt turn appended (a final gpt turn moves to ``answer``)."""
    out = dict(record)
    turns = list(out["conversations"])
    if turns and turns[-1].get("from") == "gpt":
        out.setdefault("answer", turns.pop()["value"])
    out["conversations"] = [*turns, {"from": "gpt", "value": prediction}]
    return out


def with_dialogue(record: dict[str, Any], answers: Sequence[str]) -> dict[str, Any]:
    """``record`` with each human turn followed by the model's answer; input gpt turns in ``reference_turns``."""
    out = dict(record)
    turns = list(out["conversations"])
    humans = turns[0::2]
    references = [t["value"] for t in turns[1::2]] + [None] * (len(humans) - len(turns[1::2]))
    if len(turns) % 2 == 0:
        out.setdefault("answer", turns[-1]["value"])
    out["conversations"] = [m for h, a in zip(humans, answers) for m in (h, {"from": "gpt", "value": a})]
    out["reference_turns"] = references
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
            done[str(row["id"])] = row
    return done


def write_output(output: Path, records: Sequence[Any], done: dict[str, dict[str, Any]]) -> None:
    """Write the answered records atomically: input order first, then ids no longer in the input."""
    ids = [str(r["id"]) for r in records if isinstance(r, dict) and "id" in r]
    known = set(ids)
    rows = [done[i] for i in ids if i in done] + [r for i, r in done.items() if i not in known]
    tmp = output.with_name(output.name + ".tmp")
    tmp.write_text(json.dumps(rows, indent=1, ensure_ascii=False), encoding="utf-8")
    os.replace(tmp, output)


def answer_file(
    generator: Generator,
    annotations: str | os.PathLike,
    output: str | os.PathLike,
    *,
    multi_turn: bool = False,
    batch_size: int = 8,
    on_progress: Callable[[int, int], None] | None = None,
    **generate_kwargs: Any,
) -> Path:
    """Answer every not-yet-answered record of ``annotations`` into ``output``; returns ``output``.

    Args:
        generator: Builds prompts and generates.
        annotations: The inference file (conversations without the final ``gpt`` turn).
        output: The JSON file written (resumed when it or its partial side file exists).
        multi_turn: Answer every human turn in order (see module docstring); else the last one.
        batch_size: Records per batch (and per write of the side file).
        on_progress: Called as ``on_progress(done_now, total_to_do)`` at the start and after each batch.
        **generate_kwargs: ``image_dir``, ``image3d_dir``, ``text_only``, ``max_new_tokens``,
            ``temperature``, ``top_p``, ``num_beams``, ... (``Generator.generate``).
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
    output.parent.mkdir(parents=True, exist_ok=True)
    done = read_done(output)
    if partial_path(output).exists():  # consolidate, so appending never continues a cut line
        write_output(output, records, done)
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
        with partial_path(output).open("a", encoding="utf-8") as side:
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
        write_output(output, records, done)
        partial_path(output).unlink(missing_ok=True)
    return output
