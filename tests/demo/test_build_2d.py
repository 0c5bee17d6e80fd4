"""The real-scan 2D demo set: format, determinism, no train/val leakage, labels, answer balance."""

from __future__ import annotations

import json
from collections import Counter, defaultdict
from pathlib import Path

import nibabel as nib
import numpy as np
import pydicom
import pytest

from medmvl.assets import resolve_path
from medmvl.demo import sources as src
from medmvl.demo.build_2d import build_demo_2d, questions
from medmvl.demo.questions_2d import (
    CAPTION_ORGANS,
    OPEN_TYPES,
    READING_SOURCE,
    TYPE_WEIGHTS,
    caption,
    plan_split,
)

SMALL = {"seed": 0, "n_train": 120, "n_val": 60, "image_size": 32, "turns": 3, "n_reading": 60}


@pytest.fixture(scope="module")
def small(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_demo_2d(tmp_path_factory.mktemp("demo") / "a", **SMALL)


@pytest.fixture(scope="module")
def splits(small: Path) -> dict[str, list[dict]]:
    """The image records of each split (train.json's text-only reading records are in ``reading``)."""
    records = {s: json.loads((small / f"{s}.json").read_text()) for s in ("train", "val")}
    return {s: [r for r in rs if "image" in r] for s, rs in records.items()}


@pytest.fixture(scope="module")
def reading(small: Path) -> list[dict]:
    return [r for r in json.loads((small / "train.json").read_text()) if "image" not in r]


@pytest.fixture(scope="module")
def flat(splits: dict[str, list[dict]]) -> dict[str, list[dict]]:
    """One dict per question (multi-turn training records expanded), with its record's metadata."""
    return {split: [{**s, **q} for s in samples for q in questions(s)] for split, samples in splits.items()}


@pytest.fixture(scope="module")
def views() -> list[src.View]:
    return src.load_views()


@pytest.fixture(scope="module")
def mask_las() -> np.ndarray:
    """The TotalSegmentator mask in its file orientation (LAS), read independently of the builder."""
    img = nib.load(resolve_path(src.MASK_REF))
    assert nib.aff2axcodes(img.affine) == ("L", "A", "S")
    return np.asarray(img.dataobj).astype(np.int16)


def _files(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def test_same_seed_same_bytes_and_seed_matters(small: Path, tmp_path: Path) -> None:
    again = build_demo_2d(tmp_path / "b", **SMALL)
    assert _files(small) == _files(again)
    other = build_demo_2d(tmp_path / "c", **{**SMALL, "seed": 1, "n_train": 10, "n_val": 10})
    assert (other / "val.json").read_text() != (small / "val.json").read_text()


def test_reuses_a_matching_build_and_rebuilds_otherwise(small: Path, tmp_path: Path) -> None:
    stamp = (small / "meta.json").stat().st_mtime_ns
    assert build_demo_2d(small, **SMALL) == small
    assert (small / "meta.json").stat().st_mtime_ns == stamp
    foreign = tmp_path / "mine"
    foreign.mkdir()
    (foreign / "notes.txt").write_text("keep me")
    with pytest.raises(FileExistsError, match="mine"):
        build_demo_2d(foreign, n_train=2, n_val=2, image_size=8)


def test_llava_format(small: Path, splits: dict[str, list[dict]], flat: dict[str, list[dict]]) -> None:
    ids = set()
    for split, samples in splits.items():
        assert len(flat[split]) == SMALL[f"n_{split}"]
        turns = Counter(len(s["conversations"]) // 2 for s in samples)
        assert max(turns) == (SMALL["turns"] if split == "train" else 1), turns
        for s in samples:
            assert s["id"] not in ids
            ids.add(s["id"])
            conv = s["conversations"]
            assert [t["from"] for t in conv] == ["human", "gpt"] * (len(conv) // 2) and len(conv) % 2 == 0
            assert sum(t["value"].count("<image>") for t in conv) == len(s["image"]) == 1
            assert conv[0]["value"].startswith("<image>\n")
            if len(conv) == 2:
                assert conv[-1]["value"] == s["answer"]
            for q in questions(s):
                assert q["answer_type"] == ("open" if q["question_type"] in OPEN_TYPES else "closed")
                if q["answer_type"] == "closed":
                    assert q["answer"] in q["choices"] and len(q["choices"]) == 2
            img = small / s["image"][0]
            assert img.is_file() and img.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    schema = pytest.importorskip("medmvl.data.schema")
    for split in splits:
        schema.load_annotations(small / f"{split}.json")


def test_captions_pair_each_training_image_with_its_labels(
    small: Path, splits: dict[str, list[dict]], views: list[src.View]
) -> None:
    pairs = json.loads((small / "captions.json").read_text())
    assert [p["image"] for p in pairs] == [s["image"] for s in splits["train"]]
    by_key = {(v.source, v.index): v for v in views}
    for p in pairs:
        conv = p["conversations"]
        assert [t["from"] for t in conv] == ["human", "gpt"] and conv[0]["value"] == "<image>"
        view = by_key[(p["source"], p["source_index"])]
        assert conv[1]["value"] == caption(view, p["flipped"])
    pytest.importorskip("medmvl.data.schema").load_annotations(small / "captions.json")


def test_reading_records_ask_about_their_own_caption(small: Path, reading: list[dict]) -> None:
    """Text-only records: a caption with independent organ facts, then questions its sentences answer."""
    flat = [{**r, **q} for r in reading for q in questions(r)]
    assert len(flat) == SMALL["n_reading"] and all(r["source"] == READING_SOURCE for r in reading)
    meta = json.loads((small / "meta.json").read_text())["counts"]["reading"]
    assert meta["total"] == SMALL["n_reading"] and meta["conversations"] == len(reading)
    combos = set()
    for r in reading:
        first = r["conversations"][0]["value"]
        assert "<image>" not in json.dumps(r["conversations"])
        text, _ = first.split("\n", 1)
        sentences = dict(zip(CAPTION_ORGANS, text.split(". ")))
        if text.split(". ")[-1].startswith("CT"):
            combos.add(tuple(sentences[o].split()[-1] for o in CAPTION_ORGANS))
        for q in questions(r):
            organs = [o for o in CAPTION_ORGANS if f"the {o}" in q["question"]]
            if q["question_type"] == "organ_presence":
                assert ("absent" in sentences[organs[0]]) == (q["answer"] == "no")
            elif q["question_type"] == "laterality":
                assert sentences[organs[0]].endswith(f"on the {q['answer']}")
            elif q["question_type"] == "organ_choice":  # the one of the pair that is present
                assert "absent" not in sentences[q["answer"]]
            else:  # modality / body region: stated by the last sentence
                assert q["question_type"] in ("modality", "body_region")
                assert q["answer"] in text.split(". ")[-1]
    assert len(combos) >= 10  # facts drawn independently: many of the 27 status combinations occur
    pytest.importorskip("medmvl.data.schema").load_annotations(small / "train.json")


def test_caption_states_labels_at_fixed_positions(views: list[src.View]) -> None:
    ct = {v.index: v for v in views if v.source == src.CT_REF}
    text = caption(ct[28], flip=False)
    assert text.startswith("The liver is seen on the right. The heart is absent from this slice.")
    assert text.endswith("CT of the abdomen.")
    assert "The liver is seen on the left." in caption(ct[28], flip=True)
    # every organ sentence has 7 words (8 tokens) whatever its status: a fact has one position in all captions
    for v in views:
        words = caption(v, flip=False).split()
        assert len(words) >= 7 * len(CAPTION_ORGANS)
        for k, organ in enumerate(CAPTION_ORGANS):
            assert words[7 * k + 1] == organ and words[7 * k + 6].endswith(".")


def test_no_leakage_between_splits(splits: dict[str, list[dict]], flat: dict[str, list[dict]]) -> None:
    used = {split: {(s["source"], s["source_index"]) for s in samples} for split, samples in splits.items()}
    assert not used["train"] & used["val"]
    emri = src.PYDICOM_DATA + "emri_small.dcm"
    assert {ref for ref, _ in used["val"]} <= {src.CT_REF, emri}
    for ref, gap in ((src.CT_REF, src.Z_GAP), (emri, src.EMRI_GAP)):
        train_z = np.array([z for r, z in used["train"] if r == ref])
        for r, z in used["val"]:
            if r == ref:
                assert np.abs(train_z - z).min() > gap, (ref, z)
    # held-out material always has training material of the same modality
    trained = {s["answer"] for s in flat["train"] if s["question_type"] == "modality_open"}
    assert {s["answer"] for s in flat["val"] if s["question_type"] == "modality_open"} <= trained


def test_ct_labels_agree_with_the_mask(flat: dict[str, list[dict]], mask_las: np.ndarray) -> None:
    counts = np.stack(
        [np.bincount(mask_las[:, :, z].ravel(), minlength=256) for z in range(mask_las.shape[2])]
    )
    cord_i = {}
    for s in (s for ss in flat.values() for s in ss if s["source"] == src.CT_REF):
        z, text = s["source_index"], s["question"]
        sl = mask_las[:, :, z]  # [i: toward patient left, j: toward anterior]
        organ = next((o for o in src.ORGAN_LABELS if f"the {o}" in text), None)
        if s["question_type"] == "organ_presence":
            area = counts[:, list(src.ORGAN_LABELS[organ])].sum(1)  # [z]
            near = area[max(0, z - 3) : z + 4]
            assert (
                (area[z] >= 0.3 * area.max() and near.min() > 0) if s["answer"] == "yes" else near.max() == 0
            )
        elif s["question_type"] == "organ_choice":
            for o in s["choices"]:
                assert (np.isin(sl, src.ORGAN_LABELS[o]).sum() > 0) == (o == s["answer"]), (z, o)
        elif s["question_type"] == "laterality":
            cord_i.setdefault(z, np.nonzero(sl == src.SPINAL_CORD)[0].mean())
            on_left = (np.nonzero(np.isin(sl, src.ORGAN_LABELS[organ]))[0] > cord_i[z]).mean() > 0.5
            side = "left" if on_left else "right"
            assert s["answer"] == (("right" if side == "left" else "left") if s["flipped"] else side)


def test_display_is_radiological(views: list[src.View], mask_las: np.ndarray) -> None:
    ct = {v.index: v for v in views if v.source == src.CT_REF}
    assert ct[40].sides == {"spleen": "left", "stomach": "left"} and ct[28].sides["liver"] == "right"
    display = src.load_lps(src.MASK_REF)[:, :, 40].T  # [rows: anterior->posterior, cols: right->left]
    spleen_col = np.nonzero(display == 1)[1].mean()
    assert spleen_col > display.shape[1] / 2  # patient's left on the image right
    assert np.array_equal(display[::-1, :], mask_las[:, :, 40].T)  # only the A/P axis differs from LAS


def test_modality_and_region_match_dicom_tags(flat: dict[str, list[dict]]) -> None:
    tag_region = {"CHEST": "chest", "HEAD": "head"}
    headers: dict[str, pydicom.Dataset] = {}
    for s in (s for ss in flat.values() for s in ss if s["source"].startswith(src.PYDICOM_DATA)):
        if s["source"] not in headers:
            headers[s["source"]] = pydicom.dcmread(resolve_path(s["source"]), stop_before_pixels=True)
        ds = headers[s["source"]]
        if s["question_type"].startswith("modality"):
            assert s["answer"] == {"CT": "CT", "MR": "MRI", "CR": "X-ray", "US": "ultrasound"}[ds.Modality]
        if s["question_type"].startswith("body_region") and ds.get("BodyPartExamined") in tag_region:
            assert s["answer"] == tag_region[ds.BodyPartExamined]


def _group(s: dict) -> tuple:
    """What the text says about the question: its type, organ and options (never the answer)."""
    text = s["conversations"][0]["value"]
    organ = next((o for o in src.ORGAN_LABELS if f"the {o}" in text), None)
    return s["question_type"], organ, frozenset(s.get("choices", ()))


@pytest.mark.parametrize("split,n", [("train", 3000), ("val", 400)])
def test_default_size_plans_are_balanced(views: list[src.View], split: str, n: int) -> None:
    planned = plan_split(views, split, n, np.random.default_rng([0, 0 if split == "train" else 1]))
    samples = [{"question_type": p.question_type, "answer": p.answer, "choices": p.choices,
                "conversations": [{"value": p.question}]} for p in planned]  # fmt: skip
    weights = TYPE_WEIGHTS[split]
    assert Counter(s["question_type"] for s in samples) == {t: round(n * w) for t, w in weights.items()}
    per_group: dict[tuple, Counter] = defaultdict(Counter)
    first = Counter()
    for s in samples:
        per_group[_group(s)][s["answer"]] += 1
        if s["choices"] and s["choices"] != ("yes", "no"):
            first[s["choices"][0] == s["answer"]] += 1
    for group, answers in per_group.items():
        assert len(answers) >= (1 if group[0] in OPEN_TYPES else 2), group
        assert max(answers.values()) - min(answers.values()) <= 1, (group, answers)
    assert abs(first[True] - first[False]) <= 0.02 * n


def test_text_alone_is_at_chance_on_val(views: list[src.View]) -> None:
    """Answer each closed val question with train's most frequent answer for the same text: chance level."""
    by_text: dict[str, Counter] = defaultdict(Counter)
    for p in plan_split(views, "train", 3000, np.random.default_rng([0, 0])):
        by_text[p.question][p.answer] += 1
    val = plan_split(views, "val", 400, np.random.default_rng([0, 1]))
    closed = [p for p in val if p.question_type not in OPEN_TYPES]
    hits = sum(by_text[p.question].most_common(1)[0][0] == p.answer for p in closed if by_text[p.question])
    assert len(closed) == 336 and hits / len(closed) <= 0.6
