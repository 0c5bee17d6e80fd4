"""CT-RATE: CT2Rep's report cleaning, labels from CSVs, the CRG score."""

from __future__ import annotations

from pathlib import Path

import pytest

from medmvl.data.schema import AnnotationError
from medmvl.evaluation.protocols.ct_rate import NO_LABELLER, CtRateProtocol, clean_report
from medmvl.evaluation.protocols.labels import crg_score, label_metrics, read_labels
from tests.unit.evaluation.protocols.conftest import row


def test_clean_report() -> None:
    assert clean_report("1. Heart normal.  2. No effusion (left)!") == "heart normal . no effusion left ."
    assert clean_report("Size: 5 mm <3>") == "size 5 mm 3 ."  # ":"..."[" is a range: "<", ">" go too


def test_crg_worked_example() -> None:
    # T = 20 entries, A = 4 positives: w = 16 / 8 = 2, S_max = 8; TP 3, FN 1, FP 2: s = 6 - 2 - 2 = 2
    assert crg_score(3, 1, 2, 20) == pytest.approx(8 / 14)
    assert crg_score(4, 0, 0, 20) == 1.0
    assert crg_score(0, 4, 0, 20) == pytest.approx(1 / 3) == crg_score(4, 0, 16, 20)
    assert crg_score(0, 0, 3, 20) is None


def _csv(path: Path, rows: list[str]) -> Path:
    path.write_text("VolumeName,Nodule,Effusion\n" + "\n".join(rows) + "\n")
    return path


def test_label_metrics_from_csvs(tmp_path: Path) -> None:
    truth = read_labels(_csv(tmp_path / "gt.csv", ["a,1,0", "b,1,1", "c,0,0"]), "VolumeName")
    pred = read_labels(_csv(tmp_path / "pred.csv", ["a,1,1", "b,0,1", "c,0,0"]), "VolumeName")
    out = label_metrics(pred, truth)
    # Nodule: TP 1, FN 1 -> P 1, R 0.5; Effusion: TP 1, FP 1 -> P 0.5, R 1
    assert out["label_precision"] == 0.75 and out["label_recall"] == 0.75
    # T = 6, A = 3: w = 0.5, S_max = 1.5, s = 2 * 0.5 - 0.5 - 1 = -0.5, CRG = 1.5 / 3.5
    assert out["crg"] == pytest.approx(1.5 / 3.5)
    with pytest.raises(AnnotationError, match="not in the ground-truth"):
        label_metrics({"z": {"Nodule": 1}}, truth)
    with pytest.raises(AnnotationError, match="line 2, column 'Nodule'"):
        read_labels(_csv(tmp_path / "bad.csv", ["a,x,0"]), "VolumeName")


@pytest.mark.slow  # pycocoevalcap's METEOR starts a JVM (~4 s)
def test_without_labels_the_label_metrics_say_so() -> None:
    protocol = CtRateProtocol()
    report, _ = protocol.evaluate([row("heart normal.", "heart normal.")])
    assert report["overall"]["crg"] is None and protocol.unavailable()["crg"] == NO_LABELLER
    assert report["overall"]["bleu1"] == pytest.approx(1.0)


def test_a_labeller_that_fails_is_named() -> None:
    protocol = CtRateProtocol(labeller={"_target_": "no.such.Labeller"})
    protocol.evaluate([row("a", "b", "closed")])  # no report: no NLG metrics, no JVM
    assert protocol.unavailable()["label_f1"].startswith("labeller not available: ")
