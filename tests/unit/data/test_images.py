"""Image loading (PIL and real DICOMs from pydicom-data) and the encoder transform."""

from __future__ import annotations

import numpy as np
import pydicom
import pytest
import torch
from PIL import Image
from pydicom.data import get_testdata_file
from pydicom.dataset import FileMetaDataset
from pydicom.uid import ExplicitVRLittleEndian, generate_uid

from medmvl.assets import resolve_path
from medmvl.data.images import ImageReadError, ImageTransform, load_image
from tests.helpers.files import write_png
from tests.helpers.offline import PYDICOM_DATA


def dicom(name: str) -> tuple[str, np.ndarray]:
    path = str(resolve_path(PYDICOM_DATA + name))
    return path, pydicom.dcmread(path).pixel_array


def test_png_grey_rgb_16bit_and_jpeg(tmp_path):
    grey = load_image(write_png(tmp_path / "g.png", 51, (5, 7)))
    assert grey.shape == (5, 7, 1) and grey.dtype == np.float32
    np.testing.assert_allclose(grey, 0.2, atol=1e-6)
    rgb = load_image(write_png(tmp_path / "c.png", 255, (4, 4), "RGB"))
    assert rgb.shape == (4, 4, 3) and rgb[..., 0].min() == 1.0 and rgb[..., 1:].max() == 0.0
    Image.fromarray(np.full((3, 3), 32768, dtype=np.uint16)).save(tmp_path / "w.png")
    np.testing.assert_allclose(load_image(tmp_path / "w.png"), 32768 / 65535, atol=1e-6)
    Image.fromarray(np.full((8, 8), 200, dtype=np.uint8)).save(tmp_path / "j.jpg")
    np.testing.assert_allclose(load_image(tmp_path / "j.jpg"), 200 / 255, atol=2 / 255)


def test_monochrome1_chest_xray_is_inverted_with_its_window():
    path, raw = dicom("RG1_UNCR.dcm")  # CR, MONOCHROME1, window 15000/30000, no rescale
    out = load_image(path)[..., 0]
    assert out.shape == raw.shape == (1955, 1841)
    lung, spine = (slice(590, 780), slice(370, 550)), (slice(590, 780), slice(865, 975))
    assert raw[lung].mean() > raw[spine].mean()  # MONOCHROME1 stores air bright...
    assert out[lung].mean() < out[spine].mean() - 0.2  # ...and displays it dark
    expected = 1 - np.clip((raw.astype(np.float64) - 14999.5) / 29999 + 0.5, 0, 1)
    np.testing.assert_allclose(out, expected, atol=1e-5)


def test_ct_rescale_to_hounsfield_then_brain_window():
    path, raw = dicom("693_UNCR.dcm")  # slope 1, intercept -1024, window 40/100 HU
    out = load_image(path)[..., 0]
    hu = raw.astype(np.float64) - 1024
    np.testing.assert_allclose(out, np.clip((hu - 39.5) / 99 + 0.5, 0, 1), atol=1e-5)
    assert (
        0.05 < (out == 1.0).mean() < 0.5 and 0 < ((out > 0) & (out < 1)).mean()
    )  # bone saturates, brain in range


def test_ct_without_window_is_min_max_scaled():
    path = get_testdata_file("CT_small.dcm")
    raw = pydicom.dcmread(path).pixel_array.astype(np.float64)
    np.testing.assert_allclose(
        load_image(path)[..., 0], (raw - raw.min()) / (raw.max() - raw.min()), atol=1e-6
    )


def test_rgb_ultrasound_stays_rgb():
    path, raw = dicom("US1_UNCR.dcm")
    out = load_image(path)
    assert out.shape == (480, 640, 3)
    np.testing.assert_allclose(out, raw / 255.0, atol=1e-6)


def test_multiframe_frame_selection():
    path, raw = dicom("emri_small.dcm")  # [10, 64, 64]
    frame5 = load_image(path, frame=5)[..., 0]
    expected = (raw[5] - raw[5].min()) / float(raw[5].max() - raw[5].min())
    np.testing.assert_allclose(frame5, expected, atol=1e-6)
    assert not np.allclose(frame5, load_image(path, frame=0)[..., 0])
    with pytest.raises(ImageReadError, match="has 10 frame\\(s\\); frame 10 does not exist"):
        load_image(path, frame=10)


def test_read_errors_name_the_path(tmp_path):
    with pytest.raises(ImageReadError, match="missing.png' does not exist"):
        load_image(tmp_path / "missing.png")
    (tmp_path / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n garbage")
    with pytest.raises(ImageReadError, match="cannot read image .*broken.png"):
        load_image(tmp_path / "broken.png")
    (tmp_path / "broken.dcm").write_bytes(b"not a dicom at all")
    with pytest.raises(ImageReadError, match="cannot read image .*broken.dcm"):
        load_image(tmp_path / "broken.dcm")
    ds = pydicom.Dataset()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.SOPClassUID = ds.file_meta.MediaStorageSOPClassUID = "1.2.840.10008.5.1.4.1.1.88.11"  # Basic Text SR
    ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID = generate_uid()
    ds.Modality = "SR"
    ds.save_as(tmp_path / "report.dcm", enforce_file_format=True)
    with pytest.raises(ImageReadError, match="report.dcm' has no pixel data"):
        load_image(tmp_path / "report.dcm")


def test_transform_resizes_normalises_and_converts_channels():
    grey = np.full((10, 20, 1), 0.75, dtype=np.float32)
    out = ImageTransform(8, [0.5] * 3, [0.25] * 3)(grey)
    assert out.shape == (3, 8, 8) and out.dtype == torch.float32
    torch.testing.assert_close(out, torch.ones(3, 8, 8))
    rgb = np.zeros((6, 6, 3), dtype=np.float32)
    rgb[..., 1] = 1.0
    single = ImageTransform((4, 6), [0.0], [1.0], channels=1)(rgb)
    assert single.shape == (1, 4, 6)
    torch.testing.assert_close(single, torch.full((1, 4, 6), 0.587))


def test_train_augmentations_and_eval_determinism():
    rng = np.random.default_rng(0)
    image = rng.random((16, 16, 1), dtype=np.float32)
    flip = ImageTransform(16, [0.0] * 3, [1.0] * 3, train=True, augment={"hflip": 1.0})
    plain = ImageTransform(16, [0.0] * 3, [1.0] * 3)
    torch.testing.assert_close(flip(image), plain(image).flip(-1))
    torch.testing.assert_close(plain(image), plain(image))
    crop = ImageTransform(
        8, [0.0] * 3, [1.0] * 3, train=True, augment={"crop_scale": [0.3, 0.5], "contrast": 0.5}
    )
    torch.manual_seed(0)
    a, b = crop(image), crop(image)
    assert a.shape == (3, 8, 8) and not torch.equal(a, b)
    with pytest.raises(TypeError):
        ImageTransform(8, [0.0] * 3, [1.0] * 3, augment={"mixup": 0.2})
    with pytest.raises(ValueError, match="one mean/std each"):
        ImageTransform(8, [0.5], [0.5], channels=3)
