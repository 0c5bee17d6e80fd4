"""DICOM geometry and pixel values the way ITK (GDCM) and dcm2niix read them.

A DICOM series is a set of 2D images, each with its own place in the patient (``ImagePositionPatient``,
``ImageOrientationPatient``) and its own rescale to modality units (``RescaleSlope``/``RescaleIntercept``:
Hounsfield units for CT). An enhanced (multi-frame) file holds the same per-frame attributes in its
functional groups: ``SharedFunctionalGroupsSequence`` for what every frame shares, overridden by
``PerFrameFunctionalGroupsSequence[i]`` for frame ``i``. The rules (also in ``docs/3d.md``):

* Slices (files of a folder, frames of enhanced files, or both) are ordered by their position along the
  slice normal, the cross product of the two direction cosines of ``ImageOrientationPatient``;
  ``InstanceNumber`` is never used (it may be missing, empty, constant or out of spatial order).
* The slice spacing comes from the positions, not from ``SliceThickness`` (overlapping or gapped
  reconstructions differ from it).
* Each slice is rescaled with its own slope/intercept (or Modality LUT), so a series whose slices carry
  different rescales still gives one volume in modality units.
* Refused, with the folder and the files named: several ``SeriesInstanceUID``; different orientations,
  image sizes or pixel spacings; two images at one position (echoes, phases, time points, copies);
  uneven spacing beyond :data:`SPACING_TOLERANCE` of the usual gap and :data:`GAP_TOLERANCE_MM` (a
  missing slice; the gap is named); gantry tilt (positions that step off the slice normal: stacking them
  would shear the anatomy, and medmvl does not resample; dcm2niix corrects tilt); multi-frame files
  without per-frame positions; colour images.

:func:`frame_dataset` gives one frame's attributes as classic top-level elements, so pydicom's own
``apply_modality_lut``/``apply_voi_lut`` apply an enhanced file's rescale and window (the 2D loader uses it
for every DICOM).
"""

from __future__ import annotations

import copy
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pydicom
from pydicom.dataset import Dataset
from pydicom.errors import InvalidDicomError
from pydicom.pixels import apply_modality_lut, pixel_array

#: Functional-group macros whose (single) item holds classic top-level attributes of a frame.
FRAME_MACROS = (
    "PixelMeasuresSequence",  # PixelSpacing, SliceThickness, SpacingBetweenSlices
    "PlanePositionSequence",  # ImagePositionPatient
    "PlaneOrientationSequence",  # ImageOrientationPatient
    "PixelValueTransformationSequence",  # RescaleSlope, RescaleIntercept, RescaleType
    "FrameVOILUTSequence",  # WindowCenter, WindowWidth, VOILUTFunction
)
#: Largest ``|gap - median gap|`` between neighbouring slices, as a fraction of the median gap.
SPACING_TOLERANCE = 0.05
#: Smallest uneven-gap difference refused (mm): positions written with one decimal may be 0.1 mm apart.
GAP_TOLERANCE_MM = 0.1
#: Two slices closer than this along the normal (mm) are at the same position.
DUPLICATE_MM = 0.01
#: Largest in-plane drift of a slice from the line through the first one along the normal, in pixels.
TILT_PIXELS = 0.25
_ORIENTATION_TOLERANCE = 1e-3
_PIXEL_TAGS = ("PixelData", "FloatPixelData", "DoubleFloatPixelData")
_NOT_COPIED = ("PixelData", "SharedFunctionalGroupsSequence", "PerFrameFunctionalGroupsSequence")


class DicomReadError(ValueError):
    """DICOM files that cannot make one volume; the message names the folder (or file) and the files."""


@dataclass(frozen=True)
class DicomVolume:
    """A volume in modality units with its patient geometry.

    Attributes:
        voxels: float32 ``[slices, rows, cols]``, slices in increasing position along the slice normal.
        affine: 4x4 map from voxel index ``(col, row, slice)`` to DICOM's LPS patient frame in mm.
        modality: ``Modality`` of the series (``CT``: the voxels are Hounsfield units).
        sources: The file (and frame) of each slice, in slice order.
    """

    voxels: np.ndarray
    affine: np.ndarray
    modality: str
    sources: tuple[str, ...]


def frame_dataset(ds: Dataset, frame: int = 0) -> Dataset:
    """Frame ``frame``'s pixel attributes as classic top-level elements of a new dataset.

    Starts from the top-level elements (pixel module, rescale, window, VOI/Modality LUT, geometry), then
    copies the items of the :data:`FRAME_MACROS` of the shared functional groups, then those of the frame's
    per-frame functional groups, each overriding the one before. A classic image comes back with its own
    attributes; pydicom's ``apply_modality_lut``/``apply_voi_lut`` take the result.
    """
    view = Dataset()
    for elem in ds:
        if elem.keyword not in _NOT_COPIED:
            view.add(copy.copy(elem))  # pydicom's LUT functions may write (cast) values into the view
    if hasattr(ds, "file_meta"):
        view.file_meta = ds.file_meta  # the transfer syntax: byte order of OW LUT data
    groups = []
    if ds.get("SharedFunctionalGroupsSequence"):
        groups.append(ds.SharedFunctionalGroupsSequence[0])
    per_frame = ds.get("PerFrameFunctionalGroupsSequence")
    if per_frame and frame < len(per_frame):
        groups.append(per_frame[frame])
    for group in groups:
        for macro in FRAME_MACROS:
            if group.get(macro):
                for elem in group[macro].value[0]:
                    view.add(copy.copy(elem))
    return view


@dataclass
class _Slice:
    """One 2D image of a volume: a classic file or a frame of a multi-frame file."""

    name: str
    ds: Dataset
    frame: int | None
    view: Dataset

    def geometry(self, where: str) -> tuple[np.ndarray, np.ndarray, np.ndarray, tuple[int, int]]:
        """``(orientation [6], position [3], pixel spacing [2], (rows, cols))``."""
        missing = [k for k in ("ImageOrientationPatient", "ImagePositionPatient") if not self.view.get(k)]
        if missing:
            extra = (
                " (a multi-frame file needs them per frame in its functional groups, "
                "PerFrameFunctionalGroupsSequence > PlanePositionSequence)"
                if self.frame is not None
                else ""
            )
            raise DicomReadError(
                f"{where}: {self.name} has no {' or '.join(missing)}{extra}; its slices cannot be placed in "
                "space, so they do not make a volume"
            )
        spacing = self.view.get("PixelSpacing") or [1.0, 1.0]
        return (
            np.asarray([float(v) for v in self.view.ImageOrientationPatient], dtype=np.float64),
            np.asarray([float(v) for v in self.view.ImagePositionPatient], dtype=np.float64),
            np.asarray([float(v) for v in spacing], dtype=np.float64),
            (int(self.ds.Rows), int(self.ds.Columns)),
        )

    def values(self, where: str) -> np.ndarray:
        """Modality values (this slice's own rescale or Modality LUT) as float32 ``[rows, cols]``."""
        try:
            arr = pixel_array(self.ds, index=self.frame)
        except (RuntimeError, ValueError, AttributeError, NotImplementedError) as err:  # e.g. no decoder
            raise DicomReadError(f"{where}: cannot decode the pixel data of {self.name}: {err}") from err
        return np.asarray(apply_modality_lut(arr, self.view), dtype=np.float32)


def read_dicom_volume(path: str | os.PathLike) -> DicomVolume:
    """Read a folder of DICOM files (classic slices and/or enhanced multi-frame files) or one such file.

    Raises:
        DicomReadError: No DICOM image, several series, or slices that do not make one regular volume (see
            the module docstring); the message names the folder and the files involved.
    """
    path = Path(path)
    where = f"DICOM {'folder' if path.is_dir() else 'file'} {str(path)!r}"
    if path.is_dir():
        files = [f for f in sorted(path.iterdir()) if f.is_file() and pydicom.misc.is_dicom(f)]
        if not files:
            raise DicomReadError(f"folder {str(path)!r} holds no DICOM files (with the DICM preamble)")
    else:
        files = [path]
    datasets = [(f.name, _read(where, f)) for f in files]
    images = [(name, ds) for name, ds in datasets if "Rows" in ds and any(t in ds for t in _PIXEL_TAGS)]
    if not images:
        raise DicomReadError(
            f"{where} holds no DICOM image with pixel data ({len(datasets)} other DICOM object(s): reports, "
            "presentation states, a DICOMDIR, ...)"
        )
    _check_one_series(where, images)
    colour = [name for name, ds in images if int(ds.get("SamplesPerPixel", 1)) != 1]
    if colour:
        raise DicomReadError(
            f"{where}: {colour[0]} is a colour image (SamplesPerPixel 3); volumes are read from greyscale "
            "images only"
        )
    slices = []
    for name, ds in images:
        frames = int(ds.get("NumberOfFrames", 1) or 1)
        if frames == 1 and not ds.get("PerFrameFunctionalGroupsSequence"):
            slices.append(_Slice(name, ds, None, frame_dataset(ds)))
        else:
            slices += [_Slice(f"{name} frame {i}", ds, i, frame_dataset(ds, i)) for i in range(frames)]
    modality = str(images[0][1].get("Modality", ""))
    if len(slices) == 1:  # one 2D image: nothing to stack (the caller refuses a single slice)
        view = slices[0].view
        thickness = float(view.get("SpacingBetweenSlices") or view.get("SliceThickness") or 1.0)
        spacing = view.get("PixelSpacing") or [1.0, 1.0]
        affine = _affine(
            view.get("ImageOrientationPatient"), view.get("ImagePositionPatient"), spacing, thickness
        )
        return DicomVolume(slices[0].values(where)[None], affine, modality, (slices[0].name,))
    order, affine = _stack_geometry(where, slices)
    voxels = np.stack([slices[i].values(where) for i in order])
    return DicomVolume(voxels, affine, modality, tuple(slices[i].name for i in order))


def _read(where: str, path: Path) -> Dataset:
    try:
        return pydicom.dcmread(path)
    except (InvalidDicomError, OSError, ValueError, EOFError, AttributeError, KeyError) as err:
        raise DicomReadError(f"{where}: {path.name} cannot be read: {type(err).__name__}: {err}") from err


def _check_one_series(where: str, images: list[tuple[str, Dataset]]) -> None:
    series: dict[str, list[str]] = {}
    for name, ds in images:
        series.setdefault(str(ds.get("SeriesInstanceUID", "") or "(none)"), []).append(name)
    if len(series) > 1:
        listed = "; ".join(
            f"{uid}: {len(names)} file(s), e.g. {', '.join(names[:3])}" for uid, names in series.items()
        )
        raise DicomReadError(
            f"{where} mixes {len(series)} DICOM series (SeriesInstanceUID {listed}); expected one series per "
            "folder: move each series to its own folder"
        )


def _stack_geometry(where: str, slices: list[_Slice]) -> tuple[np.ndarray, np.ndarray]:
    """Order of ``slices`` along the normal and the LPS affine of the stack; refuses irregular stacks."""
    geoms = [s.geometry(where) for s in slices]
    names = [s.name for s in slices]
    _check_alike(where, names, geoms)
    iop, spacing = geoms[0][0], geoms[0][2]
    normal = _normal(where, names[0], iop)
    positions = np.stack([g[1] for g in geoms])  # [n, 3] LPS mm
    order = np.argsort(positions @ normal, kind="stable")
    dist = positions[order] @ normal
    _check_gaps(where, [names[i] for i in order], positions[order], np.diff(dist))
    _check_tilt(where, [slices[i] for i in order], positions[order], normal, float(spacing.min()))
    return order, _affine(iop, positions[order[0]], spacing, (dist[-1] - dist[0]) / (len(dist) - 1))


def _check_alike(where: str, names: list[str], geoms: list[tuple]) -> None:
    """Same image size, orientation and pixel spacing in every slice."""
    iop0, _, spacing0, size0 = geoms[0]
    for name, (iop, _, spacing, size) in zip(names, geoms):
        if size != size0:
            raise DicomReadError(
                f"{where}: {names[0]} is {size0[0]} x {size0[1]} (rows x columns) but {name} is "
                f"{size[0]} x {size[1]}; the images of one volume must all have the same size"
            )
        if np.abs(iop - iop0).max() > _ORIENTATION_TOLERANCE:
            raise DicomReadError(
                f"{where} mixes orientations: {names[0]} has ImageOrientationPatient {_fmt(iop0)}, {name} "
                f"{_fmt(iop)} (localisers or several planes in one folder); one volume has one orientation"
            )
        if np.abs(spacing - spacing0).max() > 1e-3 * max(float(spacing0.max()), 1.0):
            raise DicomReadError(
                f"{where}: {names[0]} has PixelSpacing {_fmt(spacing0)} but {name} {_fmt(spacing)}; one "
                "volume has one pixel spacing"
            )


def _normal(where: str, name: str, iop: np.ndarray) -> np.ndarray:
    """Unit slice normal: the row direction cross the column direction of ``ImageOrientationPatient``."""
    row_dir, col_dir = iop[:3], iop[3:]
    norms = np.linalg.norm(row_dir), np.linalg.norm(col_dir)
    if max(abs(norms[0] - 1), abs(norms[1] - 1), abs(row_dir @ col_dir)) > 1e-2:
        raise DicomReadError(
            f"{where}: ImageOrientationPatient {_fmt(iop)} of {name} is not two orthogonal unit vectors"
        )
    normal = np.cross(row_dir / norms[0], col_dir / norms[1])
    return normal / np.linalg.norm(normal)


def _check_gaps(where: str, names: list[str], positions: np.ndarray, gaps: np.ndarray) -> None:
    """No two slices at one position; every gap along the normal within tolerance of the median gap."""
    same = np.flatnonzero(gaps < DUPLICATE_MM)
    if same.size:
        i = int(same[0])
        raise DicomReadError(
            f"{where}: {same.size} pair(s) of images share a position, e.g. {names[i]} and {names[i + 1]} "
            f"both at {_fmt(positions[i])} mm (echoes, phases, time points or copies of one slice); one "
            "volume has one image per position: split them into one folder each"
        )
    step = float(np.median(gaps))
    uneven = np.flatnonzero(np.abs(gaps - step) > max(SPACING_TOLERANCE * step, GAP_TOLERANCE_MM))
    if uneven.size:
        i = int(uneven[0])
        missing = gaps[i] / step - 1
        hint = f"about {round(missing)} slice(s) missing there" if missing > 0.5 else "uneven slice spacing"
        raise DicomReadError(
            f"{where}: the slices are not evenly spaced: {uneven.size} gap(s) differ from the usual "
            f"{step:.4g} mm by more than {SPACING_TOLERANCE:.0%} (and {GAP_TOLERANCE_MM:g} mm); the first "
            f"lies between {names[i]} at {_fmt(positions[i])} mm and {names[i + 1]} at "
            f"{_fmt(positions[i + 1])} mm, {gaps[i]:.4g} mm apart ({hint}). Stacking them would misplace "
            "every slice beyond the gap"
        )


def _check_tilt(
    where: str, slices: list[_Slice], positions: np.ndarray, normal: np.ndarray, pixel: float
) -> None:
    """Refuse positions that drift in-plane (gantry tilt): at most :data:`TILT_PIXELS` of a pixel."""
    along = (positions - positions[0]) @ normal
    drift = np.linalg.norm((positions - positions[0]) - np.outer(along, normal), axis=1)
    worst = int(np.argmax(drift))
    if drift[worst] <= TILT_PIXELS * pixel:
        return
    travel = (positions[-1] - positions[0]) / np.linalg.norm(positions[-1] - positions[0])
    angle = np.degrees(np.arccos(np.clip(abs(travel @ normal), 0.0, 1.0)))
    tilt = slices[0].view.get("GantryDetectorTilt")
    stated = f", GantryDetectorTilt {float(tilt):g}" if tilt not in (None, "") else ""
    raise DicomReadError(
        f"{where}: the slice positions step along {_fmt(travel)}, {angle:.2f} degrees off the slice normal "
        f"{_fmt(normal)} (gantry tilt{stated}; {slices[worst].name} lies {drift[worst]:.3g} mm off the line "
        f"through {slices[0].name}). Stacking such slices shears the anatomy and medmvl does not resample "
        "them: convert the series with dcm2niix (which corrects gantry tilt) and use its NIfTI"
    )


def _affine(iop, position, spacing, spacing_z: float) -> np.ndarray:
    """4x4 LPS affine of voxel index ``(col, row, slice)``; identity directions if the geometry is absent."""
    iop = np.asarray(
        [1, 0, 0, 0, 1, 0] if iop is None or len(iop) != 6 else [float(v) for v in iop], dtype=float
    )
    row_dir, col_dir = iop[:3] / np.linalg.norm(iop[:3]), iop[3:] / np.linalg.norm(iop[3:])
    normal = np.cross(row_dir, col_dir)
    affine = np.eye(4)
    affine[:3, 0] = row_dir * float(spacing[1])  # next column: along the row direction, column spacing
    affine[:3, 1] = col_dir * float(spacing[0])  # next row: along the column direction, row spacing
    affine[:3, 2] = normal / np.linalg.norm(normal) * float(spacing_z)
    affine[:3, 3] = 0.0 if position is None or len(position) != 3 else [float(v) for v in position]
    return affine


def _fmt(values) -> str:
    return "(" + ", ".join(f"{float(v):.4g}" for v in values) + ")"
