"""Read 2D medical images (PNG/JPEG/TIFF and DICOM) into float arrays and preprocess them for an encoder.

DICOM pixels are not display values: CR/DX files may be MONOCHROME1 (white = low), CT stores raw values
with a rescale slope/intercept to Hounsfield units, and most files carry the window a radiologist would
view them with. ``load_image`` applies the modality LUT, the VOI LUT / window (else min-max), and inverts
MONOCHROME1, so every image reaches the encoder the way it would be displayed. pydicom implements the
LUTs; this module only chooses and normalises.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pydicom
import torch
from PIL import Image, UnidentifiedImageError
from pydicom.errors import InvalidDicomError
from pydicom.pixels import apply_modality_lut, apply_voi_lut, pixel_array
from torchvision.transforms import v2

_PIXEL_TAGS = ("PixelData", "FloatPixelData", "DoubleFloatPixelData")


class ImageReadError(OSError):
    """An image file is missing, corrupt, or has no usable pixels; the message names the path."""


def is_dicom(path: str | os.PathLike) -> bool:
    """True for ``.dcm``/``.dicom`` files and files with the ``DICM`` preamble marker."""
    if str(path).lower().endswith((".dcm", ".dicom")):
        return True
    with open(path, "rb") as f:
        f.seek(128)
        return f.read(4) == b"DICM"


def load_image(path: str | os.PathLike, *, frame: int = 0) -> np.ndarray:
    """Load a 2D image as display values.

    Args:
        path: PNG/JPEG/TIFF/... (PIL) or DICOM file.
        frame: Frame of a multi-frame DICOM (or page of a multi-page image).

    Returns:
        float32 array [h, w, c] in [0, 1]; ``c`` is 1 (grey) or 3 (colour).

    Raises:
        ImageReadError: Missing file, unreadable or corrupt image, DICOM without pixel data, bad frame,
            NaN/inf pixel values, or more pixels than PIL's decompression-bomb limit
            (``PIL.Image.MAX_IMAGE_PIXELS``, 89.5 M by default; raise it for genuinely huge images).
    """
    path = Path(path)
    if not path.is_file():
        raise ImageReadError(f"image file {str(path)!r} does not exist")
    try:
        arr = _load_dicom(path, frame) if is_dicom(path) else _load_pil(path, frame)
    except ImageReadError:
        raise
    except (
        OSError,
        ValueError,
        SyntaxError,
        EOFError,
        InvalidDicomError,
        UnidentifiedImageError,
        AttributeError,
        Image.DecompressionBombError,
    ) as err:
        raise ImageReadError(f"cannot read image {str(path)!r}: {type(err).__name__}: {err}") from err
    arr = arr.astype(np.float32)
    finite = np.isfinite(arr)
    if not finite.all():  # NaN/inf (float TIFF, float DICOM) would reach the encoder as NaN features
        raise ImageReadError(
            f"image {str(path)!r} has {int(arr.size - finite.sum())} NaN/inf pixel value(s) of {arr.size}"
        )
    return np.clip(arr[..., None] if arr.ndim == 2 else arr, 0.0, 1.0)


def _load_pil(path: Path, frame: int) -> np.ndarray:
    with Image.open(path) as img:  # raises DecompressionBombError above 2 x MAX_IMAGE_PIXELS
        limit = Image.MAX_IMAGE_PIXELS
        if limit is not None and img.width * img.height > limit:  # PIL only warns up to 2 x the limit
            raise ImageReadError(
                f"image {str(path)!r} is {img.width} x {img.height} = {img.width * img.height} pixels, "
                f"more than PIL.Image.MAX_IMAGE_PIXELS = {limit} (a decompression bomb, or an image to "
                "downscale before training)"
            )
        if frame:
            img.seek(frame)
        img.load()
        if img.mode in ("I;16", "I;16B", "I;16L", "I"):
            return np.asarray(img, dtype=np.float64) / 65535.0
        if img.mode == "F":
            return _min_max(np.asarray(img, dtype=np.float64))
        img = img.convert("L" if img.mode in ("1", "L", "LA") else "RGB")
        return np.asarray(img, dtype=np.float64) / 255.0


def _load_dicom(path: Path, frame: int) -> np.ndarray:
    ds = pydicom.dcmread(path)
    if not any(tag in ds for tag in _PIXEL_TAGS):
        raise ImageReadError(
            f"DICOM {str(path)!r} has no pixel data (e.g. a structured report or presentation "
            "state); expected an image object"
        )
    frames = int(ds.get("NumberOfFrames", 1) or 1)
    if not 0 <= frame < frames:
        raise ImageReadError(f"DICOM {str(path)!r} has {frames} frame(s); frame {frame} does not exist")
    pixels, limit = int(ds.get("Rows", 0) or 0) * int(ds.get("Columns", 0) or 0), Image.MAX_IMAGE_PIXELS
    if limit is not None and pixels > limit:  # the same decompression-bomb limit as PIL images
        raise ImageReadError(
            f"DICOM {str(path)!r} frames are {ds.Rows} x {ds.Columns} = {pixels} pixels, more than "
            f"PIL.Image.MAX_IMAGE_PIXELS = {limit}"
        )
    arr = pixel_array(ds, index=frame if frames > 1 else None)  # [h, w] or [h, w, 3] (YBR -> RGB)
    photometric = str(ds.get("PhotometricInterpretation", "MONOCHROME2"))
    if int(ds.get("SamplesPerPixel", 1)) == 3:
        return arr.astype(np.float64) / (2 ** int(ds.get("BitsStored", 8)) - 1)
    if photometric not in ("MONOCHROME1", "MONOCHROME2"):
        raise ImageReadError(
            f"DICOM {str(path)!r}: photometric interpretation {photometric!r} is not "
            "supported; expected MONOCHROME1, MONOCHROME2, RGB or YBR"
        )
    arr = apply_modality_lut(arr, ds)  # stored values -> modality units (e.g. HU)
    if "VOILUTSequence" in ds or "WindowCenter" in ds:
        lo, hi = _voi_range(ds)
        out = (apply_voi_lut(arr, ds, index=0) - lo) / (hi - lo) if hi > lo else _min_max(arr)
    else:
        out = _min_max(arr)
    return 1.0 - out if photometric == "MONOCHROME1" else out


def _voi_range(ds: pydicom.Dataset) -> tuple[float, float]:
    """Output range of the dataset's VOI transform, found by passing its extreme inputs through it."""
    if "VOILUTSequence" in ds:
        entries, first = (int(v) for v in ds.VOILUTSequence[0].LUTDescriptor[:2])
        probe = np.arange(first, first + (entries or 65536))
    else:
        probe = np.array([-1e12, 1e12])
    out = np.asarray(apply_voi_lut(probe, ds, index=0), dtype=np.float64)
    return float(out.min()), float(out.max())


def _min_max(arr: np.ndarray) -> np.ndarray:
    arr = np.asarray(arr, dtype=np.float64)
    lo, hi = float(np.nanmin(arr)), float(np.nanmax(arr))
    return (arr - lo) / (hi - lo) if hi > lo else np.zeros_like(arr)


@dataclass(frozen=True)
class Augment:
    """Training augmentations (all off by default).

    Attributes:
        crop_scale: ``(min, max)`` area fraction of ``RandomResizedCrop``; ``None`` = plain resize.
        hflip: Probability of a horizontal flip. Off by default: it swaps left and right, which changes
            the answer to laterality questions.
        vflip: Probability of a vertical flip.
        rotation: Maximum rotation in degrees.
        brightness: ``ColorJitter`` brightness factor range.
        contrast: ``ColorJitter`` contrast factor range.
    """

    crop_scale: tuple[float, float] | None = None
    hflip: float = 0.0
    vflip: float = 0.0
    rotation: float = 0.0
    brightness: float = 0.0
    contrast: float = 0.0


class ImageTransform:
    """Resize, (optionally) augment, and normalise a ``load_image`` array for an encoder.

    Args:
        image_size: Output size, ``int`` (square) or ``(h, w)``.
        mean: Per-channel normalisation mean (length ``channels``).
        std: Per-channel normalisation std (length ``channels``).
        channels: Output channels (1 or 3): grey is repeated to 3, colour is converted to luminance for 1.
        train: Apply ``augment``; evaluation transforms are deterministic.
        augment: ``Augment`` or a mapping of its fields.
    """

    def __init__(
        self,
        image_size: int | Sequence[int],
        mean: Sequence[float],
        std: Sequence[float],
        channels: int = 3,
        train: bool = False,
        augment: Augment | Mapping[str, Any] | None = None,
    ) -> None:
        size = (image_size, image_size) if isinstance(image_size, int) else tuple(image_size)
        if channels not in (1, 3) or len(mean) != channels or len(std) != channels:
            raise ValueError(f"channels must be 1 or 3 with one mean/std each; got {channels}, {mean}, {std}")
        aug = augment if isinstance(augment, Augment) else Augment(**dict(augment or {}))
        if aug.crop_scale is not None:
            aug = Augment(**{**aug.__dict__, "crop_scale": tuple(aug.crop_scale)})
        self.channels, self.size, self.augment = channels, size, aug
        steps: list[v2.Transform] = []
        if train and aug.crop_scale:
            steps.append(v2.RandomResizedCrop(size, scale=aug.crop_scale, antialias=True))
        else:
            steps.append(v2.Resize(size, antialias=True))
        if train:
            steps += [v2.RandomHorizontalFlip(aug.hflip), v2.RandomVerticalFlip(aug.vflip)]
            if aug.rotation:
                steps.append(v2.RandomRotation(aug.rotation))
            if aug.brightness or aug.contrast:
                steps.append(v2.ColorJitter(brightness=aug.brightness, contrast=aug.contrast))
        steps.append(v2.Normalize(list(mean), list(std)))
        self.transform = v2.Compose(steps)

    @classmethod
    def from_preprocess(cls, preprocess: Mapping[str, Any], **kwargs: Any) -> ImageTransform:
        """Build from a 2D encoder's ``preprocess`` (``image_size``, ``image_mean``/``std``, ``channels``).

        The one place a 2D encoder's preprocessing becomes a transform: training, inference and the demo's
        caption pre-training all build theirs here. ``kwargs``: ``train`` and ``augment``.
        """
        return cls(
            preprocess["image_size"],
            preprocess["image_mean"],
            preprocess["image_std"],
            channels=preprocess["channels"],
            **kwargs,
        )

    def __call__(self, image: np.ndarray) -> torch.Tensor:
        """Map an [h, w, c] float array in [0, 1] to a normalised FloatTensor [channels, *image_size]."""
        x = torch.from_numpy(np.ascontiguousarray(image, dtype=np.float32)).permute(2, 0, 1)  # [c, h, w]
        if x.shape[0] != self.channels:
            if self.channels == 3:
                x = x.expand(3, -1, -1)  # grey -> [3, h, w]
            else:
                weights = torch.tensor([0.299, 0.587, 0.114]).view(3, 1, 1)
                x = (x * weights).sum(0, keepdim=True)  # RGB -> luminance [1, h, w]
        return self.transform(x.contiguous())
