"""MLP projector: LLaVA-1.5 / MedM-VL ``mlp{depth}x_gelu``; one token out per token in."""

from __future__ import annotations

import math

import torch
from torch import nn


class MlpConnector(nn.Module):
    """``depth`` linear layers with GELU between them (depth 2 = MedM-VL's ``mlp2x_gelu``).

    Args:
        in_dim: encoder width ``d_enc`` (from the built encoder).
        out_dim: LLM hidden width ``d_llm`` (from the built LLM).
        grid: encoder token grid; tokens pass through one to one, so ``num_tokens = prod(grid)``.
        depth: number of linear layers (>= 1).
        extra_tokens: tokens the encoder emits besides the grid (1 for a CLS token).
        input_norm: LayerNorm the encoder tokens first. Useful for encoders trained from scratch, whose
            un-normalised residual stream can be orders of magnitude larger than the LLM's embeddings.
        init_std: re-initialise the last layer with this std (bias 0) so image tokens start at the scale of
            text embeddings (SmolLM2's have std ~0.14); ``None`` keeps PyTorch's default init.
        init_identity: start as the identity map (needs ``depth`` 1 and ``in_dim == out_dim``), for
            encoders that already emit LLM embeddings (e.g. ``CaptionSlotEncoder``).
    """

    def __init__(
        self,
        *,
        in_dim: int,
        out_dim: int,
        grid: tuple[int, ...],
        depth: int = 2,
        extra_tokens: int = 0,
        input_norm: bool = False,
        init_std: float | None = None,
        init_identity: bool = False,
    ) -> None:
        super().__init__()
        if depth < 1:
            raise ValueError(f"MlpConnector depth must be >= 1, got {depth}")
        self.norm = nn.LayerNorm(in_dim) if input_norm else nn.Identity()
        layers: list[nn.Module] = [nn.Linear(in_dim, out_dim)]
        for _ in range(depth - 1):
            layers += [nn.GELU(), nn.Linear(out_dim, out_dim)]
        self.proj = nn.Sequential(*layers)
        if init_std is not None:
            nn.init.normal_(self.proj[-1].weight, std=init_std)
            nn.init.zeros_(self.proj[-1].bias)
        if init_identity:
            if depth != 1 or in_dim != out_dim:
                raise ValueError(
                    f"MlpConnector init_identity needs depth 1 and in_dim == out_dim, got depth {depth}, "
                    f"{in_dim} -> {out_dim}"
                )
            nn.init.eye_(self.proj[0].weight)
            nn.init.zeros_(self.proj[0].bias)
        self.grid = tuple(grid)
        self.num_tokens = math.prod(self.grid) + extra_tokens

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        """``[b, n, d_enc]`` -> ``[b, n, d_llm]``."""
        return self.proj(self.norm(tokens))
