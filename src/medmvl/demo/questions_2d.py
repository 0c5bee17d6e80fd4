"""Question types, phrasings, captions and the answer-balanced plan of the 2D demo set.

Each question type lists the answer *keys* a view supports (e.g. ``("liver", "yes")`` for a slice that
clearly shows the liver). A split's plan assigns its samples of a type round-robin over the keys that
split can produce, so every key (and thus every answer, per organ, per option pair) gets the same number
of samples +-1: the question text alone carries no information about the answer. Choice questions draw
their distractor from the answers the same split produces; the option order alternates per key, so the
right answer comes first in half of a key's samples.

``caption`` describes a view in fixed-length English sentences (one per organ, then the modality), the
text a from-scratch encoder is pre-trained to emit (``medmvl.demo.caption_pretrain``).
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Callable, Hashable, Sequence
from dataclasses import dataclass

import numpy as np

from medmvl.demo.sources import View

# Share of each question type per split (closed types first; each sums to 1). Training leans on the
# organ questions, which take a language model the most examples to learn to read; held-out keeps an even mix.
TYPE_WEIGHTS = {
    "train": {
        "organ_presence": 0.30,
        "organ_choice": 0.18,
        "laterality": 0.22,
        "modality": 0.08,
        "body_region": 0.08,
        "modality_open": 0.07,
        "body_region_open": 0.07,
    },
    # text-only reading conversations (see ``reading_views``): the organ facts, drawn independently
    "reading": {
        "organ_presence": 0.3,
        "organ_choice": 0.15,
        "laterality": 0.3,
        "modality": 0.125,
        "body_region": 0.125,
    },
    "val": {
        "organ_presence": 0.24,
        "organ_choice": 0.16,
        "laterality": 0.16,
        "modality": 0.14,
        "body_region": 0.14,
        "modality_open": 0.08,
        "body_region_open": 0.08,
    },
}
OPEN_TYPES = ("modality_open", "body_region_open")
# The organs asked about and captioned: the ones the held-out CT blocks can test (upper abdomen: liver,
# stomach; heart level: heart), so the training budget goes to what generalises to held-out slices.
ORGANS = ("liver", "heart", "stomach")
# Organ pairs asked as "which of these is visible"; only slices where exactly one is clearly present.
ORGAN_PAIRS = (("heart", "liver"), ("heart", "stomach"))
# Caption order of the organs; each organ sentence is 8 tokens whatever its status, so every fact sits at
# the same caption position in every CT / MR caption.
CAPTION_ORGANS = ORGANS
UNKNOWN = "unknown"  # a fact the caption does not know (not supervised in pre-training)
OPPOSITE_SIDE = {"left": "right", "right": "left"}

TEMPLATES = {
    "organ_presence": (
        "Is the {organ} in this slice?",
        "Is the {organ} visible in this image?",
        "Does this CT slice show the {organ}?",
        "Can the {organ} be seen in this slice?",
    ),
    "organ_choice": (
        "Which of these is visible: the {a} or the {b}?",
        "Which organ appears in this slice, the {a} or the {b}?",
        "Which can be seen in this image: the {a} or the {b}?",
    ),
    "laterality": (
        "Is the {organ} on the {a} or the {b} side of the patient?",
        "On which side of the patient is the {organ}, {a} or {b}?",
        "Is the {organ} on the patient's {a} or {b}?",
    ),
    "modality": (
        "Which imaging modality is this, {a} or {b}?",
        "Is this image from {a} or {b}?",
        "What kind of image is this: {a} or {b}?",
    ),
    "body_region": (
        "Which body region is shown, the {a} or the {b}?",
        "Does this image show the {a} or the {b}?",
        "Is this an image of the {a} or the {b}?",
    ),
    "modality_open": (
        "What imaging modality is this?",
        "What type of image is this?",
        "Name the imaging modality.",
    ),
    "body_region_open": (
        "What body region is shown?",
        "Which part of the body is imaged?",
        "What anatomy does this image show?",
    ),
}


def caption(view: View, flip: bool) -> str:
    """What the (possibly mirrored) image shows, e.g. ``The liver is seen on the right. The heart is absent
    from this slice. The stomach is seen on the left. CT of the abdomen.``; facts the labels do not settle
    (an organ neither clearly present nor clearly absent, an organ across the midline) are ``unknown``."""
    sentences = []
    for organ in CAPTION_ORGANS:
        if organ in view.present:
            side = view.sides.get(organ)
            if side is not None and flip:
                side = OPPOSITE_SIDE[side]
            sentences.append(f"The {organ} is seen on the {side or UNKNOWN}.")
        elif organ in view.absent:
            sentences.append(f"The {organ} is absent from this slice.")
        else:
            sentences.append(f"The {organ} is {' '.join([UNKNOWN] * 4)}.")
    region = f" of the {view.region}" if view.region else ""
    sentences.append(f"{view.modality}{region}.")
    return " ".join(sentences)


READING_SOURCE = "reading"  # ``View.source`` of the synthetic caption-only views


def reading_views(n: int, rng: np.random.Generator, kinds: Sequence[tuple[str, str | None]]) -> list[View]:
    """``n`` caption-only "views": a (modality, region) drawn from ``kinds`` and, for CT, organ facts drawn
    independently and uniformly (absent, left, right).

    Why: in real slices the facts come correlated (the flipped liver and stomach swap sides together; the
    heart and liver rarely share a training slice), so a model taught only on real slices can answer one
    organ's question from another organ's sentence, which fails on held-out slices where the pairing
    differs. Text conversations about these views ("<caption>\\n<question>") teach the LLM to read the
    sentence it is asked about. They carry no pixels and ask nothing about held-out images.

    Args:
        n: number of views.
        rng: the build's generator for them.
        kinds: the ``(modality, region)`` pairs of the training images.
    """
    views = []
    for i in range(n):
        modality, region = kinds[rng.integers(len(kinds))]
        status = {o: ("absent", "left", "right")[rng.integers(3)] for o in ORGANS} if modality == "CT" else {}
        sides = {o: st for o, st in status.items() if st != "absent"}
        present = frozenset(sides)
        absent = frozenset(status) - present
        pixels = np.zeros((1, 1), np.float32)
        views.append(
            View(READING_SOURCE, i, "reading", modality, region, pixels, None, present, absent, sides)
        )
    return views


@dataclass(frozen=True)
class Planned:
    """One sample before rendering: which view, how to ask, the answer, and whether to mirror the image."""

    view: View
    question_type: str
    question: str
    answer: str
    choices: tuple[str, ...]
    flip: bool


def _presence_keys(v: View) -> list[Hashable]:
    present, absent = sorted(v.present & set(ORGANS)), sorted(v.absent & set(ORGANS))
    return [(o, "yes") for o in present] + [(o, "no") for o in absent]


def _choice_keys(v: View) -> list[Hashable]:
    keys = []
    for a, b in ORGAN_PAIRS:
        if a in v.present and b in v.absent:
            keys.append(((a, b), a))
        elif b in v.present and a in v.absent:
            keys.append(((a, b), b))
    return keys


def _laterality_keys(v: View) -> list[Hashable]:
    # A mirrored image shows a mirrored patient, so its organ sits on the other side: the answer flips.
    sides = sorted((o, s) for o, s in v.sides.items() if o in ORGANS)
    return [(o, side) for o, s in sides for side in (s, OPPOSITE_SIDE[s])]


KEY_FUNCS: dict[str, Callable[[View], list[Hashable]]] = {
    "organ_presence": _presence_keys,
    "organ_choice": _choice_keys,
    "laterality": _laterality_keys,
    "modality": lambda v: [v.modality],
    "body_region": lambda v: [v.region] if v.region else [],
    "modality_open": lambda v: [v.modality],
    "body_region_open": lambda v: [v.region] if v.region else [],
}


def type_counts(n: int, split: str = "val") -> dict[str, int]:
    """Questions per type for ``split`` of ``n`` (largest remainder, so they sum to ``n``)."""
    raw = {t: n * w for t, w in TYPE_WEIGHTS[split].items()}
    counts = {t: int(r) for t, r in raw.items()}
    for t in sorted(raw, key=lambda t: counts[t] - raw[t])[: n - sum(counts.values())]:
        counts[t] += 1
    return counts


def answer_keys(views: list[View], qtype: str) -> dict[Hashable, dict[str, list[View]]]:
    """``key -> source -> views``: every key (organ and answer, truth...) the views can produce."""
    pools: dict[Hashable, dict[str, list[View]]] = defaultdict(lambda: defaultdict(list))
    for v in views:
        for k in KEY_FUNCS[qtype](v):
            pools[k][v.source].append(v)
    return pools


def key_pools(
    views: list[View], qtype: str, allowed: set[Hashable] | None = None
) -> dict[Hashable, dict[str, list[View]]]:
    """The balanced key set of one question type: ``key -> source -> views``.

    Args:
        views: the views of one split.
        qtype: question type.
        allowed: if given, keys outside it are dropped first (a held-out split keeps training's keys).

    Returns:
        Keys whose every alternative answer is also a key: both answers per organ or pair, and
        ``(truth, distractor)`` for every ordered pair of the truths of a two-option choice.
    """
    pools = answer_keys(views, qtype)
    if allowed is not None:
        pools = {k: p for k, p in pools.items() if k in allowed}
    if qtype in ("modality", "body_region"):
        truths = sorted(pools)
        return {(t, d): pools[t] for t in truths for d in truths if d != t}
    if qtype in ("organ_presence", "organ_choice", "laterality"):
        groups = defaultdict(set)
        for subject, answer in pools:
            groups[subject].add(answer)
        return {k: p for k, p in pools.items() if len(groups[k[0]]) == 2}
    return pools


def _ask(qtype: str, key: Hashable, view: View, rng: np.random.Generator, swap: bool) -> Planned:
    """Phrase one question; ``swap`` reverses the two options of a choice (balanced by the caller)."""
    template = TEMPLATES[qtype][rng.integers(len(TEMPLATES[qtype]))]
    flip = bool(rng.integers(2))
    if qtype == "organ_presence":
        organ, answer = key
        return Planned(view, qtype, template.format(organ=organ), answer, ("yes", "no"), flip)
    if qtype in OPEN_TYPES:
        return Planned(view, qtype, template, key, (), flip)
    if qtype == "laterality":
        organ, answer = key
        flip = answer != view.sides[organ]
        pair = ("left", "right")
        organ_fmt = {"organ": organ}
    elif qtype == "organ_choice":
        pair, answer = key
        organ_fmt = {}
    else:
        answer, distractor = key
        pair = (answer, distractor)
        organ_fmt = {}
    a, b = pair[::-1] if swap else pair
    return Planned(view, qtype, template.format(a=a, b=b, **organ_fmt), answer, (a, b), flip)


def plan_split(views: list[View], split: str, n: int, rng: np.random.Generator) -> list[Planned]:
    """Plan ``n`` answer-balanced samples from the views of ``split``, in shuffled order.

    A held-out split only uses keys the training split also has (e.g. the heart-or-liver choice needs
    training slices with the heart and without the liver), so everything it asks is learnable.

    Raises:
        ValueError: when a question type has no answerable key in ``split``.
    """
    train_views = [v for v in views if v.split == "train"]
    views = [v for v in views if v.split == split]
    planned: list[Planned] = []
    for qtype, count in type_counts(n, split).items():
        allowed = None if split in ("train", "reading") else set(key_pools(train_views, qtype))
        if allowed is not None and qtype in ("modality", "body_region"):
            allowed = {truth for truth, _ in allowed}
        pools = key_pools(views, qtype, allowed)
        if not pools and count:
            raise ValueError(f"demo split {split!r}: no view answers question type {qtype!r}")
        keys = sorted(pools, key=repr)
        order, offsets = rng.permutation(len(keys)), rng.integers(2, size=len(keys))
        for i in range(count):
            k = order[i % len(keys)]  # round-robin over keys; option order alternates per key
            sources = sorted(pools[keys[k]])
            candidates = pools[keys[k]][sources[rng.integers(len(sources))]]
            view = candidates[rng.integers(len(candidates))]
            planned.append(_ask(qtype, keys[k], view, rng, swap=bool((i // len(keys) + offsets[k]) % 2)))
    return [planned[i] for i in rng.permutation(len(planned))]
