"""The questions of the 3D demo: which answer keys each split asks, how often, and their phrasing.

Why: a model that ignores the volume must score chance, and a held-out question must be one that training
teaches; both are properties of the plan, not of a single rendering (``demo3d_volume.answer_keys``).

Questions: ``organ_presence_3d`` (yes/no), ``laterality_3d`` (left/right) and ``larger_3d`` (one organ of a
pair), each with three phrasings (``TEMPLATES``); the ground truth is ``demo3d_volume.labels``.

Balance: each split plans question types round-robin, and within a type round-robin over answer keys
(organ and answer, organ and side, pair and winner); only organs and pairs that the split can answer both
ways are asked, and validation only asks keys that training also teaches, so every answer per organ or
pair has the same count +-1 and a model that ignores the volume scores chance. Option order alternates.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from medmvl.demo.volume_3d import Render, answer_keys, labels, load_ct, random_render, z_split

MAX_TRIES = 200  # random crops tried per planned question before giving up

TEMPLATES = {
    "organ_presence_3d": (
        "Is the {organ} in this volume?",
        "Does this CT volume contain the {organ}?",
        "Is any part of the {organ} visible in this scan?",
    ),
    "laterality_3d": (
        "Is the {organ} on the left or the right side of the patient?",
        "On which side of the patient is the {organ}, left or right?",
        "Which side of the body holds the {organ}: left or right?",
    ),
    "larger_3d": (
        "Which is larger in this volume: the {a} or the {b}?",
        "Which organ takes up more of this volume, the {a} or the {b}?",
        "In this scan, which is bigger: the {a} or the {b}?",
    ),
}
QUESTION_TYPES = tuple(TEMPLATES)
PLURAL = {"kidneys", "lungs"}


def _split_starts(split: str, depth: int, nz: int) -> list[int]:
    return [z0 for z0 in range(nz - depth + 1) if z_split(z0, depth) == split]


def _key_pool(starts: list[int], depth: int) -> dict[str, dict[tuple, list[int]]]:
    """Per question type, answer key -> slab starts whose full-width, unmirrored slab supports it."""
    _, mask = load_ct()
    nx, ny = mask.shape[:2]
    pool: dict[str, dict[tuple, list[int]]] = {q: {} for q in QUESTION_TYPES}
    swap = {"left": "right", "right": "left"}
    for z0 in starts:
        plain = labels(Render(z0, depth, 0, 0, min(nx, ny), False))
        mirrored = {**plain, "sides": {o: swap[s] for o, s in plain["sides"].items()}}
        for lab in (plain, mirrored):
            for q in QUESTION_TYPES:
                for key in answer_keys(lab, q):
                    pool[q].setdefault(key, [])
                    if z0 not in pool[q][key]:
                        pool[q][key].append(z0)
    return pool


def _both_ways(keys: list[tuple]) -> list[tuple]:
    """Keys whose subject (organ or pair) occurs with two different answers."""
    answers: dict[Any, set] = {}
    for subject, answer in keys:
        answers.setdefault(subject, set()).add(answer)
    return sorted((k for k in keys if len(answers[k[0]]) > 1), key=str)


def phrase(qtype: str, key: tuple, i: int) -> tuple[str, tuple[str, ...]]:
    """The ``i``-th asking of answer key ``key``: its question text (phrasings in turn, pair order
    alternating) and its answer options."""
    template = TEMPLATES[qtype][i % len(TEMPLATES[qtype])]
    if qtype == "organ_presence_3d":
        organ = key[0]
        text = template.format(organ=organ)
        if organ in PLURAL:
            text = text.replace("Is the", "Are the").replace("Is any part of the", "Are any parts of the")
        return text, ("yes", "no")
    if qtype == "laterality_3d":
        text = template.format(organ=key[0])
        if key[0] in PLURAL:
            text = text.replace("Is the", "Are the")
        return text, ("left", "right")
    a, b = key[0] if (i // len(TEMPLATES[qtype])) % 2 == 0 else key[0][::-1]
    return template.format(a=a, b=b), (a, b)


def plan_split(
    split: str, n: int, depth: int, allowed: dict[str, list[tuple]] | None, rng: np.random.Generator
) -> tuple[list[tuple[str, tuple, Render]], dict[str, list[tuple]]]:
    """``n`` (question type, key, rendering) triples of ``split``, balanced as in the module docstring.

    Returns:
        The plan, and per question type the answer keys it asks (``allowed`` for the next split).
    """
    _, mask = load_ct()
    pool = _key_pool(_split_starts(split, depth, mask.shape[2]), depth)
    keys = {q: _both_ways(list(pool[q])) for q in QUESTION_TYPES}
    if allowed is not None:
        keys = {q: _both_ways([k for k in keys[q] if k in allowed[q]]) for q in QUESTION_TYPES}
    types = [q for q in QUESTION_TYPES if keys[q]]
    if n and not types:
        raise ValueError(f"build_demo_3d: the {split} slabs support no balanced question (depth {depth})")
    plan, seen = [], {q: 0 for q in types}
    for i in range(n):
        q = types[i % len(types)]
        key = keys[q][seen[q] % len(keys[q])]
        seen[q] += 1
        for _ in range(MAX_TRIES):
            z0 = int(rng.choice(pool[q][key]))
            r = random_render(z0, depth, bool(rng.integers(2)), rng)
            if key in answer_keys(labels(r), q):
                break
        else:
            raise RuntimeError(f"build_demo_3d: no {split} crop in {MAX_TRIES} tries answers {q} {key}")
        plan.append((q, key, r))
    return plan, keys


def _subjects(key: tuple) -> set[str]:
    """Organs an answer key names (one organ, or both of a pair)."""
    return set(key[0]) if isinstance(key[0], tuple) else {key[0]}


def extra_turns(
    lab: dict[str, Any],
    first: tuple[str, tuple],
    allowed: dict[str, list[tuple]],
    n: int,
    rng: np.random.Generator,
) -> list[tuple[str, tuple]]:
    """Up to ``n`` more ``(question type, key)`` the same rendering answers, among the ``allowed`` keys.

    Each turn draws a (question type, answer) group at random, then a key of it, so the many "absent"
    organs do not crowd out the other questions. No organ is named twice in one conversation: an earlier
    question would give a later answer away (a side is only asked of a present organ). Extra turns are
    not exactly answer-balanced (the planned first question is); held-out samples have none.
    """
    named = _subjects(first[1])
    groups: dict[tuple[str, str], list[tuple]] = {}
    for q in QUESTION_TYPES:
        for key in answer_keys(lab, q):
            if key in allowed.get(q, ()):
                groups.setdefault((q, key[1]), []).append(key)
    out: list[tuple[str, tuple]] = []
    order = sorted(groups)
    for g in rng.permutation(len(order)):
        q = order[g][0]
        free = [k for k in groups[order[g]] if not _subjects(k) & named]
        if len(out) < n and free:
            key = free[int(rng.integers(len(free)))]
            out.append((q, key))
            named |= _subjects(key)
    return out
