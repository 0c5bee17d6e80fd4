"""Connectors that shorten the token sequence before the MLP: grid average pooling and attention pooling.

A 3D encoder emits thousands of tokens (M3D-CLIP 8x16x16 = 2048, SigLIP on 32 slices 32x256 = 8192);
these reduce them to a few hundred LLM tokens. Both end in :class:`MlpConnector` (reused, not copied).

Parameter layout and MedM-VL (``lvlm/model/connector/{spatial_pooling,attn_pooling}.py``), for mapping its
checkpoints: MedM-VL's projector ``connector.{i}.*`` is ``mlp.proj.{i}.*`` here (same ``mlp2x_gelu``
layout: Linear, GELU, Linear); ``attn_pooling``'s ``query`` [256, d_enc] and ``attn.*``
(``nn.MultiheadAttention``: ``in_proj_weight``, ``in_proj_bias``, ``out_proj.weight``, ``out_proj.bias``)
keep their names. MedM-VL restores only ``connector.*`` on reload and loses ``query`` and ``attn``; here all
are registered parameters, saved and restored with the model.
"""

from __future__ import annotations

import math
from typing import Literal

import torch
import torch.nn.functional as F
from torch import nn

from medmvl.models.connectors.mlp import MlpConnector


class SpatialPoolConnector(nn.Module):
    """Tokens -> encoder grid -> average pool by ``factor`` per dim -> MLP (MedM-VL ``spatial_pooling``).

    Args:
        in_dim: encoder width ``d_enc``.
        out_dim: LLM hidden width ``d_llm``.
        grid: encoder token grid, 2D ``(h, w)`` or 3D ``(d, h, w)``; tokens arrive in row-major grid order.
        factor: pooling window = stride, one int for every dim or one per dim (``[1, 2, 2]`` keeps depth).
        ceil_mode: a grid dim not divisible by its factor is an error by default; with ``ceil_mode`` the
            edge windows are partial and average only the tokens they contain (``ceil(g / f)`` outputs).
        extra_tokens: tokens in front of the grid (a CLS token), set by MedVLM from the encoder.
        extra_mode: ``keep`` passes extra tokens unpooled through the MLP in front; ``drop`` removes them.
        depth, input_norm, init_std: the MLP's (see :class:`MlpConnector`).
    """

    def __init__(
        self,
        *,
        in_dim: int,
        out_dim: int,
        grid: tuple[int, ...],
        factor: int | list[int] = 2,
        ceil_mode: bool = False,
        extra_tokens: int = 0,
        extra_mode: Literal["keep", "drop"] = "keep",
        depth: int = 2,
        input_norm: bool = False,
        init_std: float | None = None,
    ) -> None:
        super().__init__()
        self.grid = tuple(int(g) for g in grid)
        if len(self.grid) not in (2, 3):
            raise ValueError(f"SpatialPoolConnector pools 2D or 3D grids, got grid {self.grid}")
        factors = [factor] * len(self.grid) if isinstance(factor, int) else [int(f) for f in factor]
        if len(factors) != len(self.grid) or min(factors) < 1:
            raise ValueError(
                f"factor {factor} does not fit grid {self.grid}: give one int >= 1 or one per dim"
            )
        if extra_mode not in ("keep", "drop"):
            raise ValueError(f"extra_mode must be 'keep' or 'drop', got {extra_mode!r}")
        for axis, (g, f) in enumerate(zip(self.grid, factors)):
            if g % f and not ceil_mode:
                raise ValueError(
                    f"grid {self.grid} is not divisible by factor {factors} along dim {axis}; "
                    "set ceil_mode=true to average partial windows at the edge, or change factor"
                )
        self.factor = tuple(factors)
        self.ceil_mode = ceil_mode
        self.extra_tokens = extra_tokens
        self.extra_mode = extra_mode
        self.pooled_grid = tuple(
            math.ceil(g / f) if ceil_mode else g // f for g, f in zip(self.grid, factors)
        )
        kept = extra_tokens if extra_mode == "keep" else 0
        self.mlp = MlpConnector(
            in_dim=in_dim,
            out_dim=out_dim,
            grid=self.pooled_grid,
            depth=depth,
            extra_tokens=kept,
            input_norm=input_norm,
            init_std=init_std,
        )
        self.num_tokens = self.mlp.num_tokens

    def pool(self, tokens: torch.Tensor) -> torch.Tensor:
        """``[b, e+n, d_enc]`` -> ``[b, e'+n', d_enc]``: the grid averaged, extra tokens kept or dropped."""
        n = math.prod(self.grid)
        if tokens.shape[1] != self.extra_tokens + n:
            raise ValueError(
                f"SpatialPoolConnector expects {self.extra_tokens} extra + {n} grid tokens {self.grid}, "
                f"got {tokens.shape[1]}"
            )
        extra, patches = tokens[:, : self.extra_tokens], tokens[:, self.extra_tokens :]
        b, _, dim = patches.shape
        cube = patches.transpose(1, 2).reshape(b, dim, *self.grid)  # [b, d_enc, *grid]
        pool = F.avg_pool3d if len(self.grid) == 3 else F.avg_pool2d
        cube = pool(cube, kernel_size=self.factor, stride=self.factor, ceil_mode=self.ceil_mode)
        pooled = cube.flatten(2).transpose(1, 2)  # [b, n', d_enc]
        return torch.cat((extra, pooled), dim=1) if self.extra_mode == "keep" else pooled

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        """``[b, e+n, d_enc]`` -> ``[b, num_tokens, d_llm]``."""
        return self.mlp(self.pool(tokens))


class AttnPoolConnector(nn.Module):
    """``num_queries`` learned queries attend over all encoder tokens, then the MLP (MedM-VL ``attn_pooling``).

    Works for any token count (2D, 3D, slice stacks, with or without CLS: every token is a key).

    Args:
        in_dim: encoder width ``d_enc`` (queries and attention work at this width).
        out_dim: LLM hidden width ``d_llm``.
        grid: encoder token grid (only recorded; the attention takes any number of tokens).
        num_queries: output tokens (MedM-VL: 256).
        num_heads: attention heads (MedM-VL: 8); must divide ``in_dim``.
        extra_tokens: tokens besides the grid (a CLS token); attended like the others.
        query_std: std of the queries' normal init (MedM-VL: ``torch.randn``, std 1).
        depth, input_norm, init_std: the MLP's (see :class:`MlpConnector`).
    """

    def __init__(
        self,
        *,
        in_dim: int,
        out_dim: int,
        grid: tuple[int, ...],
        num_queries: int = 256,
        num_heads: int = 8,
        extra_tokens: int = 0,
        query_std: float = 1.0,
        depth: int = 2,
        input_norm: bool = False,
        init_std: float | None = None,
    ) -> None:
        super().__init__()
        if num_queries < 1:
            raise ValueError(f"AttnPoolConnector: num_queries must be >= 1, got {num_queries}")
        if in_dim % num_heads:
            raise ValueError(
                f"AttnPoolConnector: num_heads {num_heads} does not divide the encoder width {in_dim}"
            )
        self.grid = tuple(grid)
        self.extra_tokens = extra_tokens
        self.query = nn.Parameter(torch.randn(num_queries, in_dim) * query_std)  # [q, d_enc]
        self.attn = nn.MultiheadAttention(embed_dim=in_dim, num_heads=num_heads, batch_first=True)
        self.mlp = MlpConnector(
            in_dim=in_dim,
            out_dim=out_dim,
            grid=(num_queries,),
            depth=depth,
            input_norm=input_norm,
            init_std=init_std,
        )
        self.num_tokens = num_queries

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        """``[b, n, d_enc]`` (any ``n``) -> ``[b, num_queries, d_llm]``."""
        queries = self.query.to(tokens.dtype).expand(tokens.shape[0], -1, -1)  # [b, q, d_enc]
        pooled, _ = self.attn(queries, tokens, tokens, need_weights=False)  # [b, q, d_enc]
        return self.mlp(pooled)
