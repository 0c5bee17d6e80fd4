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
    """One frame as display values: palette/colour to RGB, else modality LUT, VOI (window) or min-max.

    Rescale and window come from the frame's attributes: the top level of a classic file, the shared and
    per-frame functional groups of an enhanced one (``medmvl.data.dicom.frame_dataset``).
    """
    from pydicom.pixels import apply_color_lut

    from medmvl.data.dicom import frame_dataset  # imported here: images.py is imported first

    ds = pydicom.dcmread(path)
    if not any(tag in ds for tag in _PIXEL_TAGS):
        raise ImageReadError(
            f"DICOM {str(path)!r} has no pixel data ({_why_no_pixels(ds)}); expected an image object"
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
    try:
        arr = pixel_array(ds, index=frame if frames > 1 else None)  # [h, w] or [h, w, 3] (YBR -> RGB)
    except RuntimeError as err:  # no installed decoder for the compression (pydicom names the plugins)
        syntax = ds.file_meta.get("TransferSyntaxUID", "unknown") if hasattr(ds, "file_meta") else "unknown"
        name = getattr(syntax, "name", str(syntax))
        raise ImageReadError(f"DICOM {str(path)!r}: cannot decode its {name} pixel data: {err}") from err
    view = frame_dataset(ds, frame)  # this frame's rescale / window, also from functional groups
    photometric = str(view.get("PhotometricInterpretation", "MONOCHROME2"))
    if int(view.get("SamplesPerPixel", 1)) == 3:
        return arr.astype(np.float64) / (2 ** int(view.get("BitsStored", 8)) - 1)
    if photometric == "PALETTE COLOR":  # indices into the file's RGB lookup tables (8- or 16-bit entries)
        rgb = apply_color_lut(arr, view)
        return rgb.astype(np.float64) / np.iinfo(rgb.dtype).max
    if photometric not in ("MONOCHROME1", "MONOCHROME2"):
        raise ImageReadError(
            f"DICOM {str(path)!r}: photometric interpretation {photometric!r} is not "
            "supported; expected MONOCHROME1, MONOCHROME2, PALETTE COLOR, RGB or YBR"
        )
    arr = apply_modality_lut(arr, view)  # stored values -> modality units (e.g. HU)
    if _has_voi(view):
        lo, hi = _voi_range(view)
        out = (apply_voi_lut(arr, view, index=0) - lo) / (hi - lo) if hi > lo else _min_max(arr)
    else:
        out = _min_max(arr)
    return 1.0 - out if photometric == "MONOCHROME1" else out


def _why_no_pixels(ds: pydicom.Dataset) -> str:
    if len(ds) == 0:  # pydicom stops at a broken sequence and keeps nothing
        return "no element could be read: the file is truncated or corrupt"
    if "Rows" in ds:
        return "it has an image's Rows and Columns: the file is truncated or its pixel data was removed"
    return "e.g. a structured report or presentation state"


def _has_voi(ds: pydicom.Dataset) -> bool:
    """True when pydicom's ``apply_voi_lut`` would apply a VOI LUT or a window (both values present)."""
    lut = ds.get("VOILUTSequence")
    if lut and lut[0].get("LUTDescriptor") is not None and lut[0].get("LUTData") is not None:
        return True
    return ds.get("WindowCenter") is not None and ds.get("WindowWidth") is not None


def _voi_range(ds: pydicom.Dataset) -> tuple[float, float]:
    """Output range of the dataset's VOI transform, found by passing its extreme inputs through it."""
    lut = ds.get("VOILUTSequence")
    if lut and lut[0].get("LUTDescriptor") is not None and lut[0].get("LUTData") is not None:
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


HF_PROCESSOR_CLASSES = ("CLIPImageProcessor", "SiglipImageProcessor")


def to_uint8(image: np.ndarray) -> np.ndarray:
    """The 8-bit image an HF image processor takes for a ``load_image`` array: ``rint(255 x)``, uint8.

    The one point where an HF-family encoder's pixels leave float: an 8-bit file comes back exactly,
    16-bit and DICOM display values (after the window) are quantised to 256 grey levels here. Feed this
    image to an exported processor to get medmvl's pixels for a file the processor cannot read itself.
    """
    return np.rint(np.clip(np.asarray(image, dtype=np.float64), 0.0, 1.0) * 255.0).astype(np.uint8)


def hf_image_processor(preprocess: Mapping[str, Any]) -> Any:
    """The transformers image processor of a 2D encoder's ``preprocess``; ``None`` without ``hf_processor``.

    ``preprocess["hf_processor"]`` holds ``class`` (``SiglipImageProcessor`` / ``CLIPImageProcessor``),
    ``resample`` (a ``PILImageResampling`` name, e.g. ``bicubic``) and ``rescale_factor``; the size, mean
    and std are ``image_size``, ``image_mean`` and ``image_std``. It resizes the 8-bit image to
    ``image_size`` (aspect ratio not kept, nothing cropped), rescales and normalises. ``ImageTransform``
    runs this processor and the Llava export writes it, so training, inference and serving share pixels.
    """
    spec = preprocess.get("hf_processor")
    if spec is None:
        return None
    return _hf_processor(spec, preprocess["image_size"], preprocess["image_mean"], preprocess["image_std"])


def _hf_processor(
    spec: Mapping[str, Any], size: Sequence[int], mean: Sequence[float], std: Sequence[float]
) -> Any:
    import transformers
    from transformers.image_utils import PILImageResampling

    name, resample = spec["class"], str(spec["resample"]).upper()
    if name not in HF_PROCESSOR_CLASSES or resample not in PILImageResampling.__members__:
        raise ValueError(
            f"hf_processor {dict(spec)}: class must be one of {list(HF_PROCESSOR_CLASSES)} and resample one "
            f"of {[m.lower() for m in PILImageResampling.__members__]}"
        )
    h, w = (size, size) if isinstance(size, int) else tuple(size)
    kwargs: dict[str, Any] = {
        "do_resize": True,
        "size": {"height": h, "width": w},
        "resample": PILImageResampling[resample],
        "do_rescale": True,
        "rescale_factor": float(spec["rescale_factor"]),
        "do_normalize": True,
        "image_mean": [float(v) for v in mean],
        "image_std": [float(v) for v in std],
        "do_convert_rgb": True,
    }
    if name == "CLIPImageProcessor":  # resized to the encoder's size already: no centre crop
        kwargs.update(do_center_crop=False, crop_size={"height": h, "width": w})
    return getattr(transformers, name)(**kwargs)


class ImageTransform:
    """Resize, (optionally) augment, and normalise a ``load_image`` array for an encoder.

    Two pipelines, chosen by the encoder's ``preprocess``:

    - with ``hf_processor`` (CLIP/SigLIP towers): the transformers image processor itself
      (:func:`hf_image_processor`) runs on the 8-bit image (:func:`to_uint8`): the pixels are exactly
      those of the processor a Llava export writes. Training augmentations act on the 8-bit image between
      the processor's resize and its rescale/normalise (``crop_scale`` replaces the resize by a random
      resized crop with the processor's resampling).
    - without (``patch``, ``caption_slots``...): the float image is resized (antialiased bilinear), then
      augmented and normalised.

    Args:
        image_size: Output size, ``int`` (square) or ``(h, w)``.
        mean: Per-channel normalisation mean (length ``channels``).
        std: Per-channel normalisation std (length ``channels``).
        channels: Output channels (1 or 3): grey is repeated to 3, colour is converted to luminance for 1.
        train: Apply ``augment``; evaluation transforms are deterministic.
        augment: ``Augment`` or a mapping of its fields.
        hf_processor: The encoder's ``preprocess["hf_processor"]`` (see :func:`hf_image_processor`);
            needs ``channels=3``.
    """

    def __init__(
        self,
        image_size: int | Sequence[int],
        mean: Sequence[float],
        std: Sequence[float],
        channels: int = 3,
        train: bool = False,
        augment: Augment | Mapping[str, Any] | None = None,
        hf_processor: Mapping[str, Any] | None = None,
    ) -> None:
        size = (image_size, image_size) if isinstance(image_size, int) else tuple(image_size)
        if channels not in (1, 3) or len(mean) != channels or len(std) != channels:
            raise ValueError(f"channels must be 1 or 3 with one mean/std each; got {channels}, {mean}, {std}")
        aug = augment if isinstance(augment, Augment) else Augment(**dict(augment or {}))
        if aug.crop_scale is not None:
            aug = Augment(**{**aug.__dict__, "crop_scale": tuple(aug.crop_scale)})
        self.channels, self.size, self.augment = channels, size, aug
        self.processor: Any = None
        if hf_processor is not None:
            if channels != 3:
                raise ValueError(f"an HF image processor gives RGB: channels must be 3, got {channels}")
            self.processor = _hf_processor(hf_processor, size, mean, std)
            self._hf_augment(train, aug, str(hf_processor["resample"]))
            return
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

    def _hf_augment(self, train: bool, aug: Augment, resample: str) -> None:
        """The 8-bit training steps around the processor: ``crop`` (for its resize), then ``augment``."""
        self.crop: v2.Transform | None = None
        steps: list[v2.Transform] = []
        if train:
            if aug.crop_scale:
                mode = resample.upper()
                if mode not in ("NEAREST", "BILINEAR", "BICUBIC"):  # box/hamming/lanczos: not on tensors
                    mode = "BICUBIC"
                interpolation = v2.InterpolationMode[mode]
                self.crop = v2.RandomResizedCrop(
                    self.size, scale=aug.crop_scale, interpolation=interpolation, antialias=True
                )
            if aug.hflip:
                steps.append(v2.RandomHorizontalFlip(aug.hflip))
            if aug.vflip:
                steps.append(v2.RandomVerticalFlip(aug.vflip))
            if aug.rotation:
                steps.append(v2.RandomRotation(aug.rotation))
            if aug.brightness or aug.contrast:
                steps.append(v2.ColorJitter(brightness=aug.brightness, contrast=aug.contrast))
        self.transform = v2.Compose(steps) if steps else None

    @classmethod
    def from_preprocess(cls, preprocess: Mapping[str, Any], **kwargs: Any) -> ImageTransform:
        """Build from a 2D encoder's ``preprocess`` (``image_size``, ``image_mean``/``std``, ``channels``,
        and ``hf_processor`` for CLIP/SigLIP towers).

        The one place a 2D encoder's preprocessing becomes a transform: training, inference and the demo's
        caption pre-training all build theirs here. ``kwargs``: ``train`` and ``augment``. A model imported
        from MedM-VL (``preprocess["mode"] == "medm_vl"``) gets MedM-VL's own image-processor path
        (:class:`medmvl.interop.medm_vl.pixels.MedmVlImageTransform`; MedM-VL has no 2D augmentation).
        """
        if preprocess.get("mode") == "medm_vl":
            from medmvl.interop.medm_vl.pixels import MedmVlImageTransform

            return MedmVlImageTransform(preprocess["medm_vl"])  # type: ignore[return-value]
        return cls(
            preprocess["image_size"],
            preprocess["image_mean"],
            preprocess["image_std"],
            channels=preprocess["channels"],
            hf_processor=preprocess.get("hf_processor"),
            **kwargs,
        )

    def __call__(self, image: np.ndarray) -> torch.Tensor:
        """Map an [h, w, c] float array in [0, 1] to a normalised FloatTensor [channels, *image_size]."""
        if self.processor is not None:
            return self._hf_call(image)
        x = torch.from_numpy(np.ascontiguousarray(image, dtype=np.float32)).permute(2, 0, 1)  # [c, h, w]
        if x.shape[0] != self.channels:
            if self.channels == 3:
                x = x.expand(3, -1, -1)  # grey -> [3, h, w]
            else:
                weights = torch.tensor([0.299, 0.587, 0.114]).view(3, 1, 1)
                x = (x * weights).sum(0, keepdim=True)  # RGB -> luminance [1, h, w]
        return self.transform(x.contiguous())

    def _hf_call(self, image: np.ndarray) -> torch.Tensor:
        x = torch.from_numpy(to_uint8(image)).permute(2, 0, 1)  # uint8 [c, h, w]
        x = x.expand(3, -1, -1).contiguous()  # grey -> RGB, as the processor converts an "L" image
        if self.crop is None and self.transform is None:
            return self._process(x)
        x = self.crop(x) if self.crop is not None else self._process(x, do_rescale=False, do_normalize=False)
        if self.transform is not None:
            x = self.transform(x)  # uint8 [3, *image_size]
        return self._process(x.contiguous(), do_resize=False)

    def _process(self, x: torch.Tensor, **overrides: bool) -> torch.Tensor:
        """The HF processor on one uint8 [3, h, w] image (``overrides``: skip some of its steps)."""
        out = self.processor(images=x, input_data_format="channels_first", return_tensors="pt", **overrides)
        return out["pixel_values"][0]
