"""The one contract every vision encoder follows, so connectors and data transforms can be sized from it."""

from __future__ import annotations

import math
from typing import Any

import torch
from torch import nn


class VisionEncoder(nn.Module):
    """Turns pixels into a grid of tokens.

    Subclasses set, in ``__init__``:
        out_dim: width of each output token (``d_enc``).
        spatial_dims: 2 for images ``[b, c, h, w]``, 3 for volumes ``[b, c, d, h, w]``.
        grid: the token grid, e.g. ``(16, 16)`` or ``(8, 16, 16)``; ``prod(grid)`` tokens per input
            (one more in front with ``select_feature="cls_patch"``).
        preprocess: what the data pipeline must produce: ``image_size`` (tuple), ``image_mean``,
            ``image_std`` (per channel), ``channels``. 3D encoders give ``volume_size`` ``(d, h, w)``
            instead of (or, slice-wise, besides) ``image_size``, and ``hu_window`` ``(low, high)``: the
            Hounsfield window mapped to [0, 1] before normalisation (``None``: not CT).
    """

    out_dim: int
    spatial_dims: int
    grid: tuple[int, ...]
    preprocess: dict[str, Any]

    @property
    def num_tokens(self) -> int:
        """Tokens per input after feature selection."""
        return math.prod(self.grid)

    def forward(self, pixels: torch.Tensor) -> torch.Tensor:  # pragma: no cover - interface
        """``[b, c, h, w]`` or ``[b, c, d, h, w]`` -> ``[b, n, d_enc]``."""
        raise NotImplementedError

    def export_config(self) -> dict[str, Any]:  # pragma: no cover - interface
        """Keyword arguments (with ``_target_``) that rebuild this architecture offline, without weights."""
        raise NotImplementedError
