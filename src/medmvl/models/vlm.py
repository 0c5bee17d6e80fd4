"""MedVLM: encoder -> connector -> LLM, a plain ``nn.Module`` (Lightning only drives it).

Image features are merged into the text embeddings by placeholder (``masked_scatter`` on the positions
whose id is the image token), never by position, with a loud error when counts disagree (as HF Llava).
A second, 3D tower (``encoder3d`` -> ``connector3d``) may sit beside a 2D one: each modality's features go
to its own placeholder (``<image>`` / ``<image3d>``).
"""

from __future__ import annotations

import functools
import math
from collections.abc import Callable
from typing import Any

import torch
from torch import nn

from medmvl.data.collate import supervised_index
from medmvl.data.packing import varlen_kwargs
from medmvl.data.schema import IMAGE3D_TOKEN, IMAGE_TOKEN, PLACEHOLDERS
from medmvl.models.connectors.pooling import AttnPoolConnector
from medmvl.models.encoders.base import VisionEncoder
from medmvl.models.llm.loader import LanguageModel
from medmvl.models.loss import TiedGrad, lm_head_loss, resolve_loss, shares_tied_weight, tied_embedding


class MedVLM(nn.Module):
    """A LLaVA-style medical vision-language model with one or two vision towers.

    The primary ``encoder`` serves ``<image>`` when it is 2D (``spatial_dims == 2``) and ``<image3d>`` when
    it is 3D; an optional 3D ``encoder3d`` adds ``<image3d>`` next to a 2D primary (mixed 2D + 3D runs).

    Args:
        encoder: built vision encoder (``[k, c, h, w]`` or ``[k, c, d, h, w]`` -> ``[k, n, d_enc]``).
        connector: partial connector, completed here with ``in_dim``, ``out_dim`` and ``grid``.
        llm: built language model and tokenizer.
        encoder3d: optional built 3D encoder (``[k, c, d, h, w] -> [k, n3, d_enc3]``).
        connector3d: partial connector of ``encoder3d`` (required with it), or ``"shared"``: the 2D
            connector serves ``<image3d>`` too (MedM-VL-CT-Chest's one ``attn_pooling`` over a 2D tower run
            slice by slice); its token count must not depend on the input (a pooling connector).
    """

    def __init__(
        self,
        encoder: VisionEncoder,
        connector: Callable[..., nn.Module],
        llm: LanguageModel,
        encoder3d: VisionEncoder | None = None,
        connector3d: Callable[..., nn.Module] | str | None = None,
    ) -> None:
        super().__init__()
        if (encoder3d is None) != (connector3d is None):
            raise ValueError("encoder3d and connector3d come together: set both or neither")
        if encoder3d is not None and (encoder.spatial_dims, encoder3d.spatial_dims) != (2, 3):
            raise ValueError(
                f"encoder3d adds a 3D tower next to a 2D encoder; got encoder spatial_dims="
                f"{encoder.spatial_dims} and encoder3d spatial_dims={encoder3d.spatial_dims} (a 3D model "
                "without 2D images uses the 3D encoder as its only encoder)"
            )
        self.encoder = encoder
        self.connector = _complete(connector, encoder, llm.hidden_size)
        self.connector_config = _partial_config(connector)
        self.encoder3d = encoder3d
        if connector3d == "shared":
            if encoder3d.out_dim != encoder.out_dim or not isinstance(self.connector, AttnPoolConnector):
                raise ValueError(
                    "connector3d='shared' needs an attention-pooling connector and towers of one width"
                )
            self.connector3d, self.connector3d_config = self.connector, "shared"
        else:
            self.connector3d = (
                None if encoder3d is None else _complete(connector3d, encoder3d, llm.hidden_size)
            )
            self.connector3d_config = None if connector3d is None else _partial_config(connector3d)
        self.llm = llm.model
        self.tokenizer = llm.tokenizer
        # how the LM head's cross-entropy is computed (llm.loss, medmvl.models.loss)
        self.loss_impl = resolve_loss(llm.loss)
        self.loss_chunk_size = llm.loss_chunk_size
        primary = IMAGE_TOKEN if encoder.spatial_dims == 2 else IMAGE3D_TOKEN
        # placeholder -> (encoder attribute, connector attribute); names, so modules are registered once
        self.towers: dict[str, tuple[str, str]] = {primary: ("encoder", "connector")}
        if encoder3d is not None:
            self.towers[IMAGE3D_TOKEN] = ("encoder3d", "connector3d")
        vocab = self.tokenizer.get_vocab()
        self.placeholder_ids = {t: vocab.get(t) for t in (IMAGE_TOKEN, IMAGE3D_TOKEN)}
        for token in self.towers:
            if self.placeholder_ids[token] is None:
                raise ValueError(
                    f"tokenizer has no {token} token: build it with load_tokenizer(image_tokens=...)"
                )
        self.image_token_id = self.placeholder_ids[IMAGE_TOKEN]
        self.image3d_token_id = self.placeholder_ids[IMAGE3D_TOKEN]

    @property
    def image_token_counts(self) -> dict[str, int]:
        """How many placeholder copies each image token expands to in the text, per tower present."""
        return {token: getattr(self, conn).num_tokens for token, (_, conn) in self.towers.items()}

    @property
    def image_config(self) -> dict[str, Any] | None:
        """Preprocessing of the tower serving ``<image>`` (``None``: no 2D tower)."""
        return self._tower_preprocess(IMAGE_TOKEN)

    @property
    def volume_config(self) -> dict[str, Any] | None:
        """Preprocessing of the tower serving ``<image3d>`` (``None``: no 3D tower)."""
        return self._tower_preprocess(IMAGE3D_TOKEN)

    def data_parts(self) -> dict[str, Any]:
        """What a data module is sized from: the tokenizer, tokens per placeholder, 2D / 3D preprocessing."""
        return {
            "tokenizer": self.tokenizer,
            "image_token_counts": self.image_token_counts,
            "image_config": self.image_config,  # None without a 2D tower
            "volume_config": self.volume_config,  # None without a 3D tower
        }

    def _tower_preprocess(self, token: str) -> dict[str, Any] | None:
        tower = self.towers.get(token)
        return None if tower is None else dict(getattr(self, tower[0]).preprocess)

    def get_image_features(self, pixel_values: torch.Tensor, token: str | None = None) -> torch.Tensor:
        """``[k, c, (d,) h, w] -> [k, m, d_llm]`` through the tower of ``token`` (default: the primary
        encoder's); a frozen encoder runs without autograd."""
        token = token or next(iter(self.towers))
        if token not in self.towers:
            raise ValueError(f"no tower serves {token} (towers: {list(self.towers)})")
        encoder, connector = (getattr(self, name) for name in self.towers[token])
        trainable = any(p.requires_grad for p in encoder.parameters())
        with torch.set_grad_enabled(torch.is_grad_enabled() and trainable):
            tokens = encoder(pixel_values)  # [k, n, d_enc]
        return connector(tokens)

    def merge(
        self,
        input_ids: torch.Tensor,
        pixel_values: torch.Tensor | None = None,
        pixel_values_3d: torch.Tensor | None = None,
        tied: TiedGrad | None = None,
    ) -> torch.Tensor:
        """Text embeddings with each modality's features scattered onto its placeholder positions.

        Args:
            input_ids: ``[b, t]`` with ``<image>`` / ``<image3d>`` blocks of ``image_token_counts`` each.
            pixel_values: 2D images ``[k, c, h, w]`` in placeholder order, or ``None``.
            pixel_values_3d: volumes ``[k3, c, d, h, w]`` in placeholder order, or ``None``.
            tied: the gradient buffer the tied LM head shares (:func:`~medmvl.models.loss.tied_embedding`).

        Returns:
            ``[b, t, d_llm]``.
        """
        embedding = self.llm.get_input_embeddings()
        if tied is None:
            embeds = embedding(input_ids)  # [b, t, d_llm]
        else:
            embeds = tied_embedding(embedding, input_ids, tied)  # [b, t, d_llm]
        inputs = {"pixel_values": pixel_values, "pixel_values_3d": pixel_values_3d}
        for placeholder in PLACEHOLDERS:  # one code path for every tower
            token, name, pixels = placeholder.token, placeholder.pixel_key, inputs[placeholder.pixel_key]
            token_id = self.placeholder_ids[token]
            mask = input_ids == token_id if token_id is not None else torch.zeros_like(input_ids, dtype=bool)
            n_slots = int(mask.sum())  # mask: [b, t]
            if token not in self.towers:
                if pixels is not None or n_slots:
                    raise ValueError(f"{token} inputs given but the model has no tower for {token}")
                continue
            if pixels is None:
                if n_slots:
                    raise ValueError(f"{n_slots} {token} positions in the batch but no {name}")
                continue
            if pixels.ndim != placeholder.spatial_dims + 2:
                raise ValueError(f"{name} must be {placeholder.layout}, got shape {tuple(pixels.shape)}")
            feats = self.get_image_features(pixels, token)  # [k, m, d_llm]
            if n_slots != feats.shape[0] * feats.shape[1]:
                raise ValueError(
                    f"image tokens and features do not match: {n_slots} {token} positions in input_ids, "
                    f"but {feats.shape[0]} inputs x {feats.shape[1]} tokens = {feats.shape[0] * feats.shape[1]}"
                )
            embeds = embeds.masked_scatter(mask.unsqueeze(-1), feats.to(embeds.dtype))
        return embeds

    def forward(
        self,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor,
        labels: torch.Tensor | None = None,
        pixel_values: torch.Tensor | None = None,
        pixel_values_3d: torch.Tensor | None = None,
        position_ids: torch.Tensor | None = None,
        target_index: torch.Tensor | None = None,
    ) -> dict[str, torch.Tensor]:
        """Mean next-token cross-entropy over supervised positions (``labels != -100``).

        The LM head runs only on the ``s`` supervised positions, never on image or prompt tokens, and
        by default (``llm.loss=auto``: chunked, :mod:`medmvl.models.loss`) never holds their ``[s, v]``
        logits all at once.
        ``target_index`` (:func:`~medmvl.data.collate.supervised_index` of ``labels``, which the collators
        compute on the host) selects them without a boolean mask on the device, whose count would make the
        host wait for the GPU.
        Packed rows (``medmvl.data.packing``) give ``position_ids`` ``[b, t]`` that restart at 0 at every
        sample; ``attention_mask`` is then not used: the sample boundaries
        (:func:`~medmvl.data.packing.varlen_kwargs`) go to the attention, which attends within each sample
        (``sdpa_packed``, flash-attention varlen; ``sdpa``/``eager`` use a block-diagonal mask).

        Returns:
            ``loss`` (scalar), ``num_tokens`` (supervised targets) and, without labels, ``logits [b, t, v]``.
        """
        head = self.llm.get_output_embeddings()
        tied = None
        if labels is not None and torch.is_grad_enabled() and self.loss_impl == "chunked":
            tied = TiedGrad() if shares_tied_weight(self.llm.get_input_embeddings(), head) else None
        embeds = self.merge(input_ids, pixel_values, pixel_values_3d, tied)
        decoder = self.llm.get_decoder()
        packed: dict[str, Any] = {}
        if position_ids is not None:  # packed: sample boundaries instead of a padding mask (no cache)
            attention_mask = None
            packed = varlen_kwargs(position_ids)
        hidden = decoder(
            inputs_embeds=embeds,
            attention_mask=attention_mask,
            position_ids=position_ids,
            use_cache=False,
            **packed,
        ).last_hidden_state  # [b, t, d]
        if labels is None:
            return {"logits": head(hidden)}
        if target_index is None:
            target_index = supervised_index(labels)  # [s]; on CUDA the host waits for the mask's count
        targets = labels.flatten().index_select(0, target_index)  # [s]
        rows = hidden.flatten(0, 1).index_select(0, target_index - 1)  # [s, d]: the position before each
        softcap = getattr(self.llm.config, "final_logit_softcapping", None)
        total = lm_head_loss(
            rows,
            targets,
            head,
            impl=self.loss_impl,
            chunk_size=self.loss_chunk_size,
            softcap=softcap,
            tied=tied,
        )  # summed over the s targets; chunked: no [s, v] logits kept
        n = targets.numel()
        loss = total / max(n, 1)
        return {"loss": loss, "num_tokens": torch.full((), n, device=targets.device)}

    @torch.no_grad()
    def generate(
        self,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor,
        pixel_values: torch.Tensor | None = None,
        pixel_values_3d: torch.Tensor | None = None,
        **generate_kwargs: Any,
    ) -> torch.Tensor:
        """Generate with the LLM's own ``generate`` (KV cache) from merged embeddings.

        ``input_ids`` must be left-padded for batches. Returns only the new tokens ``[b, t_new]``.
        """
        embeds = self.merge(input_ids, pixel_values, pixel_values_3d)
        generate_kwargs.setdefault("pad_token_id", self.tokenizer.pad_token_id)
        generate_kwargs.setdefault("eos_token_id", self.tokenizer.eos_token_id)
        return self.llm.generate(inputs_embeds=embeds, attention_mask=attention_mask, **generate_kwargs)


def _complete(connector: Callable[..., nn.Module], encoder: VisionEncoder, llm_hidden: int) -> nn.Module:
    """Build a partial connector sized by the built encoder (width, grid, extra CLS tokens) and LLM."""
    kwargs: dict[str, Any] = {"in_dim": encoder.out_dim, "out_dim": llm_hidden, "grid": encoder.grid}
    extra = encoder.num_tokens - math.prod(encoder.grid)
    if extra:
        kwargs["extra_tokens"] = extra
    return connector(**kwargs)


def _partial_config(connector: Callable[..., nn.Module]) -> dict[str, Any]:
    """The ``_target_`` + keyword form of a partial connector, for saving the architecture."""
    if not isinstance(connector, functools.partial):
        raise TypeError("connector must be a partial (``_partial_: true`` in its config)")
    func = connector.func
    return {"_target_": f"{func.__module__}.{func.__qualname__}", "_partial_": True, **connector.keywords}
