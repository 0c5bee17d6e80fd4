"""MedVLM: encoder -> connector -> LLM, a plain ``nn.Module`` (Lightning only drives it).

Image features are merged into the text embeddings by placeholder (``masked_scatter`` on the positions
whose id is the image token), never by position, with a loud error when counts disagree (as HF Llava).
"""

from __future__ import annotations

import functools
import math
from collections.abc import Callable
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from medmvl.data.conversation import IGNORE_INDEX
from medmvl.data.schema import IMAGE_TOKEN
from medmvl.models.encoders.base import VisionEncoder
from medmvl.models.llm import LanguageModel


class MedVLM(nn.Module):
    """A LLaVA-style medical vision-language model.

    Args:
        encoder: built vision encoder (``[k, c, h, w] -> [k, n, d_enc]``).
        connector: partial connector, completed here with ``in_dim``, ``out_dim`` and ``grid``.
        llm: built language model and tokenizer.
    """

    def __init__(
        self, encoder: VisionEncoder, connector: Callable[..., nn.Module], llm: LanguageModel
    ) -> None:
        super().__init__()
        self.encoder = encoder
        extra = encoder.num_tokens - math.prod(encoder.grid)
        kwargs: dict[str, Any] = {"in_dim": encoder.out_dim, "out_dim": llm.hidden_size, "grid": encoder.grid}
        if extra:
            kwargs["extra_tokens"] = extra
        self.connector = connector(**kwargs)
        self.connector_config = _partial_config(connector)
        self.llm = llm.model
        self.tokenizer = llm.tokenizer
        self.image_token_id = self.tokenizer.convert_tokens_to_ids(IMAGE_TOKEN)
        if self.image_token_id is None or self.image_token_id == self.tokenizer.unk_token_id:
            raise ValueError(
                f"tokenizer has no {IMAGE_TOKEN} token: build it with load_tokenizer(image_tokens=...)"
            )

    @property
    def image_token_counts(self) -> dict[str, int]:
        """How many placeholder copies each image token expands to in the text."""
        return {IMAGE_TOKEN: self.connector.num_tokens}

    def get_image_features(self, pixel_values: torch.Tensor) -> torch.Tensor:
        """``[k, c, h, w] -> [k, m, d_llm]``; a frozen encoder runs without autograd."""
        trainable = any(p.requires_grad for p in self.encoder.parameters())
        with torch.set_grad_enabled(torch.is_grad_enabled() and trainable):
            tokens = self.encoder(pixel_values)  # [k, n, d_enc]
        return self.connector(tokens)

    def merge(self, input_ids: torch.Tensor, pixel_values: torch.Tensor | None) -> torch.Tensor:
        """Text embeddings with image features scattered onto the image-token positions: ``[b, t, d_llm]``."""
        embeds = self.llm.get_input_embeddings()(input_ids)  # [b, t, d_llm]
        mask = input_ids == self.image_token_id  # [b, t]
        n_slots = int(mask.sum())
        if pixel_values is None:
            if n_slots:
                raise ValueError(f"{n_slots} image-token positions in the batch but no pixel_values")
            return embeds
        feats = self.get_image_features(pixel_values)  # [k, m, d_llm]
        if n_slots != feats.shape[0] * feats.shape[1]:
            raise ValueError(
                f"image tokens and features do not match: {n_slots} image-token positions in input_ids, "
                f"but {feats.shape[0]} images x {feats.shape[1]} tokens = {feats.shape[0] * feats.shape[1]}"
            )
        return embeds.masked_scatter(mask.unsqueeze(-1), feats.to(embeds.dtype))

    def forward(
        self,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor,
        labels: torch.Tensor | None = None,
        pixel_values: torch.Tensor | None = None,
    ) -> dict[str, torch.Tensor]:
        """Mean next-token cross-entropy over supervised positions (``labels != -100``).

        The LM head runs only on the ``s`` supervised positions, never on image or prompt tokens.

        Returns:
            ``loss`` (scalar), ``num_tokens`` (supervised targets) and, without labels, ``logits [b, t, v]``.
        """
        embeds = self.merge(input_ids, pixel_values)
        decoder = self.llm.get_decoder()
        hidden = decoder(inputs_embeds=embeds, attention_mask=attention_mask).last_hidden_state  # [b, t, d]
        head = self.llm.get_output_embeddings()
        if labels is None:
            return {"logits": head(hidden)}
        targets = labels[:, 1:]  # [b, t-1]
        keep = targets != IGNORE_INDEX  # [b, t-1]
        logits = head(hidden[:, :-1][keep]).float()  # [s, v]
        loss = F.cross_entropy(logits, targets[keep], reduction="sum") / keep.sum().clamp(min=1)
        return {"loss": loss, "num_tokens": keep.sum()}

    @torch.no_grad()
    def generate(
        self,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor,
        pixel_values: torch.Tensor | None = None,
        **generate_kwargs: Any,
    ) -> torch.Tensor:
        """Generate with the LLM's own ``generate`` (KV cache) from merged embeddings.

        ``input_ids`` must be left-padded for batches. Returns only the new tokens ``[b, t_new]``.
        """
        embeds = self.merge(input_ids, pixel_values)
        generate_kwargs.setdefault("pad_token_id", self.tokenizer.pad_token_id)
        generate_kwargs.setdefault("eos_token_id", self.tokenizer.eos_token_id)
        return self.llm.generate(inputs_embeds=embeds, attention_mask=attention_mask, **generate_kwargs)


def _partial_config(connector: Callable[..., nn.Module]) -> dict[str, Any]:
    """The ``_target_`` + keyword form of a partial connector, for saving the architecture."""
    if not isinstance(connector, functools.partial):
        raise TypeError("connector must be a partial (``_partial_: true`` in its config)")
    func = connector.func
    return {"_target_": f"{func.__module__}.{func.__qualname__}", "_partial_": True, **connector.keywords}
