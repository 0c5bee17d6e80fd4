"""Tiny releases of the eight benchmarks, each in its download's exact layout, written under ``root``.

``write_<benchmark>(root)`` writes the release folder (the ``data.root`` / ``medmvl-data convert`` source)
under ``root`` and returns it. The converter tests (``test_<benchmark>.py``) check every record and bad
row of these files; ``tests/integration/test_benchmark_command.py`` runs ``evaluate.py benchmark=<name>``
on them. Some hold deliberate bad rows (noted per function), which ``skip_bad=True`` skips.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from .helpers import jpeg_bytes, npy, png, write_csv, write_json

# VQA-RAD (OSF): one JSON list, images in "VQA_RAD Image Folder"
VQA_RAD_IMAGES = "VQA_RAD Image Folder"


def vqa_rad_entry(qid, image, question, answer, answer_type, phrase_type, question_type="PRES"):
    """A row of ``VQA_RAD Dataset Public.json``, every key of the release."""
    return {
        "qid": qid,
        "phrase_type": phrase_type,
        "qid_linked_id": f"{qid:05d}",
        "image_case_url": "https://medpix.nlm.nih.gov/case?id=x",
        "image_name": image,
        "image_organ": "CHEST",
        "evaluation": "evaluated",
        "question": question,
        "question_rephrase": "NULL",
        "question_relation": "NULL",
        "question_frame": "NULL",
        "question_type": question_type,
        "answer": answer,
        "answer_type": answer_type,
    }


def write_vqa_rad(root: Path) -> Path:
    """``root/VQA_RAD``: two train rows (freeform, para) and two test rows (test_freeform, test_para)."""
    src = root / "VQA_RAD"
    png(src / VQA_RAD_IMAGES / "synpic100.jpg")
    png(src / VQA_RAD_IMAGES / "synpic200.jpg", 30)
    entries = [
        vqa_rad_entry(1, "synpic100.jpg", "Is there a pneumothorax?", "Yes", "CLOSED", "freeform"),
        vqa_rad_entry(2, "synpic100.jpg", "What organ is shown?", "lungs", "OPEN", "para", "ORGAN"),
        vqa_rad_entry(3, "synpic200.jpg", "How many ribs are broken?", 2, "OPEN", "test_freeform", "COUNT"),
        vqa_rad_entry(4, "synpic200.jpg", "Is this an MRI?", "no", "CLOSED", "test_para", "MODALITY"),
    ]
    write_json(src / "VQA_RAD Dataset Public.json", entries)
    return src


# SLAKE (Slake1.0): train / validate / test JSON lists, images in imgs/xmlab<n>/source.jpg
def slake_entry(qid, img_id, question, answer, lang, answer_type="OPEN"):
    """A row of a Slake1.0 split file, every key of the release."""
    return {
        "img_id": img_id,
        "img_name": f"xmlab{img_id}/source.jpg",
        "question": question,
        "answer": answer,
        "q_lang": lang,
        "location": "Lung",
        "modality": "X-Ray",
        "answer_type": answer_type,
        "base_type": "vqa",
        "content_type": "Organ",
        "triple": ["vhead", "_", "_"],
        "qid": qid,
    }


def write_slake(root: Path) -> Path:
    """``root/Slake1.0``: train (one English, one Chinese row), validate (closed) and test (open)."""
    src = root / "Slake1.0"
    for img in (1, 2):
        png(src / "imgs" / f"xmlab{img}" / "source.jpg", img * 50)
    write_json(
        src / "train.json",
        [
            slake_entry(0, 1, "Which organ is abnormal?", "Lung", "en"),
            slake_entry(1, 1, "哪个器官异常?", "肺", "zh"),
        ],
    )
    write_json(src / "validate.json", [slake_entry(10, 2, "Is the lung healthy?", "No", "en", "CLOSED")])
    write_json(src / "test.json", [slake_entry(20, 2, "What modality is used?", "X-Ray", "en")])
    return src


# PathVQA (HF parquet): data/<split>-00000-of-00001.parquet with the image bytes inside
def path_vqa_parquet(path: Path, rows: list[tuple[bytes, str, str]]) -> None:
    """A PathVQA parquet shard of ``(image bytes, question, answer)`` rows."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    path.parent.mkdir(parents=True, exist_ok=True)
    image = pa.struct([("bytes", pa.binary()), ("path", pa.string())])
    table = pa.table(
        {
            "image": pa.array([{"bytes": b, "path": None} for b, _, _ in rows], type=image),
            "question": [q for _, q, _ in rows],
            "answer": [a for _, _, a in rows],
        }
    )
    pq.write_table(table, path)


def write_path_vqa(root: Path) -> Path:
    """``root/path-vqa``: train (open + closed on one image), validation (closed), test (open)."""
    src = root / "path-vqa"
    one, two = jpeg_bytes(10), jpeg_bytes(200)
    path_vqa_parquet(
        src / "data/train-00000-of-00001.parquet",
        [(one, "what is present?", "fibrosis"), (one, "is this tissue normal?", "no")],
    )
    path_vqa_parquet(
        src / "data/validation-00000-of-00001.parquet", [(two, "does this show necrosis?", "yes")]
    )
    path_vqa_parquet(src / "data/test-00000-of-00001.parquet", [(two, "where is this from?", "liver")])
    return src


# PMC-VQA (HF): train.csv / test.csv, images in images/
PMC_VQA_HEADER = [
    "Figure_path",
    "Question",
    "Answer",
    "Choice A",
    "Choice B",
    "Choice C",
    "Choice D",
    "Answer_label",
]
PMC_VQA_ROW = [
    "PMC1064097_F1.jpg",
    "What is the uptake pattern in the breast?",
    "Focal uptake pattern",
    "A:Diffuse uptake pattern",
    "B:Focal uptake pattern",
    "C:No uptake pattern",
    "D:Cannot determine from the information given",
    "B",
]


def write_pmc_vqa(root: Path) -> Path:
    """``root/PMC-VQA``: one train row; test: that row, then two bad rows (label ``E``, missing image)."""
    src = root / "PMC-VQA"
    png(src / "images/PMC1064097_F1.jpg")
    write_csv(src / "train.csv", PMC_VQA_HEADER, [PMC_VQA_ROW])
    write_csv(
        src / "test.csv",
        PMC_VQA_HEADER,
        [PMC_VQA_ROW, [*PMC_VQA_ROW[:7], "E"], ["missing.jpg", *PMC_VQA_ROW[1:]]],
    )
    return src


# OmniMedVQA: QA_information/<access>/<dataset>.json, images in Images/<dataset>/
def omnimedvqa_qa(qid, image, gt, options, dataset="ACRIMA"):
    """A question of an OmniMedVQA ``QA_information`` file, options A.. from ``options``."""
    entry: dict[str, Any] = {
        "dataset": dataset,
        "question_id": qid,
        "question_type": "Disease Diagnosis",
        "question": "What is the diagnosis?",
        "gt_answer": gt,
        "image_path": image,
        "modality_type": "Fundus Photography",
    }
    entry.update({f"option_{letter}": option for letter, option in zip("ABCD", options)})
    return entry


def write_omnimedvqa(root: Path) -> Path:
    """``root/OmniMedVQA``: two open-access ACRIMA questions (four options, two options)."""
    src = root / "OmniMedVQA"
    png(src / "Images/ACRIMA/Im001.png")
    write_json(
        src / "QA_information/Open-access/ACRIMA.json",
        [
            omnimedvqa_qa(
                "ACRIMA_0001",
                "Images/ACRIMA/Im001.png",
                "Glaucoma",
                ["Normal", "Glaucoma", "Cataract", "Myopia"],
            ),
            omnimedvqa_qa("ACRIMA_0002", "Images/ACRIMA/Im001.png", "No", ["Yes", "No"]),
        ],
    )
    return src


# M3D (M3D-VQA and M3D-Cap share M3D's data root and its prepared .npy volumes)
M3D_VQA_HEADER = [
    "Image Path", "Text", "Question Type", "Question",
    "Choice A", "Choice B", "Choice C", "Choice D", "Answer", "Answer Choice",
]  # fmt: skip
M3D_VOLUME = "M3D_Cap_npy/ct_case/000006/Axial_non_contrast.npy"


def write_m3d_vqa(root: Path) -> Path:
    """``root/data``: M3D-VQA's test CSV, one row (-> closed + open) and a bad row (missing volume)."""
    src = root / "data"
    npy(src / M3D_VOLUME)
    row = [M3D_VOLUME, "report text", "Plane", "In which plane is the image?", "Sagittal", "Coronal", "Axial",
           "Oblique", "Axial", "C"]  # fmt: skip
    write_csv(src / "M3D-VQA/M3D_VQA_test.csv", M3D_VQA_HEADER, [row, ["missing.npy", *row[1:]]])
    return src


def write_m3d_cap(root: Path, test_caption: bool = False) -> Path:
    """``root/data``: M3D_Cap.json with a train caption, no validation and one test row whose caption
    file (``none.txt``) is missing — a bad row — unless ``test_caption`` writes it."""
    src = root / "data"
    npy(src / M3D_VOLUME)
    (src / "M3D_Cap_npy/ct_case/000006/text.txt").write_text("Large liver cyst.\n")
    if test_caption:
        (src / "M3D_Cap_npy/ct_case/000006/none.txt").write_text("Small renal cyst.\n")
    write_json(
        src / "M3D_Cap/M3D_Cap.json",
        {
            "train": [{"image": M3D_VOLUME, "text": "M3D_Cap_npy/ct_case/000006/text.txt"}],
            "validation": [],
            "test": [{"image": M3D_VOLUME, "text": "M3D_Cap_npy/ct_case/000006/none.txt"}],
        },
    )
    return src


# CT-RATE (HF dataset/): .nii.gz volumes, radiology_text_reports/ and multi_abnormality_labels/ CSVs
CT_RATE_LABELS = ["Medical material", "Arterial wall calcification", "Cardiomegaly"]
CT_RATE_REPORT_HEADER = [
    "VolumeName",
    "ClinicalInformation_EN",
    "Technique_EN",
    "Findings_EN",
    "Impressions_EN",
]


def ct_rate_nii(path: Path, hu: bool = False) -> None:
    """A ``4x4x2`` int16 volume as ``.nii.gz``: zeros, or with ``hu`` a ramp from -1000 (air) to 400 HU."""
    import nibabel as nib

    path.parent.mkdir(parents=True, exist_ok=True)
    voxels = (
        np.linspace(-1000, 400, 32).astype(np.int16).reshape(4, 4, 2) if hu else np.zeros((4, 4, 2), np.int16)
    )
    nib.save(nib.Nifti1Image(voxels, np.eye(4)), path)


def write_ct_rate(root: Path, hu: bool = False) -> Path:
    """``root/dataset``: one train volume; valid: ``valid_1_a_2`` (findings ``Not given.``, an impression)
    and ``valid_2_a_1`` (a bad row: no volume, no labels row); labels CSVs for both splits. The volumes
    are zeros, which inference refuses as blank, unless ``hu`` (``ct_rate_nii``)."""
    src = root / "dataset"
    ct_rate_nii(src / "train/train_1/train_1_a/train_1_a_1.nii.gz", hu)
    ct_rate_nii(src / "valid/valid_1/valid_1_a/valid_1_a_2.nii.gz", hu)
    reports = src / "radiology_text_reports"
    write_csv(reports / "train_reports.csv", CT_RATE_REPORT_HEADER,
              [["train_1_a_1.nii.gz", "Cough.", "Non-contrast.", "Heart size is increased.", "Cardiomegaly."]])  # fmt: skip
    write_csv(reports / "validation_reports.csv", CT_RATE_REPORT_HEADER,
              [["valid_1_a_2.nii.gz", "Not given.", "Non-contrast.", "Not given.", "Normal study."],
               ["valid_2_a_1.nii.gz", "", "", "Lungs clear.", "Normal."]])  # fmt: skip
    labels = src / "multi_abnormality_labels"
    write_csv(
        labels / "train_predicted_labels.csv",
        ["VolumeName", *CT_RATE_LABELS],
        [["train_1_a_1.nii.gz", 0, 1, 1]],
    )
    write_csv(
        labels / "valid_predicted_labels.csv",
        ["VolumeName", *CT_RATE_LABELS],
        [["valid_1_a_2.nii.gz", 0, 0, 0]],
    )
    return src


WRITERS = {
    "vqa_rad": write_vqa_rad,
    "slake": write_slake,
    "path_vqa": write_path_vqa,
    "pmc_vqa": write_pmc_vqa,
    "omnimedvqa": write_omnimedvqa,
    "m3d_vqa": write_m3d_vqa,
    "m3d_cap": write_m3d_cap,
    "ct_rate": write_ct_rate,
}
"""``benchmark name -> write_<name>``."""
