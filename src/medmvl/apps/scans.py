"""Uploaded scans for the demo: check type and size, unpack zipped DICOM series, and render views.

What the model sees is not decided here: ``Generator`` preprocesses the file (2D ``ImageTransform``, 3D
``VolumeTransform``) exactly as in training. This module only accepts an upload, names what is wrong
with it, and renders what a person looks at: the 2D image, or axial / coronal / sagittal slices of the
volume in the radiological layout of ``medmvl.data.volumes`` (``SPL``: axial slices seen from the feet,
anterior up, the patient's right on the left of the screen), with each view stretched to its physical
aspect ratio from the voxel spacing.
"""

from __future__ import annotations

import os
import shutil
import tempfile
import zipfile
import zlib
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import numpy as np
import torch
from monai.transforms import Orientation
from PIL import Image

from medmvl.data.images import load_image
from medmvl.data.volumes import DEFAULT_HU_WINDOW, check_volume, detect_intensity, read_volume

SUFFIXES_2D = (".png", ".jpg", ".jpeg", ".dcm", ".dicom")
SUFFIXES_3D = (".nii", ".nii.gz", ".npy", ".zip")
Kind = Literal["2d", "3d"]
KINDS: tuple[Kind, ...] = ("2d", "3d")
SUFFIXES: dict[Kind, tuple[str, ...]] = {"2d": SUFFIXES_2D, "3d": SUFFIXES_3D}
_TYPES: dict[Kind, str] = {
    "2d": "2D: PNG, JPEG or DICOM (.dcm)",
    "3d": "3D: NIfTI (.nii, .nii.gz), NumPy (.npy) or a zipped DICOM series (.zip)",
}
_TOWERS: dict[Kind, str] = {"2d": "2D images", "3d": "3D volumes"}
PLANES = ("axial", "coronal", "sagittal")


def accepted(kinds: Sequence[Kind] = KINDS) -> str:
    """The file types of ``kinds`` in words, e.g. ``2D: PNG, JPEG or DICOM (.dcm)``."""
    return "; ".join(_TYPES[k] for k in kinds) or "no scans (this model answers text-only questions)"


def file_types(kinds: Sequence[Kind] = KINDS) -> list[str]:
    """The file name suffixes of ``kinds`` (what the page's file box accepts)."""
    return [suffix for k in kinds for suffix in SUFFIXES[k]]


def towers(kinds: Sequence[Kind]) -> str:
    """What a model with ``kinds`` answers about, in words: ``2D images and 3D volumes``, ``text only``."""
    return " and ".join(_TOWERS[k] for k in kinds) or "text only"


ACCEPTED = accepted()


class UploadError(ValueError):
    """An upload that cannot be used; the message says why in words meant for the person uploading."""


@dataclass
class Scan:
    """An accepted upload.

    Attributes:
        kind: ``2d`` or ``3d``.
        path: What the model reads: the image or volume file, or the folder of an unzipped DICOM series.
        name: The uploaded file name, for messages.
        pixels: Display values in [0, 1]: ``[h, w, c]`` (2D) or ``[d, h, w]`` (3D, first channel, ``SPL``).
        spacing: Voxel size ``(d, h, w)`` in mm (3D; ``(1, 1, 1)`` when the file has none).
    """

    kind: Kind
    path: str
    name: str
    pixels: np.ndarray
    spacing: tuple[float, float, float] = (1.0, 1.0, 1.0)

    @property
    def shape(self) -> tuple[int, ...]:
        """``(h, w)`` of an image, ``(d, h, w)`` of a volume."""
        return tuple(self.pixels.shape[:2] if self.kind == "2d" else self.pixels.shape)

    def describe(self) -> str:
        """One line for the page, e.g. ``ct.nii.gz: 3D volume 133 x 512 x 512 (axial x rows x columns)``."""
        if self.kind == "2d":
            return f"{self.name}: 2D image {self.shape[0]} x {self.shape[1]} pixels"
        d, h, w = self.shape
        sd, sh, sw = self.spacing
        return f"{self.name}: 3D volume {d} x {h} x {w} voxels of {sd:.2g} x {sh:.2g} x {sw:.2g} mm"


def scan_kind(name: str, kinds: Sequence[Kind] = KINDS) -> Kind:
    """``2d`` or ``3d`` from the file name alone (nothing is read).

    Raises:
        UploadError: Any other type, or a kind not in ``kinds`` (those the model has a tower for); the
            message lists the types of ``kinds``.
    """
    lower = name.lower()
    kind = next((k for k in KINDS if lower.endswith(SUFFIXES[k])), None)
    if kind is None:
        suffix = "".join(Path(lower).suffixes[-2:]) or "no extension"
        raise UploadError(f"{name}: file type '{suffix}' is not accepted. Upload {accepted(kinds)}.")
    if kind not in kinds:
        raise UploadError(
            f"{name}: this model answers about {towers(kinds)}, not {kind.upper()} scans. "
            f"Upload {accepted(kinds)}."
        )
    return kind


def open_scan(
    path: str | os.PathLike,
    *,
    name: str | None = None,
    work_dir: str | os.PathLike,
    max_bytes: int,
    max_unzipped_bytes: int,
    max_display: int = 256,
    kinds: Sequence[Kind] = KINDS,
) -> Scan:
    """Check an uploaded file and read it for display (a ``.zip`` is unpacked under ``work_dir``).

    The type (from the name) is checked first, against ``kinds``: a refused type is neither read nor
    unpacked.

    Args:
        path: The uploaded file.
        name: Its original name (default: the file name of ``path``).
        work_dir: Where a zip is unpacked (a new folder per upload).
        max_bytes: Largest accepted upload.
        max_unzipped_bytes: Largest total size of a zip's members.
        max_display: Longest side of the stored display volume (strided down beyond it).
        kinds: The kinds accepted (those the model has a tower for).

    Raises:
        UploadError: Wrong type (or a kind not in ``kinds``), too large, unsafe or unusable zip,
            unreadable image or volume.
    """
    path = Path(path)
    name = name or path.name
    kind = scan_kind(name, kinds)
    size = path.stat().st_size
    if size > max_bytes:
        raise UploadError(f"{name} is {size / 2**20:.1f} MB; the limit is {max_bytes / 2**20:.0f} MB.")
    unpacked: Path | None = None
    try:
        if kind == "2d":
            return Scan("2d", str(path), name, load_image(path))  # [h, w, c]
        if name.lower().endswith(".zip"):
            path = unpacked = unzip_series(path, Path(work_dir), max_unzipped_bytes, name)
        pixels, spacing = display_volume(path, max_display)
        return Scan("3d", str(path), name, pixels, spacing)
    except (OSError, ValueError) as err:  # ImageReadError / VolumeReadError are OSErrors
        if unpacked is not None:  # a series that cannot be shown is not kept
            shutil.rmtree(unpacked, ignore_errors=True)
        if isinstance(err, UploadError):
            raise
        raise UploadError(f"{name} cannot be read: {err}") from err


def unzip_series(path: Path, work_dir: Path, max_bytes: int, name: str) -> Path:
    """Unpack a zipped DICOM series into a new folder of ``work_dir``; returns the folder with the slices.

    Members with absolute paths or ``..`` are refused (they would land outside the folder), and so is a
    zip whose members add up to more than ``max_bytes``. The series is the one folder holding files
    (``__MACOSX`` and hidden entries ignored).
    """
    try:
        archive = zipfile.ZipFile(path)
    except zipfile.BadZipFile as err:
        raise UploadError(f"{name} is not a valid zip file ({err}).") from err
    with archive:
        for m in archive.infolist():
            if Path(m.filename).is_absolute() or ".." in Path(m.filename.replace("\\", "/")).parts:
                raise UploadError(f"{name}: member {m.filename!r} would unpack outside its folder; refused.")
        members = [m for m in archive.infolist() if not m.is_dir() and not _ignored(m.filename)]
        if not members:
            raise UploadError(f"{name} holds no files; expected the slices of one DICOM series.")
        total = sum(m.file_size for m in members)
        if total > max_bytes:
            raise UploadError(
                f"{name} unpacks to {total / 2**20:.0f} MB; the limit is {max_bytes / 2**20:.0f} MB."
            )
        folders = {str(Path(m.filename).parent) for m in members}
        if len(folders) != 1:
            raise UploadError(
                f"{name} must hold one DICOM series in one folder; it has files in {len(folders)} folders."
            )
        target = Path(_fresh_dir(work_dir, "series-"))
        try:
            for m in members:
                out = target / Path(m.filename).name
                with archive.open(m) as src, out.open("wb") as dst:
                    shutil.copyfileobj(src, dst)
        except (OSError, zipfile.BadZipFile, zlib.error, NotImplementedError, RuntimeError) as err:
            shutil.rmtree(target, ignore_errors=True)  # nothing half-unpacked is kept
            raise UploadError(f"{name} cannot be unpacked ({err}).") from err
    return target


def display_volume(path: str | os.PathLike, max_display: int = 256) -> tuple[np.ndarray, tuple[float, ...]]:
    """A volume for viewing: ``[d, h, w]`` float32 in [0, 1] (``SPL``, first channel) and its spacing.

    Intensities as the model's reader sees them (CT windowed to ``[-1000, 1000]`` HU, 8-bit / 255, [0, 1]
    as is); no crop, no resize beyond striding every axis down to at most ``max_display`` voxels.
    """
    vol = read_volume(path, npy_axcodes="SPL")  # [c, x, y, z] with its affine
    kind = detect_intensity(vol, "auto", path, check_volume(vol, path))
    lo, hi = {"hu": DEFAULT_HU_WINDOW, "uint8": (0.0, 255.0), "unit": (0.0, 1.0)}[kind]
    vol = Orientation(axcodes="SPL", labels=None)(vol.float())  # [c, d, h, w]
    spacing = tuple(float(s) for s in np.linalg.norm(np.asarray(vol.affine)[:3, :3], axis=0))
    arr = torch.as_tensor(vol[0]).numpy()  # [d, h, w]
    steps = [max(1, -(-n // max_display)) for n in arr.shape]
    arr = arr[:: steps[0], :: steps[1], :: steps[2]]
    spacing = tuple(s * k for s, k in zip(spacing, steps))
    return np.clip((arr - lo) / (hi - lo), 0.0, 1.0).astype(np.float32), spacing


def render_slice(scan: Scan, plane: str, index: int, max_side: int = 384) -> np.ndarray:
    """One view as an 8-bit RGB image ``[rows, cols, 3]``, stretched to its physical aspect ratio.

    ``axial`` slice ``index`` of ``d`` (anterior up, patient's right on the left), ``coronal`` slice of
    ``h`` and ``sagittal`` slice of ``w`` (superior up); a 2D scan ignores ``plane`` and ``index``.
    """
    if scan.kind == "2d":
        img = scan.pixels  # [h, w, c]
        rows_mm, cols_mm = img.shape[0], img.shape[1]
    else:
        vol, (sd, sh, sw) = scan.pixels, scan.spacing  # [d, h, w]
        axis = PLANES.index(plane)
        index = int(np.clip(index, 0, vol.shape[axis] - 1))
        if plane == "axial":
            img, rows_mm, cols_mm = vol[index], vol.shape[1] * sh, vol.shape[2] * sw
        elif plane == "coronal":
            img, rows_mm, cols_mm = vol[::-1, index, :], vol.shape[0] * sd, vol.shape[2] * sw
        else:
            img, rows_mm, cols_mm = vol[::-1, :, index], vol.shape[0] * sd, vol.shape[1] * sh
    img8 = (np.clip(img, 0.0, 1.0) * 255).round().astype(np.uint8)
    if img8.ndim == 3 and img8.shape[2] == 1:
        img8 = img8[..., 0]
    scale = max_side / max(rows_mm, cols_mm)
    size = (max(1, round(cols_mm * scale)), max(1, round(rows_mm * scale)))
    pil = Image.fromarray(np.ascontiguousarray(img8)).convert("RGB").resize(size, Image.Resampling.BILINEAR)
    return np.asarray(pil)


def _ignored(member: str) -> bool:
    return any(part.startswith((".", "__MACOSX")) for part in Path(member).parts)


def _fresh_dir(root: Path, prefix: str) -> str:
    root.mkdir(parents=True, exist_ok=True)
    return tempfile.mkdtemp(prefix=prefix, dir=root)
