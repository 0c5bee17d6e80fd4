"""Demo uploads: accepted types and limits, safe unzipping of DICOM series, slice views and their layout."""

from __future__ import annotations

import zipfile
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
from PIL import Image
from pydicom.data import get_testdata_file

from medmvl.apps.scans import Scan, UploadError, open_scan, render_slice, scan_kind
from tests.helpers.ct import write_dicom_series

LIMITS = {"max_bytes": 2**20, "max_unzipped_bytes": 4 * 2**20}


def _series_zip(tmp_path: Path, nested: bool = True) -> Path:
    """A zipped 6-slice CT series (synthetic HU) in a sub-folder, as a person would zip a series folder."""
    hu = np.full((16, 12, 6), -1000, dtype=np.int16)
    hu[4:12, 3:9, 1:5] = 40  # soft tissue block
    folder = write_dicom_series(tmp_path / "series", hu, np.diag([2.0, 2.0, 5.0, 1.0]))
    path = tmp_path / "series.zip"
    with zipfile.ZipFile(path, "w") as zf:
        for f in sorted(folder.iterdir()):
            zf.write(f, f"CT_series/{f.name}" if nested else f.name)
        zf.writestr("__MACOSX/._junk", b"x")
    return path


@pytest.mark.parametrize(
    ("name", "kind"),
    [("a.PNG", "2d"), ("x.jpeg", "2d"), ("s.dcm", "2d"), ("v.nii.gz", "3d"), ("v.nii", "3d"), ("v.npy", "3d"), ("s.zip", "3d")],
)  # fmt: skip
def test_scan_kind(name: str, kind: str) -> None:
    assert scan_kind(name) == kind


def test_other_types_are_refused_with_the_accepted_list() -> None:
    with pytest.raises(UploadError, match=r"report.pdf: file type '.pdf' is not accepted.*NIfTI"):
        scan_kind("report.pdf")
    with pytest.raises(UploadError, match="'no extension'"):
        scan_kind("README")


def test_size_limit_names_both_sizes(tmp_path: Path) -> None:
    path = tmp_path / "big.npy"
    np.save(path, np.zeros((130, 100, 100), dtype=np.uint8))  # 1.24 MB
    with pytest.raises(UploadError, match=r"big.npy is 1.2 MB; the limit is 1 MB"):
        open_scan(path, work_dir=tmp_path, **LIMITS)


def test_unreadable_files_say_why(tmp_path: Path) -> None:
    bad = tmp_path / "broken.png"
    bad.write_bytes(b"not a png")
    with pytest.raises(UploadError, match="broken.png cannot be read"):
        open_scan(bad, work_dir=tmp_path, **LIMITS)
    flat = tmp_path / "slice.npy"
    np.save(flat, np.zeros((8, 8), dtype=np.uint8))
    with pytest.raises(UploadError, match="2D image given as a 3D volume"):
        open_scan(flat, work_dir=tmp_path, **LIMITS)


def test_zipped_series_unpacks_and_reads(tmp_path: Path) -> None:
    scan = open_scan(_series_zip(tmp_path), work_dir=tmp_path / "uploads", **LIMITS)
    assert scan.kind == "3d" and Path(scan.path).parent == (tmp_path / "uploads")
    assert len(list(Path(scan.path).iterdir())) == 6  # the slices, not the __MACOSX entry
    assert scan.shape == (6, 12, 16) and scan.spacing == pytest.approx((5.0, 2.0, 2.0))  # SPL: d = slices
    assert 0.0 <= scan.pixels.min() and scan.pixels.max() <= 1.0 and scan.pixels.max() > 0.5
    assert "3D volume 6 x 12 x 16 voxels of 5 x 2 x 2 mm" in scan.describe()


def test_unsafe_or_oversized_zips_are_refused(tmp_path: Path) -> None:
    slip = tmp_path / "slip.zip"
    with zipfile.ZipFile(slip, "w") as zf:
        zf.writestr("../../evil.dcm", b"x")
    with pytest.raises(UploadError, match="would unpack outside its folder"):
        open_scan(slip, work_dir=tmp_path / "u", **LIMITS)
    bomb = tmp_path / "bomb.zip"
    with zipfile.ZipFile(bomb, "w", compression=zipfile.ZIP_DEFLATED) as zf:
        zf.writestr("a.dcm", b"\0" * (5 * 2**20))
    with pytest.raises(UploadError, match="unpacks to 5 MB; the limit is 4 MB"):
        open_scan(bomb, work_dir=tmp_path / "u", **LIMITS)
    two = tmp_path / "two.zip"
    with zipfile.ZipFile(two, "w") as zf:
        zf.writestr("a/1.dcm", b"x")
        zf.writestr("b/1.dcm", b"x")
    with pytest.raises(UploadError, match="one DICOM series in one folder; it has files in 2"):
        open_scan(two, work_dir=tmp_path / "u", **LIMITS)
    notzip = tmp_path / "fake.zip"
    notzip.write_bytes(b"hello")
    with pytest.raises(UploadError, match="not a valid zip"):
        open_scan(notzip, work_dir=tmp_path / "u", **LIMITS)


def test_slice_views_follow_the_radiological_layout(tmp_path: Path) -> None:
    # RAS+ NIfTI [x=4, y=6, z=8] (x grows to the patient's right, y anterior, z superior), 1 x 2 x 3 mm
    # voxels; one bright voxel at the right, anterior, top corner
    data = np.zeros((4, 6, 8), dtype=np.float32)
    data[3, 5, 7] = 1.0
    data[1, 1, 1] = 0.5  # so the volume is not blank elsewhere
    nib.save(nib.Nifti1Image(data, np.diag([1.0, 2.0, 3.0, 1.0])), tmp_path / "v.nii.gz")
    scan = open_scan(tmp_path / "v.nii.gz", work_dir=tmp_path, **LIMITS)
    assert scan.shape == (8, 6, 4) and scan.spacing == pytest.approx((3.0, 2.0, 1.0))  # [S, P, L]
    # SPL: d=7 is the top slice; row 0 is anterior (y=5); column 0 is the patient's right (x=3)
    assert scan.pixels[7, 0, 0] == 1.0
    axial = render_slice(scan, "axial", 7, max_side=12)  # 12 x 4 mm -> 12 x 4 px... scaled to 12 rows
    assert axial.shape == (12, 4, 3) and axial[0, 0, 0] > 200 and axial[-1, -1, 0] == 0
    coronal = render_slice(scan, "coronal", 0, max_side=24)  # rows: 8 slices x 3 mm, superior first
    assert coronal.shape == (24, 4, 3) and coronal[0, 0, 0] > 200
    sagittal = render_slice(scan, "sagittal", 0, max_side=24)  # columns: anterior -> posterior
    assert sagittal.shape == (24, 12, 3) and sagittal[0, 0, 0] > 200
    assert render_slice(scan, "axial", 99).shape[0] == 384  # index clipped to the last slice


def test_2d_dicom_and_jpeg(tmp_path: Path) -> None:
    dicom = open_scan(get_testdata_file("CT_small.dcm", download=False), work_dir=tmp_path, **LIMITS)
    assert dicom.kind == "2d" and dicom.shape == (128, 128) and dicom.pixels.max() <= 1.0
    Image.fromarray(np.full((8, 12, 3), 200, dtype=np.uint8)).save(tmp_path / "x.jpg")
    jpeg = open_scan(tmp_path / "x.jpg", work_dir=tmp_path, **LIMITS)
    assert jpeg.describe() == "x.jpg: 2D image 8 x 12 pixels"


def test_2d_view(tmp_path: Path) -> None:
    scan = Scan("2d", "x.png", "x.png", np.full((10, 20, 1), 0.5, dtype=np.float32))
    view = render_slice(scan, "axial", 0, max_side=40)
    assert view.shape == (20, 40, 3) and int(view[5, 5, 0]) == 128
