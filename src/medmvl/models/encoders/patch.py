"""A small 2D encoder trained from scratch: a patch stem, learned positions, a few transformer layers.

Why: a from-scratch ViT learns slowly when its only signal comes back through a language model (the demo
trains for a few minutes on a CPU). Here every token is a direct function of its patch's pixels from the
first step (Fuyu-style linear patch embedding, or a small strided conv stem for more local features), and
zero to a few pre-norm transformer layers mix the tokens. The output is LayerNorm-ed, so the connector
sees tokens of unit scale whatever the depth.
"""

from __future__ import annotations

import math
from typing import Any, Literal

import torch
from torch import nn

from medmvl.models.encoders.base import VisionEncoder


class PatchEncoder(VisionEncoder):
    """``[b, c, h, w] -> [b, (h/p)*(w/p), d]`` patch tokens in row-major grid order.

    Args:
        image_size: side of the square input in pixels.
        patch_size: side of one patch; ``image_size`` must be a multiple of it.
        num_channels: input channels (3: gray images are repeated by the data pipeline).
        hidden_size: token width ``d``.
        num_layers: transformer layers after the stem (0: tokens are the stem's output + positions).
        num_heads: attention heads per layer.
        mlp_ratio: width of each layer's MLP relative to ``hidden_size``.
        stem: ``linear`` (one linear map per patch, as a stride-``p`` convolution) or ``conv`` (3x3
            stride-2 convolutions with GELU, ``log2(p)`` of them; ``p`` must be a power of 2).
        stem_channels: channels of the first conv layer (doubling per layer, capped at ``hidden_size``).
        image_mean: per-channel normalisation mean the data pipeline applies.
        image_std: per-channel normalisation std.
    """

    def __init__(
        self,
        *,
        image_size: int = 64,
        patch_size: int = 16,
        num_channels: int = 3,
        hidden_size: int = 256,
        num_layers: int = 1,
        num_heads: int = 4,
        mlp_ratio: float = 4.0,
        stem: Literal["linear", "conv"] = "linear",
        stem_channels: int = 32,
        image_mean: tuple[float, ...] | None = None,
        image_std: tuple[float, ...] | None = None,
    ) -> None:
        super().__init__()
        if image_size % patch_size:
            raise ValueError(
                f"PatchEncoder: image_size {image_size} is not a multiple of patch_size {patch_size}"
            )
        if stem not in ("linear", "conv"):
            raise ValueError(f"PatchEncoder: stem must be 'linear' or 'conv', got {stem!r}")
        if stem == "conv" and patch_size & (patch_size - 1):
            raise ValueError(f"PatchEncoder: a conv stem needs a power-of-2 patch_size, got {patch_size}")
        self.args = {
            "image_size": image_size,
            "patch_size": patch_size,
            "num_channels": num_channels,
            "hidden_size": hidden_size,
            "num_layers": num_layers,
            "num_heads": num_heads,
            "mlp_ratio": mlp_ratio,
            "stem": stem,
            "stem_channels": stem_channels,
        }
        side = image_size // patch_size
        self.stem = (
            nn.Conv2d(num_channels, hidden_size, patch_size, stride=patch_size)
            if stem == "linear"
            else _conv_stem(num_channels, hidden_size, int(math.log2(patch_size)), stem_channels)
        )
        self.position = nn.Parameter(torch.randn(1, side * side, hidden_size) * 0.02)  # [1, n, d]
        self.layers = nn.ModuleList(
            [_block(hidden_size, num_heads, int(hidden_size * mlp_ratio)) for _ in range(num_layers)]
        )
        self.norm = nn.LayerNorm(hidden_size)
        mean = tuple(image_mean) if image_mean is not None else (0.5,) * num_channels
        std = tuple(image_std) if image_std is not None else (0.5,) * num_channels
        self.out_dim = hidden_size
        self.spatial_dims = 2
        self.grid = (side, side)
        self.preprocess = {
            "image_size": (image_size, image_size),
            "image_mean": mean,
            "image_std": std,
            "channels": num_channels,
        }

    def forward(self, pixels: torch.Tensor) -> torch.Tensor:
        """``[b, c, h, w]`` -> ``[b, n, d]``."""
        x = self.stem(pixels.to(self.position.dtype))  # [b, d, h/p, w/p]
        x = x.flatten(2).transpose(1, 2) + self.position  # [b, n, d]
        for layer in self.layers:
            x = layer(x)  # [b, n, d]
        return self.norm(x)

    def export_config(self) -> dict[str, Any]:
        cls = type(self)
        return {
            "_target_": f"{cls.__module__}.{cls.__qualname__}",
            **self.args,
            "image_mean": list(self.preprocess["image_mean"]),
            "image_std": list(self.preprocess["image_std"]),
        }


def _conv_stem(in_ch: int, out_ch: int, n: int, first: int) -> nn.Sequential:
    """``n`` 3x3 stride-2 convolutions (GELU between), channels ``first, 2*first, ...``, last = ``out_ch``."""
    layers: list[nn.Module] = []
    ch = in_ch
    for i in range(n):
        nxt = out_ch if i == n - 1 else min(out_ch, first * 2**i)
        layers.append(nn.Conv2d(ch, nxt, 3, stride=2, padding=1))
        if i < n - 1:
            layers.append(nn.GELU())
        ch = nxt
    return nn.Sequential(*layers)


def _block(width: int, heads: int, mlp: int) -> nn.TransformerEncoderLayer:
    """One pre-norm transformer layer (GELU MLP, no dropout), batch first."""
    return nn.TransformerEncoderLayer(
        width, heads, mlp, dropout=0.0, activation="gelu", batch_first=True, norm_first=True
    )
