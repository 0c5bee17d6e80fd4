"""An encoder whose tokens are soft words: each output slot is a mixture of the LLM's own token embeddings.

Why: a language model reads its own word embeddings from the first step, while it takes many steps to
learn to read arbitrary image features. ``CaptionSlotEncoder`` puts a small image backbone (e.g.
:class:`~medmvl.models.encoders.patch.PatchEncoder`) under a linear head that predicts, for each of
``num_slots`` output slots, a distribution over a small vocabulary of LLM tokens, and emits the expected
embedding ``softmax(logits) @ vocab`` ([b, slots, d_llm]). Pre-trained on image–caption pairs (slot ``k``
predicts the ``k``-th caption token; :mod:`medmvl.demo.caption_pretrain`), its tokens read like
the caption of the image, and the language model only has to learn to answer from them.

The vocabulary rows start as copies of the LLM's input embeddings of ``vocab_ids`` and are trainable
parameters of the encoder (saved with it), so the architecture rebuilds from its config alone. A slot only
emits tokens it was taught to emit at that position (the ``allowed`` buffer, set by pre-training), so a slot
whose fact a caption leaves unknown still emits one of that slot's words, never a stray word piece.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from torch import nn

from medmvl.models.encoders.base import VisionEncoder


class CaptionSlotEncoder(VisionEncoder):
    """``[b, c, h, w]`` (2D backbone) or ``[b, c, d, h, w]`` (3D) ``-> [b, num_slots, out_dim]`` soft words.

    Args:
        backbone: a built 2D or 3D encoder (its tokens, flattened, feed the slot head); the slot encoder
            takes its ``spatial_dims`` and ``preprocess``, so a 3D backbone serves ``<image3d>``.
        num_slots: output tokens per image (the token grid is ``(num_slots,)``).
        vocab_ids: LLM token ids the slots choose from (kept for reference and re-initialisation).
        out_dim: LLM embedding width ``d_llm``.
        hard: emit the embedding of each slot's most likely token (the exact word the LLM knows) instead
            of the expected embedding; gradients pass straight through to the probabilities.
    """

    def __init__(
        self,
        *,
        backbone: VisionEncoder,
        num_slots: int,
        vocab_ids: Sequence[int],
        out_dim: int,
        hard: bool = False,
    ) -> None:
        super().__init__()
        if num_slots < 1 or not vocab_ids:
            raise ValueError(
                f"CaptionSlotEncoder needs num_slots >= 1 and a vocabulary; got {num_slots}, {len(vocab_ids)} ids"
            )
        self.backbone = backbone
        self.num_slots = num_slots
        self.vocab_ids = [int(i) for i in vocab_ids]
        self.head = nn.Linear(backbone.num_tokens * backbone.out_dim, num_slots * len(self.vocab_ids))
        self.vocab = nn.Parameter(torch.randn(len(self.vocab_ids), out_dim) * 0.02)  # [v, d_llm]
        # which tokens each slot may emit (set by pre-training: the tokens it was taught there)
        self.register_buffer("allowed", torch.ones(num_slots, len(self.vocab_ids), dtype=torch.bool))
        self.out_dim = out_dim
        self.hard = hard
        self.spatial_dims = backbone.spatial_dims
        self.grid = (num_slots,)
        self.preprocess = dict(backbone.preprocess)

    @torch.no_grad()
    def init_vocab(self, embeddings: torch.Tensor) -> None:
        """Copy the rows ``vocab_ids`` of an LLM input-embedding matrix ``[vocab, d_llm]`` into ``vocab``."""
        if embeddings.shape[1] != self.out_dim:
            raise ValueError(f"embedding width {embeddings.shape[1]} != encoder out_dim {self.out_dim}")
        self.vocab.copy_(embeddings[self.vocab_ids].to(self.vocab.dtype))

    def slot_logits(self, pixels: torch.Tensor) -> torch.Tensor:
        """``[b, c, (d,) h, w]`` -> ``[b, num_slots, v]`` scores over the vocabulary."""
        feats = self.backbone(pixels).flatten(1)  # [b, n * d_enc]
        logits = self.head(feats).view(len(pixels), self.num_slots, -1)  # [b, s, v]
        return logits.masked_fill(~self.allowed, torch.finfo(logits.dtype).min)

    def forward(self, pixels: torch.Tensor) -> torch.Tensor:
        """``[b, c, (d,) h, w]`` -> ``[b, num_slots, out_dim]``: the vocabulary embedding each slot emits."""
        probs = self.slot_logits(pixels).softmax(-1)  # [b, s, v]
        if self.hard:
            one_hot = torch.zeros_like(probs).scatter_(-1, probs.argmax(-1, keepdim=True), 1.0)
            probs = probs + (one_hot - probs).detach()  # straight-through
        return probs @ self.vocab  # [b, s, d_llm]

    def export_config(self) -> dict[str, Any]:
        cls = type(self)
        return {
            "_target_": f"{cls.__module__}.{cls.__qualname__}",
            "backbone": self.backbone.export_config(),
            "num_slots": self.num_slots,
            "vocab_ids": list(self.vocab_ids),
            "out_dim": self.out_dim,
            "hard": self.hard,
        }
