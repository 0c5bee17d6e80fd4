"""Any 2D encoder applied to every slice of a volume: the MedM-VL-CT-Chest design (``siglip_slices``).

A ``[b, c, d, h, w]`` volume becomes ``b*d`` images for the 2D encoder; its tokens are concatenated slice
by slice into ``[b, d*n, d_enc]`` on the grid ``(d, *inner.grid)``, so ``spatial_pool`` can pool across
slices and ``attn_pool`` can attend over all of them (32 slices x 256 SigLIP tokens -> 256 queries).
"""

from __future__ import annotations

import math
from typing import Any

import torch

from medmvl.models.encoders.base import VisionEncoder


class SliceEncoder(VisionEncoder):
    """Runs ``slice_encoder`` on each axial slice and concatenates the tokens.

    Args:
        slice_encoder: a built 2D encoder (``spatial_dims == 2``) emitting exactly ``prod(grid)`` tokens per
            image (``select_feature='patch'``): a per-slice CLS token would not sit on the token grid.
        num_slices: depth ``d`` of the volumes (the data pipeline resizes to ``(d, *image_size)``).
        slice_chunk: run the 2D encoder on at most this many slices at a time (bounds activation memory of
            a frozen encoder; ``None``: all ``b*d`` slices at once).
        hu_window: (low, high) Hounsfield window mapped to [0, 1] before the 2D normalisation.

    Volumes may have the 2D encoder's channel count or 1 channel (repeated, as MedM-VL feeds gray CT
    slices to SigLIP). A 2D encoder in MedM-VL's preprocessing mode (imported) gives the volumes MedM-VL's
    CT path (``medmvl.interop.medm_vl.pixels``).
    """

    def __init__(
        self,
        slice_encoder: VisionEncoder,
        *,
        num_slices: int = 32,
        slice_chunk: int | None = None,
        hu_window: tuple[float, float] | None = (-1000.0, 1000.0),
    ) -> None:
        super().__init__()
        name = type(slice_encoder).__name__
        if slice_encoder.spatial_dims != 2:
            raise ValueError(f"SliceEncoder needs a 2D slice_encoder, got {name} with spatial_dims 3")
        if slice_encoder.num_tokens != math.prod(slice_encoder.grid):
            raise ValueError(
                f"SliceEncoder: {name} emits {slice_encoder.num_tokens} tokens for a grid {slice_encoder.grid} "
                "(a CLS token?); use select_feature='patch' for the slice encoder"
            )
        if num_slices < 1:
            raise ValueError(f"SliceEncoder: num_slices must be >= 1, got {num_slices}")
        if slice_chunk is not None and slice_chunk < 1:
            raise ValueError(f"SliceEncoder: slice_chunk must be >= 1 or null, got {slice_chunk}")
        self.slice_encoder = slice_encoder
        self.num_slices = num_slices
        self.slice_chunk = slice_chunk
        self.out_dim = slice_encoder.out_dim
        self.spatial_dims = 3
        self.grid = (num_slices, *slice_encoder.grid)
        inner = slice_encoder.preprocess
        self.preprocess = {
            **inner,
            "volume_size": (num_slices, *inner["image_size"]),
            "hu_window": None if hu_window is None else tuple(float(v) for v in hu_window),
        }
        if inner.get("mode") == "medm_vl":  # MedM-VL's CT path: per-slice processor of the 2D tower
            self.preprocess["medm_vl"] = {"family": "slices", "slice": dict(inner["medm_vl"])}

    def forward(self, pixels: torch.Tensor) -> torch.Tensor:
        """``[b, c, d, h, w]`` -> ``[b, d*n, d_enc]`` (slice-major)."""
        channels = self.preprocess["channels"]
        expected = (self.num_slices, *self.preprocess["image_size"])
        if pixels.ndim != 5 or tuple(pixels.shape[2:]) != expected or pixels.shape[1] not in (1, channels):
            raise ValueError(
                f"SliceEncoder takes volumes [b, c, d, h, w] with c in (1, {channels}) and (d, h, w) = "
                f"{expected}, got {tuple(pixels.shape)}"
            )
        b, c, d, h, w = pixels.shape
        slices = pixels.transpose(1, 2).reshape(b * d, c, h, w)  # [b*d, c, h, w]
        if c != channels:
            slices = slices.expand(-1, channels, -1, -1)  # [b*d, c_enc_in, h, w]
        chunk = self.slice_chunk or b * d
        feats = torch.cat([self.slice_encoder(part) for part in slices.split(chunk)])  # [b*d, n, d_enc]
        return feats.reshape(b, d * feats.shape[1], feats.shape[2])  # [b, d*n, d_enc]

    def export_config(self) -> dict[str, Any]:
        cls = type(self)
        return {
            "_target_": f"{cls.__module__}.{cls.__qualname__}",
            "slice_encoder": self.slice_encoder.export_config(),
            "num_slices": self.num_slices,
            "slice_chunk": self.slice_chunk,
            "hu_window": None if self.preprocess["hu_window"] is None else list(self.preprocess["hu_window"]),
        }
