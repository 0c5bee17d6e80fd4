"""The bad-input corpus: small files that each break one rule, and what medmvl must say about them.

Every case writes ``ann.json`` (and its media) into a folder: a good sample ``good`` at index 0 and the
bad one at index 1 (id ``bad`` unless the case is about ids). ``phase`` says where it is caught:

* ``file``  the whole file is unusable: an error even with ``on_error=skip``;
* ``load``  the sample is rejected when the dataset is built (``dataset.skipped`` under skip);
* ``read``  its image/volume fails to decode in ``__getitem__`` (``None`` under skip, counted by the
  collator);
* ``warn``  a warning only (unknown keys are kept compatible with MedM-VL files that carry metadata).
"""

from __future__ import annotations

import json
import struct
import zlib
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import nibabel as nib
import numpy as np
from PIL import Image
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import ExplicitVRLittleEndian, generate_uid

GOOD_PNG = "good.png"


def turn(role: str, value: Any) -> dict[str, Any]:
    return {"from": role, "value": value}


def sample(
    sid: Any, images: list[str] | None = None, *, image3d: list[str] | None = None, **extra: Any
) -> dict:
    """A one-question sample with one placeholder per path."""
    prefix = "<image>\n" * len(images or []) + "<image3d>\n" * len(image3d or [])
    record: dict[str, Any] = {
        "id": sid,
        "conversations": [turn("human", prefix + "What is shown?"), turn("gpt", "A scan.")],
    }
    if images:
        record["image"] = images
    if image3d:
        record["image3d"] = image3d
    record.update(extra)
    return record


def good() -> dict:
    return sample("good", [GOOD_PNG])


def png(path: Path, value: int = 128, size: int = 8) -> None:
    Image.fromarray(np.full((size, size), value, dtype=np.uint8)).save(path)


def nifti(path: Path, arr: np.ndarray) -> None:
    nib.Nifti1Image(arr, np.eye(4)).to_filename(path)


def _chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))


def png_bomb(path: Path, side: int = 100_000) -> None:
    """A 60-byte PNG whose header claims ``side`` x ``side`` pixels (10 G for the default)."""
    ihdr = struct.pack(">IIBBBBB", side, side, 1, 0, 0, 0, 0)  # 1-bit grey
    idat = zlib.compress(b"\x00" * 64)
    path.write_bytes(
        b"\x89PNG\r\n\x1a\n" + _chunk(b"IHDR", ihdr) + _chunk(b"IDAT", idat) + _chunk(b"IEND", b"")
    )


def dicom_without_pixels(path: Path) -> None:
    """A Basic Text SR: a valid DICOM file with no image in it."""
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = "1.2.840.10008.5.1.4.1.1.88.11"
    meta.MediaStorageSOPInstanceUID = generate_uid()
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = Dataset()
    ds.file_meta = meta
    ds.SOPClassUID, ds.SOPInstanceUID = meta.MediaStorageSOPClassUID, meta.MediaStorageSOPInstanceUID
    ds.Modality, ds.PatientID = "SR", "anon"
    ds.save_as(path, enforce_file_format=True)


def volume(rng_seed: int = 0) -> np.ndarray:
    return np.random.default_rng(rng_seed).uniform(-1000, 1000, (8, 8, 6)).astype(np.float32)


@dataclass(frozen=True)
class Case:
    """One corpus entry.

    Attributes:
        name: Test id.
        write: Writes the media into the folder and returns the JSON text of ``ann.json``.
        match: Regex the error (or warning) must contain: the reason.
        phase: ``file`` | ``load`` | ``read`` | ``warn`` (see the module docstring).
        sid: The id the message must name (``None``: no id can be read).
        code: ``Problem.code`` of the rejection (``load``, and ``read`` in ``medmvl-data check``).
        in_check: Whether ``medmvl-data check --images`` reports it (token length needs a tokenizer).
        volumes: Needs the 3D volume transform.
    """

    name: str
    write: Callable[[Path], str]
    match: str
    phase: str
    sid: str | None = "bad"
    code: str | None = None
    in_check: bool = True
    volumes: bool = False


def records(*items: Any) -> Callable[[Path], str]:
    """A writer for plain records (media: the good PNG only)."""

    def write(folder: Path) -> str:
        png(folder / GOOD_PNG)
        return json.dumps([good(), *items])

    return write


def with_media(bad: dict, make: Callable[[Path], None]) -> Callable[[Path], str]:
    """A writer for a bad sample whose media ``make`` writes into the folder."""

    def write(folder: Path) -> str:
        png(folder / GOOD_PNG)
        make(folder)
        return json.dumps([good(), bad])

    return write


def raw_text(text: str | bytes) -> Callable[[Path], str | bytes]:
    return lambda folder: text


def _truncated_png(folder: Path) -> None:
    png(folder / "t.png", size=64)
    data = (folder / "t.png").read_bytes()
    (folder / "t.png").write_bytes(data[: len(data) // 2])


def _nan_tiff(folder: Path) -> None:
    arr = np.linspace(0, 1, 64, dtype=np.float32).reshape(8, 8)
    arr[3, 3] = np.nan
    Image.fromarray(arr, mode="F").save(folder / "nan.tiff")


def _truncated_nifti(folder: Path) -> None:
    nifti(folder / "t.nii", volume())
    data = (folder / "t.nii").read_bytes()
    (folder / "t.nii").write_bytes(data[: len(data) // 2])


def _nan_nifti(folder: Path) -> None:
    arr = volume()
    arr[2, 3, 4] = np.nan
    nifti(folder / "nan.nii.gz", arr)


def _inf_npy(folder: Path) -> None:
    arr = volume()[None]
    arr[0, 1, 1, 1] = np.inf
    np.save(folder / "inf.npy", arr)


CASES: list[Case] = [
    # whole file
    Case(
        "malformed_json",
        raw_text('[{"id": "a", "conversations": ['),
        r"not valid JSON \(.*line 1",
        "file",
        None,
    ),
    Case("not_a_list", raw_text('{"id": "a"}'), "expected a JSON list of samples, got dict", "file", None),
    Case(
        "non_utf8",
        raw_text('[{"id": "caf\xe9"}]'.encode("latin-1")),
        r"not UTF-8 text: byte 0xe9",
        "file",
        None,
    ),
    Case("empty_file", raw_text(""), "empty file", "file", None),
    Case("no_samples", raw_text("[]"), "holds no samples|no usable samples", "file", None, code="empty"),
    # one sample, rejected when the dataset is built
    Case(
        "missing_conversations",
        records({"id": "bad", "image": []}),
        "'conversations'.*expected a non-empty list of turns",
        "load",
        code="turns",
    ),
    Case(
        "wrong_role_order",
        records({"id": "bad", "conversations": [turn("gpt", "A."), turn("human", "Q?")]}),
        r"conversations\[0\]\.from.*expected 'human'",
        "load",
        code="turns",
    ),
    Case(
        "empty_turn",
        records({"id": "bad", "conversations": [turn("human", "Q?"), turn("gpt", "   ")]}),
        r"conversations\[1\]\.value.*expected a non-empty string",
        "load",
        code="turns",
    ),
    Case(
        "no_answer",
        records({"id": "bad", "conversations": [turn("human", "Q?")]}),
        "last turn to be 'gpt'",
        "load",
        code="no_answer",
    ),
    Case(
        "turn_not_object",
        records({"id": "bad", "conversations": ["Q?", "A."]}),
        r"conversations\[0\].*expected an object with 'from' and 'value'",
        "load",
        code="turns",
    ),
    Case(
        "non_string_value",
        records({"id": "bad", "conversations": [turn("human", 42), turn("gpt", "A.")]}),
        r"conversations\[0\]\.value.*expected a non-empty string, got 42",
        "load",
        code="turns",
    ),
    Case(
        "image_count_mismatch",
        records({**sample("bad", [GOOD_PNG]), "image": [GOOD_PNG, GOOD_PNG]}),
        r"'image'.*2 path\(s\) but 1 <image> placeholder",
        "load",
        code="image_count",
    ),
    Case(
        "placeholder_in_answer",
        records({"id": "bad", "conversations": [turn("human", "Q?"), turn("gpt", "<image> A.")]}),
        "may only appear in human turns",
        "load",
        code="placeholder",
    ),
    Case(
        "image_not_a_list",
        records({**sample("bad"), "image": {"path": GOOD_PNG}}),
        "'image'.*expected a path or a list of non-empty path strings",
        "load",
        code="paths",
    ),
    Case(
        "bad_id",
        records(sample(None)),
        "'id'.*expected a non-empty string or integer, got None",
        "load",
        None,
        "id",
    ),
    Case(
        "duplicate_id",
        records(sample("good")),
        r"duplicate id \(first used by sample 0\)",
        "load",
        "good",
        "duplicate_id",
    ),
    Case(
        "not_an_object", records("just text"), "expected a JSON object, got str", "load", None, "not_object"
    ),
    Case(
        "unpaired_surrogate",
        lambda folder: (
            records()(folder).removesuffix("]") + ', {"id": "bad", "conversations": '
            '[{"from": "human", "value": "Q \\ud800?"}, {"from": "gpt", "value": "A."}]}]'
        ),
        r"unpaired surrogate '\\ud800' at character 2",
        "load",
        code="unicode",
    ),
    Case(
        "missing_file",
        records(sample("bad", ["nope.png"])),
        r"image file .*nope\.png' does not exist",
        "load",
        code="missing_image",
    ),
    Case(
        "path_escapes_image_dir",
        records(sample("bad", ["../outside.png"])),
        r"path '\.\./outside\.png' leaves image_dir",
        "load",
        code="path_escape",
    ),
    Case(
        "too_long_for_max_length",
        records(sample("bad", conversations=[turn("human", "why " * 300), turn("gpt", "A.")])),
        r"tokens exceed max_length=128",
        "load",
        code="too_long",
        in_check=False,
    ),
    # one sample, its file fails to decode
    Case(
        "corrupt_png",
        with_media(sample("bad", ["c.png"]), lambda f: (f / "c.png").write_bytes(b"no png")),
        r"cannot read image .*c\.png",
        "read",
        code="unreadable_image",
    ),
    Case(
        "empty_image_file",
        with_media(sample("bad", ["e.png"]), lambda f: (f / "e.png").write_bytes(b"")),
        r"cannot read image .*e\.png",
        "read",
        code="unreadable_image",
    ),
    Case(
        "truncated_png",
        with_media(sample("bad", ["t.png"]), _truncated_png),
        r"cannot read image .*t\.png.*truncated",
        "read",
        code="unreadable_image",
    ),
    Case(
        "decompression_bomb",
        with_media(sample("bad", ["bomb.png"]), lambda f: png_bomb(f / "bomb.png")),
        r"bomb\.png.*(DecompressionBombError|MAX_IMAGE_PIXELS)",
        "read",
        code="unreadable_image",
    ),
    Case(
        "dicom_without_pixel_data",
        with_media(sample("bad", ["sr.dcm"]), lambda f: dicom_without_pixels(f / "sr.dcm")),
        r"sr\.dcm' has no pixel data",
        "read",
        code="unreadable_image",
    ),
    Case(
        "nan_pixels",
        with_media(sample("bad", ["nan.tiff"]), _nan_tiff),
        r"nan\.tiff' has 1 NaN/inf pixel",
        "read",
        code="unreadable_image",
    ),
    # 3D (medmvl.data.volumes)
    Case(
        "truncated_nifti",
        with_media(sample("bad", image3d=["t.nii"]), _truncated_nifti),
        r"cannot read volume .*t\.nii.*(Expected \d+ bytes|damaged)",
        "read",
        code="unreadable_image3d",
        volumes=True,
    ),
    Case(
        "nan_voxels",
        with_media(sample("bad", image3d=["nan.nii.gz"]), _nan_nifti),
        r"nan\.nii\.gz' has 1 NaN/inf voxel",
        "read",
        code="unreadable_image3d",
        volumes=True,
    ),
    Case(
        "inf_voxels",
        with_media(sample("bad", image3d=["inf.npy"]), _inf_npy),
        r"inf\.npy' has 1 NaN/inf voxel",
        "read",
        code="unreadable_image3d",
        volumes=True,
    ),
    Case(
        "png_given_as_volume",
        with_media(sample("bad", image3d=["flat.png"]), lambda f: png(f / "flat.png")),
        r"flat\.png' is a 2D image file",
        "read",
        code="unreadable_image3d",
        volumes=True,
    ),
    Case(
        "single_slice_nifti_as_volume",
        with_media(
            sample("bad", image3d=["slice.nii.gz"]), lambda f: nifti(f / "slice.nii.gz", volume()[:, :, :1])
        ),
        r"slice\.nii\.gz' has spatial shape \(8, 8, 1\): a 2D image",
        "read",
        code="unreadable_image3d",
        volumes=True,
    ),
    # warnings only
    Case(
        "unknown_key",
        records(sample("bad", [GOOD_PNG], reviewer="x")),
        r"reviewer",
        "warn",
        code="unknown_key",
    ),
]


def write_case(case: Case, folder: Path) -> Path:
    """Write ``case`` into ``folder``; returns the annotation file."""
    folder.mkdir(parents=True, exist_ok=True)
    text = case.write(folder)
    path = folder / "ann.json"
    if isinstance(text, bytes):
        path.write_bytes(text)
    else:
        path.write_text(text, encoding="utf-8")
    return path
