"""Export a CLIP/SigLIP + ``mlp`` MedVLM as a transformers ``LlavaForConditionalGeneration`` folder.

Why: the Llava layout is what the serving stacks (vLLM, TGI, SGLang) and ``transformers`` load with no
custom code. Our 2D model is a Llava model: a CLIP/SigLIP tower read at ``select_layer``, a 2-layer GELU
projector, a causal LM, image features scattered onto ``<image>`` placeholders. The mapping:

================================  ==============================================================
medmvl                            Llava (transformers v5 names)
================================  ==============================================================
``encoder.model.*``               ``model.vision_tower.*`` (``vision_config`` = the tower's config)
``encoder.select_layer``          ``vision_feature_layer``
``select_feature`` patch / cls    ``vision_feature_select_strategy`` ``default`` (CLIP: drop CLS) /
                                  ``full`` (CLIP with CLS, and SigLIP, which has no CLS token)
``connector.proj.0`` / ``.2``     ``model.multi_modal_projector.linear_1`` / ``linear_2``, GELU
                                  (depth 1: ``linear_2`` is the identity, ``projector_hidden_act``
                                  ``linear``)
``llm.<base model>.*``            ``model.language_model.*``;  ``llm.lm_head`` -> ``lm_head``
``<image>`` id, ``num_tokens``    ``image_token_index``, ``image_seq_length``
================================  ==============================================================

plus a ``LlavaProcessor``: the encoder's own image processor (``CLIPImageProcessor`` /
``SiglipImageProcessor`` from :func:`medmvl.data.images.hf_image_processor`, the very processor
``ImageTransform`` runs in training and inference, so the pixels are the same), the tokenizer with
``<image>``, ``patch_size``, ``num_additional_image_tokens`` and the LLM's chat template wrapped to accept
the processor's ``[{"type": "image"}, {"type": "text"}]`` messages (each image becomes ``<image>\\n`` before
the text, as in medmvl's prompts).

Models the format cannot hold are refused before anything is written (:func:`llava_refusal`).
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from torch import nn

from medmvl.data.images import hf_image_processor
from medmvl.data.schema import IMAGE_TOKEN
from medmvl.models.connectors.mlp import MlpConnector
from medmvl.models.encoders.clip import ClipEncoder
from medmvl.models.encoders.siglip import SiglipEncoder
from medmvl.models.vlm import MedVLM

log = logging.getLogger(__name__)

CONTENT_LIST_PROLOGUE = """{#- medmvl: processor messages carry content lists; flatten them to text with one <image> line
    per image before the text, the form this model was trained on -#}
{%- set _flat = namespace(messages=[]) -%}
{%- for _m in messages -%}
    {%- if _m['content'] is string -%}
        {%- set _flat.messages = _flat.messages + [_m] -%}
    {%- else -%}
        {%- set _parts = namespace(images='', text='') -%}
        {%- for _c in _m['content'] -%}
            {%- if _c['type'] == 'image' -%}
                {%- set _parts.images = _parts.images + '<image>\\n' -%}
            {%- elif _c['type'] == 'text' -%}
                {%- set _parts.text = _parts.text + _c['text'] -%}
            {%- endif -%}
        {%- endfor -%}
        {%- set _flat.messages = _flat.messages + [{'role': _m['role'], 'content': _parts.images + _parts.text}] -%}
    {%- endif -%}
{%- endfor -%}
{%- set messages = _flat.messages -%}
"""


class LlavaExportError(ValueError):
    """The model cannot be written in the Llava format; the message says why and what would work."""


def llava_refusal(model: nn.Module) -> str | None:
    """Why ``model`` cannot be exported to the Llava layout, or ``None`` when it can."""
    from peft import PeftModel

    adapters = [n for n in ("encoder", "connector", "llm") if isinstance(getattr(model, n, None), PeftModel)]
    if adapters:
        return f"LoRA adapters of {adapters} are not merged: export with lora=merge"
    if getattr(model, "encoder3d", None) is not None:
        return "the model has a 3D tower (encoder3d); Llava holds one 2D vision tower"
    encoder, connector, llm = model.encoder, model.connector, model.llm
    if not isinstance(encoder, (ClipEncoder, SiglipEncoder)) or encoder.spatial_dims != 2:
        return (
            f"the encoder is {type(encoder).__name__} (spatial_dims={getattr(encoder, 'spatial_dims', '?')}); "
            "Llava holds a 2D CLIP or SigLIP vision tower (encoder=clip|siglip|siglip_small|tiny2d); 3D and "
            "slice-wise encoders have no Llava equivalent"
        )
    if not isinstance(connector, MlpConnector):
        return (
            f"the connector is {type(connector).__name__}; Llava's projector is an MLP (connector=mlp), "
            "pooling connectors (spatial_pool, attn_pool) change the token count and have no Llava equivalent"
        )
    if not isinstance(connector.norm, nn.Identity):
        return "the mlp connector has input_norm=true (a LayerNorm before the MLP), which Llava's projector lacks"
    if len(connector.proj) not in (1, 3):
        return f"the mlp connector has depth {(len(connector.proj) + 1) // 2}; Llava's projector holds depth 1 or 2"
    if encoder.preprocess["channels"] != 3:
        return f"the encoder takes {encoder.preprocess['channels']}-channel images; Llava's image processors give RGB"
    if "hf_processor" not in encoder.preprocess:
        return "the encoder has no HF image processor settings (preprocess['hf_processor'])"
    size = encoder.preprocess["image_size"]
    if size[0] != size[1]:
        return f"the encoder's image size {size} is not square"
    prefix = getattr(llm, "base_model_prefix", "")
    if (
        not prefix
        or not hasattr(llm, prefix)
        or llm.get_output_embeddings() is not getattr(llm, "lm_head", None)
    ):
        return f"the LLM {type(llm).__name__} is not a '<base model> + lm_head' causal LM that Llava can wrap"
    return None


def llava_config(model: MedVLM) -> Any:
    """The ``LlavaConfig`` of ``model`` (see the module docstring for the mapping)."""
    from transformers import LlavaConfig

    encoder, connector = model.encoder, model.connector
    depth1 = len(connector.proj) == 1
    if isinstance(encoder, ClipEncoder):
        strategy = "default" if encoder.select_feature == "patch" else "full"
    else:  # SigLIP has no CLS token: every token is a patch, none may be dropped
        strategy = "full"
    return LlavaConfig(
        vision_config=encoder.model.config.to_dict(),
        text_config=model.llm.config.to_dict(),
        image_token_index=model.image_token_id,
        image_seq_length=connector.num_tokens,
        projector_hidden_act="linear" if depth1 else "gelu",
        vision_feature_layer=encoder.select_layer,
        vision_feature_select_strategy=strategy,
        multimodal_projector_bias=True,
        tie_word_embeddings=bool(model.llm.config.tie_word_embeddings),
    )


def llava_state_dict(model: MedVLM) -> dict[str, torch.Tensor]:
    """``model``'s weights under Llava's names (transformers v5: ``model.vision_tower.*``, ...)."""
    llm = model.llm
    base = getattr(llm, llm.base_model_prefix)
    out: dict[str, torch.Tensor] = {}
    out.update({f"model.vision_tower.{k}": v for k, v in model.encoder.model.state_dict().items()})
    proj = model.connector.proj
    out["model.multi_modal_projector.linear_1.weight"] = proj[0].weight
    out["model.multi_modal_projector.linear_1.bias"] = proj[0].bias
    if len(proj) == 3:
        out["model.multi_modal_projector.linear_2.weight"] = proj[2].weight
        out["model.multi_modal_projector.linear_2.bias"] = proj[2].bias
    else:  # depth 1: an exact identity after a linear "activation"
        d = proj[0].out_features
        out["model.multi_modal_projector.linear_2.weight"] = torch.eye(d, dtype=proj[0].weight.dtype)
        out["model.multi_modal_projector.linear_2.bias"] = torch.zeros(d, dtype=proj[0].weight.dtype)
    out.update({f"model.language_model.{k}": v for k, v in base.state_dict().items()})
    out["lm_head.weight"] = llm.lm_head.weight
    return {k: v.detach() for k, v in out.items()}


def build_processor(model: MedVLM, *, system_prompt: str | None = None) -> Any:
    """The ``LlavaProcessor`` that prepares images and prompts the way medmvl does for ``model``."""
    from transformers import LlavaProcessor

    encoder = model.encoder
    image_processor = hf_image_processor(encoder.preprocess)  # what ImageTransform runs: the same pixels
    if isinstance(encoder, ClipEncoder):
        extra = 1  # CLS
        strategy = "default" if encoder.select_feature == "patch" else "full"
    else:
        extra, strategy = 0, "full"
    template = model.tokenizer.chat_template
    if system_prompt:
        template = _default_system(system_prompt) + template
    return LlavaProcessor(
        image_processor=image_processor,
        tokenizer=model.tokenizer,
        patch_size=encoder.model.config.patch_size,
        vision_feature_select_strategy=strategy,
        chat_template=CONTENT_LIST_PROLOGUE + template,
        image_token=IMAGE_TOKEN,
        num_additional_image_tokens=extra,
    )


def export_llava(model: MedVLM, out_dir: str | Path, *, prompt: Mapping[str, Any] | None = None) -> Path:
    """Write ``model`` as a Llava folder loadable by ``AutoModelForImageTextToText`` / ``AutoProcessor``.

    Args:
        model: a merged (no LoRA adapters) CLIP/SigLIP + ``mlp`` MedVLM.
        out_dir: target folder (created).
        prompt: the prompt settings the model trained with; a ``system_prompt`` becomes the chat
            template's default system message.

    Raises:
        LlavaExportError: the model cannot be expressed in the Llava layout (nothing is written).
    """
    from transformers import LlavaForConditionalGeneration

    reason = llava_refusal(model)
    if reason:
        raise LlavaExportError(f"cannot export to the HF Llava format: {reason}")
    prompt = dict(prompt or {})
    if prompt.get("format") == "plain":
        log.warning("the model was trained with data.format=plain; Llava serving will use the chat template")
    config = llava_config(model)
    processor = build_processor(model, system_prompt=prompt.get("system_prompt"))
    with torch.device("meta"):
        hf = LlavaForConditionalGeneration(config)
    missing, unexpected = hf.load_state_dict(llava_state_dict(model), strict=False, assign=True)
    tied = {"lm_head.weight"} if config.tie_word_embeddings else set()
    if set(missing) - tied or unexpected:
        raise LlavaExportError(
            f"weight mapping incomplete: missing {sorted(missing)[:5]}, unexpected {unexpected[:5]}"
        )
    if config.tie_word_embeddings:
        hf.tie_weights()
    hf.generation_config.eos_token_id = model.tokenizer.eos_token_id
    hf.generation_config.pad_token_id = model.tokenizer.pad_token_id
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    hf.save_pretrained(out, safe_serialization=True)
    processor.save_pretrained(out)
    return out


def _default_system(system_prompt: str) -> str:
    literal = system_prompt.replace("\\", "\\\\").replace("'", "\\'").replace("\n", "\\n")
    return (
        "{%- if not messages or messages[0]['role'] != 'system' -%}"
        f"{{%- set messages = [{{'role': 'system', 'content': '{literal}'}}] + messages -%}}"
        "{%- endif -%}"
    )
