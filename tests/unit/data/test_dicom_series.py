"""DICOM series and enhanced (multi-frame) volumes against SimpleITK's ImageSeriesReader (GDCM's sorting).

Every case is the project's real CT (``small_ct``) written as DICOM with one thing changed; medmvl's volume
(HU, before any window or resize) must equal SimpleITK's voxel for voxel once both are mapped to the
closest canonical (RAS) axis order by their own affines, and the affines must agree.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk
import torch
from nibabel.orientations import apply_orientation, inv_ornt_aff, io_orientation

from medmvl.assets import resolve_path
from medmvl.data.volumes import VolumeOptions, VolumeReadError, load_volume, read_volume
from tests.helpers.corpus import dicom_without_pixels
from tests.helpers.ct import series_slices, small_ct, write_enhanced_ct, write_nifti, write_slices
from tests.helpers.offline import PYDICOM_DATA

SIZE = (16, 32, 32)
EXACT = VolumeOptions(crop_foreground=False)
LPS_TO_RAS = np.diag([-1.0, -1.0, 1.0, 1.0])


def _rotation(axis: int, degrees: float) -> np.ndarray:
    a, b = [i for i in range(3) if i != axis]
    t = np.deg2rad(degrees)
    rot = np.eye(4)
    rot[a, a], rot[a, b], rot[b, a], rot[b, b] = np.cos(t), -np.sin(t), np.sin(t), np.cos(t)
    return rot


def _renumber(slices: list[dict], numbers) -> list[dict]:
    for s, n in zip(slices, numbers):
        s["instance"] = n
    return slices


def _case(name: str) -> list[dict]:
    """The slices of one geometry case (``series_slices`` order: inferior first)."""
    hu, _, affine = small_ct()
    if name == "oblique":  # tilted 20 degrees about x and 10 about y: no axis is a patient axis
        return series_slices(hu, _rotation(1, 10) @ _rotation(0, 20) @ affine)
    slices = series_slices(hu, affine)
    n = len(slices)
    rng = np.random.default_rng(7)
    if name == "shuffled":  # file names and InstanceNumbers both in random order
        return _renumber(slices, (rng.permutation(n) + 1).tolist())
    if name == "renumbered":  # numbers not in spatial order (positions untouched)
        return _renumber(slices, [int(v) for v in (np.arange(n) * 7) % n + 1])
    if name == "constant_instance":
        return _renumber(slices, [1] * n)
    if name == "missing_instance":
        return _renumber(slices, [None] * n)
    if name == "empty_instance":
        return _renumber(slices, [""] * n)
    if name == "reversed":  # InstanceNumber 1 at the bottom instead of the top
        return _renumber(slices, list(range(1, n + 1)))
    if name == "uint16_intercept":  # unsigned stored values, HU = stored - 3024
        return [{**s, "stored": "uint16", "intercept": -3024.0} for s in slices]
    if name == "slope":  # slope 0.5: stored = 2 (HU + 1024)
        return [{**s, "slope": 0.5} for s in slices]
    if name == "per_slice_rescale":  # every slice its own slope and intercept
        return [
            {**s, "slope": (1, 0.5, 2)[k % 3], "intercept": -1024.0 - 8 * k} for k, s in enumerate(slices)
        ]
    assert name == "plain"
    return slices


CASES = [
    "plain",
    "shuffled",
    "renumbered",
    "constant_instance",
    "missing_instance",
    "empty_instance",
    "reversed",
    "oblique",
    "uint16_intercept",
    "slope",
    "per_slice_rescale",
]


def _canonical(arr: np.ndarray, affine: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """``arr [x, y, z]`` and its RAS ``affine`` flipped/permuted to the closest RAS axis order."""
    ornt = io_orientation(affine)
    return apply_orientation(arr, ornt), affine @ inv_ornt_aff(ornt, arr.shape)


def itk_volume(folder: Path) -> tuple[np.ndarray, np.ndarray]:
    """SimpleITK's read of a series folder: ``(float32 [x, y, z] modality values, RAS affine)``."""
    reader = sitk.ImageSeriesReader()
    reader.SetFileNames(reader.GetGDCMSeriesFileNames(str(folder)))  # GDCM: sorted by position
    reader.SetOutputPixelType(sitk.sitkFloat32)
    img = reader.Execute()
    lps = np.eye(4)
    lps[:3, :3] = np.asarray(img.GetDirection()).reshape(3, 3) @ np.diag(img.GetSpacing())
    lps[:3, 3] = img.GetOrigin()
    return sitk.GetArrayFromImage(img).transpose(2, 1, 0), LPS_TO_RAS @ lps


def medmvl_volume(path: Path) -> tuple[np.ndarray, np.ndarray]:
    vol = read_volume(path, npy_axcodes="SPL")  # [1, x, y, z], RAS affine
    return vol[0].numpy().astype(np.float32), vol.affine.numpy()


def assert_same_volume(ours: tuple[np.ndarray, np.ndarray], ref: tuple[np.ndarray, np.ndarray]) -> None:
    (a, a_aff), (b, b_aff) = _canonical(*ours), _canonical(*ref)
    assert a.shape == b.shape
    np.testing.assert_allclose(a_aff, b_aff, atol=1e-3)  # mm
    np.testing.assert_allclose(a, b, atol=1e-3, rtol=0)  # HU


@pytest.fixture(scope="module")
def root(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("series")


@pytest.fixture(scope="module")
def reference(root) -> torch.Tensor:
    """The CT as NIfTI through ``load_volume``: what every well-formed DICOM of it must give."""
    hu, _, affine = small_ct()
    return load_volume(write_nifti(root / "ct.nii.gz", hu, affine), SIZE, EXACT)


@pytest.mark.parametrize("case", CASES)
def test_series_equals_simpleitk(root, case):
    folder = write_slices(root / case, _case(case), seed=len(case))
    assert_same_volume(medmvl_volume(folder), itk_volume(folder))


@pytest.mark.parametrize("case", [c for c in CASES if c not in ("oblique", "per_slice_rescale")])
def test_series_gives_the_nifti_volume(root, reference, case):
    """Whatever the numbering and storage, the model input is the NIfTI's (per-slice rescale and an oblique
    grid change the values or the grid, so those two are checked against SimpleITK only)."""
    folder = root / f"{case}_e2e"
    write_slices(folder, _case(case), seed=3)
    torch.testing.assert_close(load_volume(folder, SIZE, EXACT), reference, atol=1e-5, rtol=0)


@pytest.mark.parametrize("case", ["plain", "shuffled", "per_slice_rescale", "oblique"])
def test_enhanced_file_equals_the_classic_series(root, case):
    """One Enhanced CT file (frames in scrambled order, geometry and rescale only in the functional groups)
    reads like SimpleITK's read of the same slices as classic files."""
    slices = _case(case)
    folder = write_slices(root / f"{case}_classic", slices)
    order = np.random.default_rng(1).permutation(len(slices))
    enhanced = write_enhanced_ct(root / f"{case}_enhanced" / "ct.dcm", [slices[i] for i in order])
    assert_same_volume(medmvl_volume(enhanced), itk_volume(folder))
    assert_same_volume(medmvl_volume(enhanced.parent), itk_volume(folder))  # a folder holding the file


def test_enhanced_file_gives_the_nifti_volume(root, reference):
    slices = _case("plain")
    order = np.random.default_rng(2).permutation(len(slices))
    enhanced = write_enhanced_ct(root / "e2e_enhanced.dcm", [slices[i] for i in order])
    torch.testing.assert_close(load_volume(enhanced, SIZE, EXACT), reference, atol=1e-5, rtol=0)


def _broken(case: str) -> tuple[list[dict], str]:
    slices = _case("plain")
    if case == "mixed_series":
        for s in slices[20:]:
            s["series"] = "1.2.3.4.5"
        return slices, r"mixes 2 DICOM series \(SeriesInstanceUID .*1\.2\.3\.4\.5: 14 file\(s\)"
    if case == "mixed_orientation":
        slices[5]["orientation"] = [0.0, 1.0, 0.0, 0.0, 0.0, -1.0]  # a sagittal localiser
        return (
            slices,
            r"mixes orientations: .* has ImageOrientationPatient \(1, 0, 0, 0, 1, 0\), "
            r".*\(0, 1, 0, 0, 0, -1\)",
        )
    if case == "different_size":
        slices[7]["pixels"] = slices[7]["pixels"][:, :60]
        return slices, r"is 64 x 64 \(rows x columns\) but slice_\d+\.dcm is 64 x 60"
    if case == "duplicate_position":
        slices[12]["position"] = list(slices[11]["position"])
        z = slices[11]["position"][2]
        return (
            slices,
            r"1 pair\(s\) of images share a position, e\.g\. slice_\d+\.dcm and slice_\d+\.dcm "
            rf"both at \(.*, {z:.4g}\) mm",
        )
    if case == "missing_slice":
        below, above = slices[9]["position"][2], slices[11]["position"][2]
        del slices[10]
        return slices, (
            rf"not evenly spaced: 1 gap\(s\) differ from the usual 10 mm .* between slice_\d+\.dcm at "
            rf"\(.*, {below:.4g}\) mm and slice_\d+\.dcm at \(.*, {above:.4g}\) mm, 20 mm apart \(about 1 "
            r"slice\(s\) missing there\)"
        )
    assert case == "gantry_tilt"  # image planes tilted 15 degrees, positions stepping along the table (z)
    t = np.deg2rad(15.0)
    for s in slices:
        s["orientation"] = [1.0, 0.0, 0.0, 0.0, float(np.cos(t)), float(np.sin(t))]
        s["tilt"] = 15.0
    return slices, r"15\.00 degrees off the slice normal .*gantry tilt, GantryDetectorTilt 15.*dcm2niix"


@pytest.mark.parametrize(
    "case",
    [
        "mixed_series",
        "mixed_orientation",
        "different_size",
        "duplicate_position",
        "missing_slice",
        "gantry_tilt",
    ],
)
def test_what_cannot_make_one_volume_is_refused_naming_the_folder_and_files(root, case):
    slices, message = _broken(case)
    folder = write_slices(root / f"bad_{case}", slices)
    with pytest.raises(VolumeReadError, match=message) as err:
        load_volume(folder, SIZE)
    assert f"DICOM folder {str(folder)!r}" in str(err.value)


def test_multiframe_file_without_positions_is_refused(root):
    path = resolve_path(PYDICOM_DATA + "emri_small.dcm")  # 10 frames, no functional groups
    with pytest.raises(
        VolumeReadError, match=r"emri_small\.dcm frame 0 has no ImageOrientationPatient"
    ) as err:
        load_volume(path, SIZE)
    assert "PlanePositionSequence" in str(err.value) and str(path) in str(err.value)


def test_non_image_objects_in_the_folder_are_skipped(root):
    """A report next to the slices (its own series) is not an image of the volume, so it is left out."""
    folder = write_slices(root / "with_sr", _case("plain"))
    dicom_without_pixels(folder / "report.dcm")
    assert_same_volume(medmvl_volume(folder), itk_volume(folder))
