"""Short reports of the 3D demo's sub-volumes, their organ labels, and a labeller that reads them back.

Why: the CT report pipeline (a volume in, a free-text report out, scored by CT-RATE's NLG metrics and
label precision / recall / F1 / CRG, ``protocol=ct_rate``) must run end to end offline on real CT, not
only on a benchmark's download. ``report_3d`` writes a report of one rendering from its mask labels
(``demo3d.labels``): one sentence per settled organ of ``CAPTION_ORGANS`` (``The liver is seen on the
right.`` / ``The kidneys are seen.`` / ``No heart is seen.``; an organ neither clearly present nor absent
is left out), then ``The largest organ is the liver.``. ``organ_labels`` is the matching report labeller
(CT-RATE's labels are abnormalities found by a text classifier; here they are organs found by the
sentence pattern): ``protocol.labeller`` in ``conf/experiment/demo_3d_report.yaml``.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from typing import Any

from medmvl.demo.captions_3d import CAPTION_ORGANS, PLURAL

QUESTION_TYPE = "report_3d"
PROMPTS = (
    "Write a short report of this CT volume.",
    "Describe the organs in this CT volume.",
    "Report the findings of this scan.",
)
_SEEN = {organ: re.compile(rf"\bthe {organ} (?:is|are) seen\b", re.IGNORECASE) for organ in CAPTION_ORGANS}


def report_3d(lab: dict[str, Any]) -> str:
    """The report of one rendering from its labels (sides as shown, i.e. already mirrored)."""
    sentences = []
    for organ in CAPTION_ORGANS:
        verb = "are" if organ in PLURAL else "is"
        if organ in lab["present"]:
            side = lab["sides"].get(organ)
            sentences.append(f"The {organ} {verb} seen" + (f" on the {side}." if side else "."))
        elif organ in lab["absent"]:
            sentences.append(f"No {organ} {verb} seen.")
    visible = [o for o in CAPTION_ORGANS if o in lab["visible"]]
    if visible:
        sentences.append(f"The largest organ is the {max(visible, key=lambda o: lab['counts'][o])}.")
    return " ".join(sentences)


def report_labels(lab: dict[str, Any]) -> dict[str, int]:
    """``{organ: 1 if present else 0}`` of one rendering: the ground truth of ``organ_labels``."""
    return {organ: int(organ in lab["present"]) for organ in CAPTION_ORGANS}


def organ_labels(reports: Sequence[str]) -> list[dict[str, int]]:
    """The report labeller: per report, ``{organ: 1}`` where it says "the <organ> is/are seen", else 0."""
    return [{organ: int(bool(p.search(text))) for organ, p in _SEEN.items()} for text in reports]


def report_record(sample: dict[str, Any], lab: dict[str, Any], i: int) -> dict[str, Any]:
    """The report question about a sample's volume (same file): an open question with its organ labels."""
    report = report_3d(lab)
    return {
        "id": sample["id"].replace("demo3d-", "demo3d-report-"),
        "image3d": list(sample["image3d"]),
        "conversations": [
            {"from": "human", "value": f"<image3d>\n{PROMPTS[i % len(PROMPTS)]}"},
            {"from": "gpt", "value": report},
        ],
        "question_type": QUESTION_TYPE,
        "answer_type": "open",
        "answer": report,
        "labels": report_labels(lab),
        "source": sample["source"],
        "z_range": sample["z_range"],
        "crop": sample["crop"],
        "flipped": sample["flipped"],
    }
