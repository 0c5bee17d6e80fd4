"""The 3D demo set: deterministic, split by z without leakage, labels from the mask, balanced answers."""

from __future__ import annotations

import json
from collections import Counter, defaultdict
from pathlib import Path

import numpy as np
import pytest
from hydra.utils import instantiate

from medmvl.cli.data import main as data_main
from medmvl.demo import build_3d as demo3d
from medmvl.demo import sources as src
from medmvl.demo.build_2d import questions
from medmvl.demo.build_3d import Demo3dDataModule
from medmvl.demo.captions_3d import CAPTION_ORGANS, caption_3d
from medmvl.demo.report import demo_report
from medmvl.inference import Generator
from medmvl.models.vlm import MedVLM
from tests.conftest import compose_train

PARAMS = {"seed": 0, "n_train": 36, "n_val": 18, "depth": 6, "volume_size": [16, 32, 32], "turns": 3}
pytestmark = pytest.mark.slow  # one small build from the real CT (~10-30 s on a loaded 2-core CPU)


@pytest.fixture(scope="module")
def small(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return demo3d.build_demo_3d(tmp_path_factory.mktemp("demo3d") / "build", **PARAMS)


@pytest.fixture(scope="module")
def splits(small: Path) -> dict[str, list[dict]]:
    return {s: json.loads((small / f"{s}.json").read_text()) for s in demo3d.SPLITS}


def test_same_seed_same_bytes_and_seed_matters(small: Path, tmp_path: Path) -> None:
    again = demo3d.build_demo_3d(tmp_path / "again", **PARAMS)
    for name in (
        "train.json",
        "val.json",
        "captions.json",
        "volumes/train/00003.npy",
        "volumes/val/00005.npy",
    ):
        assert (again / name).read_bytes() == (small / name).read_bytes(), name
    other = demo3d.build_demo_3d(tmp_path / "other", **{**PARAMS, "seed": 1, "n_val": 0})
    assert (other / "train.json").read_bytes() != (small / "train.json").read_bytes()


def test_reuses_a_matching_build(small: Path) -> None:
    stamp = (small / "train.json").stat().st_mtime_ns
    assert demo3d.build_demo_3d(small, **PARAMS) == small
    assert (small / "train.json").stat().st_mtime_ns == stamp


def test_llava_format_and_volumes(small: Path, splits: dict[str, list[dict]]) -> None:
    for split, samples in splits.items():
        assert len(samples) == PARAMS[f"n_{split}"]
        for s in samples:
            conv = s["conversations"]
            human, gpt = conv[:2]
            assert len(conv) % 2 == 0 and (split == "train" or len(conv) == 2)
            assert not any("<image3d>" in t["value"] for t in conv[1:])
            assert human["value"].startswith("<image3d>\n") and "<image>" not in human["value"]
            if len(conv) > 2:  # multi-turn: one entry per turn, no single answer
                assert len(s["question_type"]) == len(s["choices"]) == len(conv) // 2 and "answer" not in s
                assert all(t["answer"] in t["choices"] for t in questions(s))
            else:
                assert gpt["value"] == s["answer"] in s["choices"]
            vol = np.load(small / s["image3d"][0])
            assert vol.dtype == np.uint8 and vol.shape == tuple(PARAMS["volume_size"])
            assert vol.max() > 100  # windowed soft tissue, not an empty crop


def test_no_leakage_between_splits(splits: dict[str, list[dict]]) -> None:
    used = {s: set() for s in demo3d.SPLITS}
    for split, samples in splits.items():
        for s in samples:
            lo, hi = s["z_range"]
            assert hi - lo + 1 == PARAMS["depth"] and demo3d.z_split(lo, PARAMS["depth"]) == split
            used[split] |= set(range(lo, hi + 1))
    gap = min(abs(a - b) for a in used["train"] for b in used["val"])
    assert gap > demo3d.Z_GAP


def _raw_labels(s: dict, mask: np.ndarray, ref: dict[str, int]) -> tuple[dict, dict, dict]:
    """Counts, absent flags and sides recomputed straight from the label map (no demo3d helpers)."""
    lo, hi = s["z_range"]
    c = s["crop"]
    crop = mask[c["x0"] : c["x0"] + c["side"], c["y0"] : c["y0"] + c["side"], lo : hi + 1]
    wide = mask[:, :, max(0, lo - demo3d.Z_MARGIN) : hi + 1 + demo3d.Z_MARGIN]
    cord = np.nonzero(crop == src.SPINAL_CORD)[0].mean()
    counts, absent, sides = {}, {}, {}
    for organ, ids in src.ORGAN_LABELS.items():
        xs = np.nonzero(np.isin(crop, ids))[0]
        counts[organ], absent[organ] = len(xs), not np.isin(wide, ids).any()
        if len(xs):
            right = (xs < cord).mean()  # (L, P, S): x grows toward the patient's left
            side = "right" if right >= 0.85 else "left" if right <= 0.15 else None
            if side and s["flipped"]:
                side = {"left": "right", "right": "left"}[side]
            sides[organ] = side
    return counts, absent, sides


def test_labels_agree_with_the_mask(splits: dict[str, list[dict]]) -> None:
    """Every turn's answer, extra turns included, recomputed from the label map of the rendered crop."""
    mask = src.load_lps(src.MASK_REF)
    ref = demo3d.slab_reference(PARAMS["depth"])
    for samples in splits.values():
        for s in samples:
            counts, absent, sides = _raw_labels(s, mask, ref)
            named: list[str] = []
            for t in questions(s):
                q, answer = t["question"], t["answer"]
                if t["question_type"] == "organ_presence_3d":
                    organ = next(o for o in src.ORGAN_LABELS if o in q)
                    ok = counts[organ] >= 0.3 * ref[organ] if answer == "yes" else absent[organ]
                    assert ok, (s["id"], organ, counts[organ], ref[organ])
                    named.append(organ)
                elif t["question_type"] == "laterality_3d":
                    organ = next(o for o in src.LATERAL_ORGANS if o in q)
                    assert sides[organ] == answer, (s["id"], organ)
                    named.append(organ)
                else:
                    a, b = t["choices"]
                    small_one = b if answer == a else a
                    assert counts[answer] >= 1.5 * counts[small_one] > 0, s["id"]
                    named += [a, b]
            assert len(named) == len(set(named)), (s["id"], named)  # no organ asked twice


def test_mirrored_volume_is_the_mirror(small: Path, splits: dict[str, list[dict]]) -> None:
    """A flipped sample's soft tissue mass sits on the other side: the volume really is mirrored."""
    hu = src.load_lps(src.CT_REF)
    for s in splits["train"][:12]:
        lo, hi = s["z_range"]
        c = s["crop"]
        sub = hu[c["x0"] : c["x0"] + c["side"], c["y0"] : c["y0"] + c["side"], lo : hi + 1]
        profile = (sub > 0).mean((1, 2))  # [x] (patient right -> left), as the stored w axis
        vol = np.load(small / s["image3d"][0]).astype(np.float32)
        stored = (vol > 0.4 * 255).mean((0, 1))  # [w]
        ref = np.interp(np.linspace(0, 1, len(stored)), np.linspace(0, 1, len(profile)), profile)
        same, mirrored = np.corrcoef(stored, ref)[0, 1], np.corrcoef(stored, ref[::-1])[0, 1]
        assert (mirrored > same) == s["flipped"], (s["id"], same, mirrored)


def test_answers_are_balanced(splits: dict[str, list[dict]]) -> None:
    for samples in splits.values():
        per_subject: dict[tuple, Counter] = defaultdict(Counter)
        for s in samples:
            first = questions(s)[0]  # the planned question (extra training turns are not balanced)
            if first["question_type"] == "larger_3d":
                subject = tuple(sorted(first["choices"]))
            else:
                subject = next(o for o in src.ORGAN_LABELS if o in first["question"])
            per_subject[(first["question_type"], subject)][first["answer"]] += 1
        for key, answers in per_subject.items():
            assert len(answers) == 2 and max(answers.values()) - min(answers.values()) <= 1, (key, answers)
    train_keys = {(t["question_type"], t["answer"]) for s in splits["train"] for t in questions(s)}
    assert {(s["question_type"], s["answer"]) for s in splits["val"]} <= train_keys


def test_cli_builds_and_prints_counts(small: Path, capsys: pytest.CaptureFixture[str]) -> None:
    args = ["build-demo-3d", "--out", str(small), "--n-train", "36", "--n-val", "18"]
    assert data_main([*args, "--volume-size", "16", "32", "32", "--depth", "6", "--turns", "3"]) == 0
    out = capsys.readouterr().out.splitlines()
    assert out[0] == str(small) and out[1] == "train: 36 samples"


def test_datamodule_serves_image3d_batches(small: Path, tmp_path: Path) -> None:
    cfg = compose_train(
        [
            "data=demo_3d",
            f"data.root={small}",
            "data.n_train=36",
            "data.n_val=18",
            "data.turns=3",
            "data.volume_size=[16,32,32]",
            "data.num_workers=0",
            "data.batch_size=4",
        ],
        output_dir=tmp_path,
    )
    tokenizer = instantiate(cfg.llm.tokenizer)
    volume_config = {"volume_size": (16, 32, 32), "image_mean": (0.0,), "image_std": (1.0,), "channels": 1}
    dm = instantiate(cfg.data)(
        tokenizer=tokenizer,
        image_token_counts={"<image3d>": 8},
        image_config=None,
        volume_config=volume_config,
    )
    dm.prepare_data()
    dm.setup("fit")
    assert len(dm.train_set) == 36 and len(dm.val_set) == 18
    batch = next(iter(dm.train_dataloader()))
    assert batch["pixel_values_3d"].shape == (4, 1, 16, 32, 32) and batch["pixel_values"] is None
    assert 0.0 <= float(batch["pixel_values_3d"].min()) and float(batch["pixel_values_3d"].max()) <= 1.0
    assert int((batch["input_ids"] == tokenizer.convert_tokens_to_ids("<image3d>")).sum()) == 4 * 8


def test_demo_3d_experiment_composes(tmp_path: Path) -> None:
    cfg = compose_train(["experiment=demo_3d"], output_dir=tmp_path)
    assert cfg.data._target_.endswith("Demo3dDataModule") and cfg.llm.gguf_file.endswith(".gguf")
    assert list(cfg.encoder.backbone.config.img_size) == list(cfg.data.volume_size)
    assert cfg.encoder.volume == cfg.data.volume  # pre-training reads volumes as training does
    assert cfg.encoder.annotations == f"{cfg.data.root}/captions.json"
    assert {k: cfg.encoder.prepare[k] for k in PARAMS} == {k: cfg.data[k] for k in PARAMS}
    assert cfg.post_train._target_.endswith("demo_report")


def test_demo_report_reads_volumes_as_training_did(
    small: Path,
    tmp_path: Path,
    talkative_model_3d: MedVLM,  # noqa: F811 (the fixture imported above)
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The post_train report answers every held-out volume question with the volume read by
    ``data.volume`` (no foreground crop here), and again text-only."""
    model = talkative_model_3d
    dm = Demo3dDataModule(
        small,
        **PARAMS,
        max_length=256,
        volume={"intensity": "uint8", "crop_foreground": False},
        **model.data_parts(),
    )
    seen: list[dict] = []

    class Recording(Generator):
        def __init__(self, *args, **kwargs) -> None:  # noqa: ANN002, ANN003
            seen.append(kwargs)
            super().__init__(*args, **kwargs)

    monkeypatch.setattr("medmvl.demo.report.Generator", Recording)
    metrics = demo_report(model=model, datamodule=dm, output_dir=tmp_path, batch_size=9, max_new_tokens=2)
    assert seen[0]["volume_options"] == {"intensity": "uint8", "crop_foreground": False}
    assert metrics["n_closed"] == PARAMS["n_val"] and metrics["chance_accuracy"] == 0.5
    rows = json.loads((tmp_path / "demo_predictions.json").read_text())
    assert [r["id"] for r in rows] == [f"demo3d-val-{i:05d}" for i in range(PARAMS["n_val"])]


def test_heldout_larger_questions_exist_both_ways(splits: dict[str, list[dict]]) -> None:
    """The interleaved z-blocks give held-out "which is larger" questions (liver vs lungs), both answers."""
    larger = [s for s in splits["val"] if s["question_type"] == "larger_3d"]
    assert larger and {tuple(sorted(s["choices"])) for s in larger} == {("liver", "lungs")}
    assert {s["answer"] for s in larger} == {"liver", "lungs"}
    train = [t for s in splits["train"] for t in questions(s) if t["question_type"] == "larger_3d"]
    assert {t["answer"] for t in train if sorted(t["choices"]) == ["liver", "lungs"]} == {"liver", "lungs"}


def test_captions_describe_each_training_volume(small: Path, splits: dict[str, list[dict]]) -> None:
    """One caption per training volume (none for held-out ones), from the same labels as the questions,
    each organ's sentence at the same token positions whatever its status."""
    captions = json.loads((small / "captions.json").read_text())
    train = splits["train"]
    assert [c["image3d"] for c in captions] == [s["image3d"] for s in train]
    assert not {c["image3d"][0] for c in captions} & {s["image3d"][0] for s in splits["val"]}
    lengths = defaultdict(set)
    for c, s in zip(captions, train):
        assert c["conversations"][0]["value"] == "<image3d>"
        text = c["conversations"][1]["value"]
        z0, z1 = s["z_range"]
        crop = s["crop"]
        render = demo3d.Render(z0, z1 - z0 + 1, crop["x0"], crop["y0"], crop["side"], s["flipped"])
        assert text == caption_3d(demo3d.labels(render))
        for t in questions(s):
            q, a = t["question"], t["answer"]
            if t["question_type"] == "organ_presence_3d":
                organ = _organ(q)
                assert (f"The {organ} is seen" in text or f"The {organ} are seen" in text) == (a == "yes")
            elif t["question_type"] == "laterality_3d":
                assert text.split(". ")[CAPTION_ORGANS.index(_organ(q))].endswith(f"seen on the {a}")
            else:
                largest = text.rsplit("The largest is the ", 1)[1].rstrip(".")
                assert largest in CAPTION_ORGANS and (largest == a or largest not in t["choices"])
        for k, sentence in enumerate(text.split(". ")[: len(CAPTION_ORGANS)]):
            lengths[k].add(len(sentence.split()))
    assert all(len(n) == 1 for n in lengths.values()), lengths


def _organ(question: str) -> str:
    return next(o for o in CAPTION_ORGANS if f"the {o}" in question)
