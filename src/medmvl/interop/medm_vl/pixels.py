"""MedM-VL's pixels: its image processor path and its CT volume paths (``preprocess.mode: medm_vl``).

An imported MedM-VL model keeps the preprocessing it was trained with; its encoders carry a ``medm_vl``
spec (set by :mod:`medmvl.interop.medm_vl.config`, saved with the model) and
``ImageTransform.from_preprocess`` / ``VolumeTransform.from_preprocess`` hand such a ``preprocess`` here.
What MedM-VL (``lvlm/dataset/dataset.py``, ``lvlm/model/encoder/*.py``) does, step by step:

* 2D (SigLIP, CLIP): the RGB 8-bit image through the tower's transformers image processor as 4.x ran it,
  on PIL: SigLIP resizes to ``size`` (``resample``, PIL bicubic for SigLIP), rescales (1/255) and
  normalises; CLIP resizes the shortest edge (aspect kept), centre-crops, rescales, normalises.
  medmvl's own path resizes in the processor of transformers 5 (torchvision), up to 2/255 apart.
* CT through a 2D tower slice by slice (MedM-VL-CT-Chest): HU clipped to ``[-1000, 1000]``, mapped to
  ``[0, 255]``; cropped to the box of voxels ``> 0`` (MONAI ``CropForeground``, no margin); resized
  trilinearly to ``[32, H, W]``; truncated to ``uint8``; each slice repeated to RGB and put through the
  same processor -> ``[3, 32, H, W]``. medmvl's own path windows, crops with a margin, resizes with
  anti-aliasing and keeps floats.
* CT through M3D-CLIP: the ``[0, 255]`` volume / 255, min-max scaled, cropped (``> 0``), resized to
  ``volume_size`` trilinearly -> ``[1, 32, 256, 256]``; through MedM-CLIP: ``(x - 55.698) / 66.194`` (its
  fixed statistics), cropped where that is ``> 0``, resized.

Volumes are read as they are stored (``.npy`` as ``np.load`` gives it, ``[d, h, w]``); other formats
go through medmvl's reader first (MedM-VL reads only ``.npy``). Training adds MedM-VL's augmentations
(MONAI ``RandRotate90`` / ``RandFlip``, and for the 3D CLIPs ``RandScaleIntensity`` /
``RandShiftIntensity``) after the resize.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

MEDMCLIP_STATS = (55.6982188356434, 66.1943479570918)
"""MedM-CLIP's fixed intensity mean and std on the ``[0, 255]`` volume (``lvlm/model/encoder/medmclip.py``)."""
HU_RANGE = (-1000.0, 1000.0)
"""MedM-VL's CT clip before the ``[0, 255]`` mapping (``lvlm/dataset/dataset.py``)."""


class MedmVlImageTransform:
    """One 2D image -> ``[3, h, w]`` as MedM-VL's image processor gives it.

    Args:
        spec: the encoder's ``preprocess["medm_vl"]``: ``processor`` (``siglip`` | ``clip``), ``size``
            (``[h, w]`` for SigLIP; the shortest edge for CLIP), ``crop`` (CLIP's ``[h, w]``), ``resample``
            (PIL filter name), ``rescale_factor``, ``image_mean``, ``image_std``.
    """

    def __init__(self, spec: Mapping[str, Any]) -> None:
        self.spec = dict(spec)
        self.resample = Image.Resampling[str(spec["resample"]).upper()]
        self.mean = np.asarray(spec["image_mean"], dtype=np.float32)
        self.std = np.asarray(spec["image_std"], dtype=np.float32)

    def __call__(self, image: np.ndarray) -> torch.Tensor:
        """``[h, w, c]`` float in ``[0, 1]`` (``load_image``) -> normalised ``[3, h', w']``."""
        pil = _to_pil(image)
        return self.from_pil(pil)

    def from_pil(self, pil: Image.Image) -> torch.Tensor:
        """The processor on an 8-bit PIL image (converted to RGB first, as MedM-VL reads images)."""
        pil = pil.convert("RGB")
        if self.spec["processor"] == "clip":
            pil = _clip_resize(pil, int(self.spec["size"]), self.resample)
            pil = _centre_crop(pil, tuple(self.spec["crop"]))
        else:
            h, w = self.spec["size"]
            if pil.size != (w, h):
                pil = pil.resize((w, h), self.resample)
        return self.normalise(np.asarray(pil))

    def normalise(self, uint8: np.ndarray) -> torch.Tensor:
        """``[h, w, 3]`` uint8 -> ``[3, h, w]``: rescale (float64 product, as 4.x), then ``(x - mean) / std``."""
        x = (uint8.astype(np.float64) * float(self.spec["rescale_factor"])).astype(np.float32)
        x = (x - self.mean) / self.std
        return torch.from_numpy(np.ascontiguousarray(x.transpose(2, 0, 1)))


class MedmVlVolumeTransform:
    """A volume file -> the encoder input MedM-VL builds for it.

    Args:
        preprocess: the 3D tower's ``preprocess``: ``volume_size`` and ``medm_vl`` (``family``: ``slices``
            with the slice processor's spec as ``slice``, ``m3dclip`` or ``medmclip``).
        train: add MedM-VL's training augmentations.
        axcodes: the layout medmvl's reader orients non-``.npy`` files to (see ``medmvl.data.volumes``).
    """

    def __init__(self, preprocess: Mapping[str, Any], *, train: bool = False, axcodes: str = "SPL") -> None:
        self.spec = dict(preprocess["medm_vl"])
        self.family = self.spec["family"]
        if self.family not in ("slices", "m3dclip", "medmclip"):
            raise ValueError(f"medm_vl volume family {self.family!r}: expected slices, m3dclip or medmclip")
        self.size = tuple(int(s) for s in preprocess["volume_size"])
        self.slice = MedmVlImageTransform(self.spec["slice"]) if self.family == "slices" else None
        self.axcodes = axcodes
        self.augment = _augmentation(self.family) if train else None

    def __call__(self, path: str | os.PathLike) -> torch.Tensor:
        """``[c, d, h, w]`` float32: ``c`` = 3 (slices) or 1 (3D CLIPs)."""
        vol = self.read(path)  # [d, h, w] in [0, 255], float64
        if self.family == "m3dclip":
            vol = vol.astype(np.float32) / 255.0
            vol = vol - vol.min()
            vol = vol / np.clip(vol.max(), a_min=1e-8, a_max=None)
        elif self.family == "medmclip":
            vol = (vol - MEDMCLIP_STATS[0]) / MEDMCLIP_STATS[1]
        x = _resize(_crop_foreground(vol), self.size)  # [1, d, h, w] float32
        if self.augment is not None:
            x = torch.as_tensor(self.augment(x)).as_subclass(torch.Tensor).float()
        if self.slice is None:
            return x.contiguous()
        slices = x[0].to(torch.uint8).numpy()  # [d, h, w]: truncation, as MedM-VL's .to(torch.uint8)
        rgb = [self.slice.from_pil(Image.fromarray(s)) for s in slices]  # d x [3, h, w]
        return torch.stack(rgb, dim=1)  # [3, d, h, w]

    def reseed(self, seed: int) -> None:
        """Seed the training augmentations (MONAI keeps its own generator)."""
        if self.augment is not None:
            self.augment.set_random_state(seed=seed % 2**32)

    def read(self, path: str | os.PathLike) -> np.ndarray:
        """The volume as MedM-VL's dataset hands it on: HU clipped and mapped to ``[0, 255]``, ``[d, h, w]``."""
        if str(path).endswith(".npy"):
            hu = np.load(path, allow_pickle=False)
        else:
            from monai.transforms import Orientation

            from medmvl.data.volumes import read_volume

            vol = read_volume(path, npy_axcodes=self.axcodes)  # [c, x, y, z] with its affine
            hu = np.asarray(Orientation(axcodes=self.axcodes, labels=None)(vol.float()))[0]  # [d, h, w]
        if hu.ndim == 4 and hu.shape[0] == 1:
            hu = hu[0]
        if hu.ndim != 3:
            raise ValueError(f"volume {str(path)!r}: MedM-VL reads [d, h, w] arrays, got shape {hu.shape}")
        lo, hi = HU_RANGE
        return (np.clip(hu, lo, hi) - lo) / (hi - lo) * 255


def _to_pil(image: np.ndarray) -> Image.Image:
    from medmvl.data.images import to_uint8

    arr = to_uint8(image)  # [h, w, c] uint8
    return Image.fromarray(arr[..., 0]) if arr.shape[-1] == 1 else Image.fromarray(arr[..., :3])


def _clip_resize(pil: Image.Image, shortest: int, resample: Image.Resampling) -> Image.Image:
    """transformers 4.x ``get_resize_output_image_size(default_to_square=False)``: short side = ``shortest``."""
    w, h = pil.size
    short, long = (w, h) if w <= h else (h, w)
    new_short, new_long = shortest, int(shortest * long / short)
    size = (new_short, new_long) if w <= h else (new_long, new_short)
    return pil if size == pil.size else pil.resize(size, resample)


def _centre_crop(pil: Image.Image, crop: tuple[int, int]) -> Image.Image:
    """transformers 4.x ``center_crop`` of an image at least as large as ``crop`` (``[h, w]``)."""
    w, h = pil.size
    top, left = (h - crop[0]) // 2, (w - crop[1]) // 2
    return pil.crop((left, top, left + crop[1], top + crop[0]))


def _crop_foreground(vol: np.ndarray) -> np.ndarray:
    """MONAI ``CropForeground()`` defaults: the bounding box of voxels ``> 0``, no margin -> ``[1, d, h, w]``."""
    nz = np.nonzero(vol > 0)
    if not nz[0].size:
        return vol[None]  # nothing above 0: MONAI keeps the volume
    box = tuple(slice(int(a.min()), int(a.max()) + 1) for a in nz)
    return vol[box][None]


def _resize(vol: np.ndarray, size: tuple[int, ...]) -> torch.Tensor:
    """MONAI ``Resize(mode="trilinear")``: ``F.interpolate`` on float32, ``align_corners=False``, no anti-aliasing."""
    x = torch.from_numpy(np.ascontiguousarray(vol, dtype=np.float32))[None]  # [1, 1, d, h, w]
    return F.interpolate(x, size=size, mode="trilinear", align_corners=False)[0]  # [1, d', h', w']


def _augmentation(family: str) -> Any:
    from monai.transforms import Compose, RandFlip, RandRotate90, RandScaleIntensity, RandShiftIntensity

    steps: list[Any] = [RandRotate90(prob=0.5, spatial_axes=(1, 2))]
    steps += [RandFlip(prob=0.10, spatial_axis=axis) for axis in (0, 1, 2)]
    if family != "slices":
        steps += [RandScaleIntensity(factors=0.1, prob=0.5), RandShiftIntensity(offsets=0.1, prob=0.5)]
    return Compose(steps)
