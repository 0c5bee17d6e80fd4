"""2D DICOM display values: enhanced files' functional groups, and every file of pydicom-data against pydicom.

The reference is pydicom's own ``apply_modality_lut`` + ``apply_voi_lut`` on the frame's attributes (an
enhanced file's shared, then per-frame, functional groups copied to the top level, where those functions
look), scaled to [0, 1] by the VOI output range pydicom defines (window: the stored range through the
rescale; VOI LUT: its nominal ``2**bits - 1``), min-max when the file has no VOI, inverted for
MONOCHROME1; colour and palette images as RGB over their full range.
"""

from __future__ import annotations

import re
import zipfile

import numpy as np
import pydicom
import pytest
from pydicom.pixels import apply_color_lut, apply_modality_lut, apply_voi_lut, pixel_array

from medmvl.assets import fetch_distribution, parse_ref, resolve_path
from medmvl.data.images import ImageReadError, load_image
from tests.helpers.ct import series_slices, small_ct, write_enhanced_ct
from tests.helpers.offline import PYDICOM_DATA

MACROS = (
    "PixelMeasuresSequence",
    "PlanePositionSequence",
    "PlaneOrientationSequence",
    "PixelValueTransformationSequence",
    "FrameVOILUTSequence",
)
REASONS = (  # what a refusal must say
    r"cannot decode its .+ pixel data: .*(requires|missing)|has no pixel data \((no element could be read|"
    r"it has an image's Rows)|InvalidDicomError: File is missing DICOM File Meta|photometric interpretation"
)


def test_enhanced_ct_window_from_shared_functional_groups():
    """pydicom-data's Enhanced CT: rescale -1024 and window 49/102 only in its functional groups."""
    path = resolve_path(PYDICOM_DATA + "eCT_Supplemental.dcm")
    raw = pydicom.dcmread(path).pixel_array  # [2, 512, 512]
    for frame in (0, 1):
        out = load_image(path, frame=frame)[..., 0]
        hu = raw[frame].astype(np.float64) - 1024
        np.testing.assert_allclose(out, np.clip((hu - 48.5) / 101 + 0.5, 0, 1), atol=1e-6)
    hu = raw[0].astype(np.float64) - 1024
    soft = (hu >= 20) & (hu <= 60)
    assert 0.40 < float(load_image(path)[..., 0][soft].mean()) < 0.44  # min-max scaling gave 0.89


def test_enhanced_frames_take_their_own_rescale_and_window(tmp_path):
    """Per-frame rescale and window override the shared ones, frame by frame."""
    hu, _, affine = small_ct()
    slices = series_slices(hu, affine)[10:14]
    for k, s in enumerate(slices):
        s.update(slope=(1.0, 0.5, 0.25, 1.0)[k], intercept=(-1024.0, -2048.0, -1000.0, -3000.0)[k])
    slices[2]["window"] = (400.0, 1500.0)  # a bone window on one frame; the others keep the shared one
    path = write_enhanced_ct(tmp_path / "ct.dcm", slices, window=(40.0, 400.0))
    for k, s in enumerate(slices):
        centre, width = s.get("window", (40.0, 400.0))
        expected = np.clip((s["pixels"].astype(np.float64) - (centre - 0.5)) / (width - 1) + 0.5, 0, 1)
        np.testing.assert_allclose(load_image(path, frame=k)[..., 0], expected, atol=1e-6)


def _names() -> list[str]:
    name, version, member = parse_ref(PYDICOM_DATA)
    with zipfile.ZipFile(fetch_distribution(name, version)) as zf:
        return sorted(n[len(member) :] for n in zf.namelist() if n.startswith(member) and n.endswith(".dcm"))


def _frame_attributes(ds: pydicom.Dataset, frame: int) -> None:
    """Copy the frame's functional-group attributes (shared, then per-frame) to the top level of ``ds``."""
    groups = [ds.SharedFunctionalGroupsSequence[0]] if ds.get("SharedFunctionalGroupsSequence") else []
    if ds.get("PerFrameFunctionalGroupsSequence"):
        groups.append(ds.PerFrameFunctionalGroupsSequence[frame])
    for group in groups:
        for macro in MACROS:
            if group.get(macro):
                for elem in group[macro][0]:
                    ds[elem.tag] = elem


def _voi_output_range(ds: pydicom.Dataset) -> tuple[float, float]:
    """pydicom's definition: a VOI LUT spans ``2**bits - 1``; a window the stored range through the rescale."""
    lut = ds.get("VOILUTSequence")
    if lut and lut[0].get("LUTData") is not None:
        return 0.0, 2.0 ** int(lut[0].LUTDescriptor[2]) - 1
    if ds.get("ModalityLUTSequence"):
        lo, hi = 0.0, 2.0 ** int(ds.ModalityLUTSequence[0].LUTDescriptor[2]) - 1
    elif ds.PixelRepresentation == 0:
        lo, hi = 0.0, 2.0**ds.BitsStored - 1
    else:
        lo, hi = -(2.0 ** (ds.BitsStored - 1)), 2.0 ** (ds.BitsStored - 1) - 1
    if ds.get("RescaleSlope") is not None and ds.get("RescaleIntercept") is not None:
        lo, hi = (v * float(ds.RescaleSlope) + float(ds.RescaleIntercept) for v in (lo, hi))
    return lo, hi


def pydicom_display(path, frame: int) -> np.ndarray:
    """The reference display values of ``frame``: ``[h, w]`` or ``[h, w, 3]`` in [0, 1]."""
    ds = pydicom.dcmread(path)
    frames = int(ds.get("NumberOfFrames", 1) or 1)
    arr = pixel_array(ds, index=frame if frames > 1 else None)
    _frame_attributes(ds, frame)
    if int(ds.get("SamplesPerPixel", 1)) == 3:
        return arr / (2.0 ** int(ds.BitsStored) - 1)
    if ds.PhotometricInterpretation == "PALETTE COLOR":
        rgb = apply_color_lut(arr, ds)
        return rgb / float(np.iinfo(rgb.dtype).max)
    values = apply_modality_lut(arr, ds)  # integers stay integers: pydicom's VOI LUT indexes with them
    lut = ds.get("VOILUTSequence")
    has_voi = bool(lut and lut[0].get("LUTData") is not None) or (
        ds.get("WindowCenter") is not None and ds.get("WindowWidth") is not None
    )
    if has_voi:
        lo, hi = _voi_output_range(ds)
        out = (np.asarray(apply_voi_lut(values, ds, index=0), dtype=np.float64) - lo) / (hi - lo)
    else:
        lo, hi = float(values.min()), float(values.max())
        out = (values.astype(np.float64) - lo) / (hi - lo)
    if ds.PhotometricInterpretation == "MONOCHROME1":
        out = 1.0 - out
    return np.clip(out, 0.0, 1.0)


@pytest.mark.parametrize("name", _names())
def test_pydicom_data_loads_like_pydicom_or_is_refused_with_a_reason(name):
    path = resolve_path(PYDICOM_DATA + name)
    try:
        frames = int(pydicom.dcmread(path, stop_before_pixels=True).get("NumberOfFrames", 1) or 1)
    except Exception:  # not readable as DICOM without force: medmvl must refuse it
        frames = 1
    for frame in sorted({0, frames - 1}):
        try:
            ours = load_image(path, frame=frame)
        except ImageReadError as err:
            message = str(err)
            assert str(path) in message and re.search(REASONS, message), message
            with pytest.raises(Exception):  # noqa: B017 - pydicom cannot decode it either
                pydicom_display(path, frame)
            return
        ref = pydicom_display(path, frame)
        assert ours.shape == (ref.shape if ref.ndim == 3 else (*ref.shape, 1))
        np.testing.assert_allclose(ours[..., 0] if ref.ndim == 2 else ours, ref, atol=1e-6, rtol=0)
