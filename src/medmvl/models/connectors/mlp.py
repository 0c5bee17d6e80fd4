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
    """

    def __init__(
        self, *, in_dim: int, out_dim: int, grid: tuple[int, ...], depth: int = 2, extra_tokens: int = 0
    ) -> None:
        super().__init__()
        if depth < 1:
            raise ValueError(f"MlpConnector depth must be >= 1, got {depth}")
        layers: list[nn.Module] = [nn.Linear(in_dim, out_dim)]
        for _ in range(depth - 1):
            layers += [nn.GELU(), nn.Linear(out_dim, out_dim)]
        self.proj = nn.Sequential(*layers)
        self.grid = tuple(grid)
        self.num_tokens = math.prod(self.grid) + extra_tokens

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        """``[b, n, d_enc]`` -> ``[b, n, d_llm]``."""
        return self.proj(tokens)
