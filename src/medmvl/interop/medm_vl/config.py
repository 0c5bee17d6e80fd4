"""Read MedM-VL checkpoints (``shiym2000/MedM-VL-2D-3B-en``, ``MedM-VL-CT-Chest-3B-en``) as a MedVLM.

A MedM-VL folder is ``config.json`` + safetensors (``model.safetensors`` or shards) + the LLM's tokenizer.
Its config comes in two schemas, both read here:

* **v1.0** (the released weights): ``llm_type``, ``llm_name_or_path``, ``llm_max_length``,
  ``encoder_image_{type,name_or_path,select_layer,select_feature}``, ``connector_image_{type,name}`` and
  the ``image3d`` equivalents, plus the nested architectures ``llm_config``, ``encoder_image(3d)_config``
  and ``connector_image(3d)_config`` (``connector_type``, ``connector_name``, ``image_size``/``img_size``,
  ``patch_size``, ``input_dim``, ``output_dim``) — everything needed offline.
* **current** (``lvlm_*``): the same fields prefixed ``lvlm_`` (``lvlm_llm_type``,
  ``lvlm_encoder_image_type``, ``lvlm_connector_image_type``...), without nested architectures: the LLM and
  tower configs are read from their ``*_name_or_path`` (a local folder, or ``sources`` given here).

State-dict prefixes (MedM-VL -> medmvl; ``T`` is the tower's attribute: ``encoder``/``connector`` for the
only or 2D tower, ``encoder3d``/``connector3d`` for the 3D tower next to a 2D one)::

    llm.model.*, llm.lm_head.*                       -> llm.model.*, llm.lm_head.*   (same HF causal LM)
    encoder_image.encoder.vision_model.*             -> encoder.model.vision_model.* (HF CLIP/SigLIP tower)
    encoder_image3d.encoder.vision_encoder.*         -> T.tower.*  (the 3D encoder's own mapping; the CLIP
                                                        text side language_encoder.* / text_encoder.* /
                                                        mm_*_proj / logit_scale is not used)
    connector_image(3d).connector.{0,2}.*  (mlp)     -> T.proj.{0,2}.*
    connector_image(3d).connector.{0,2}.*  (pooling) -> T.mlp.proj.{0,2}.*
    connector_image.query, .attn.in_proj_*, .attn.out_proj.*  -> connector.query, connector.attn.*

Semantics carried over: MedM-VL's ``select_feature=patch`` drops the first token and ``cls_patch`` keeps
all of them, for every tower; SigLIP has no CLS token, so MedM-VL's SigLIP ``cls_patch`` is medmvl's
``patch`` (all patches) and its SigLIP ``patch`` (dropping a real patch) has no medmvl equivalent and is
refused. ``mlp{N}x_gelu`` is ``MlpConnector(depth=N)``, ``spatial_pooling`` a 2x average pool per axis then
the MLP, ``attn_pooling`` ``(image_size // patch_size)**2`` learned queries with 8 heads. The imported model
prompts and preprocesses as MedM-VL: prompt settings ``format: medm_vl`` (:mod:`.prompt`) and encoders in
``preprocess`` mode ``medm_vl`` (:mod:`.pixels`), both saved with it by ``export.py``; the tokenizer's eos
is the template's answer-closing string and its chat template ``medmvl_vicuna.jinja`` renders the same
text (for exports and chat UIs).

A checkpoint with an ``encoder_image`` + ``attn_pooling`` and no ``encoder_image3d`` (MedM-VL-CT-Chest) also
serves ``<image3d>`` as MedM-VL does: the same SigLIP on each of 32 slices, the same pooling over all their
tokens (``SliceEncoder`` around the 2D encoder, ``connector3d: shared``). Other 2D checkpoints (an MLP
connector, whose 3D output would be 32 x n tokens) are imported 2D-only.
"""

from __future__ import annotations

import functools
import json
import logging
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from transformers import AutoConfig
from transformers.image_utils import OPENAI_CLIP_MEAN, OPENAI_CLIP_STD, PILImageResampling

from medmvl.interop.medm_vl.prompt import EOS_BY_LLM_TYPE
from medmvl.interop.medm_vl.weights import MedmvlImportError, load_weights
from medmvl.models.connectors.mlp import MlpConnector
from medmvl.models.connectors.pooling import AttnPoolConnector, SpatialPoolConnector
from medmvl.models.encoders.clip import ClipEncoder
from medmvl.models.encoders.medm_clip import MedMClipEncoder
from medmvl.models.encoders.siglip import SiglipEncoder
from medmvl.models.encoders.slices import SliceEncoder
from medmvl.models.encoders.vit3d import Vit3dEncoder, VolumeEncoder
from medmvl.models.llm.loader import load_llm
from medmvl.models.llm.tokenizer import load_tokenizer
from medmvl.models.vlm import MedVLM

log = logging.getLogger(__name__)

TEMPLATE = "medmvl_vicuna.jinja"
"""MedM-VL's prompt as a chat template (for exports and chat UIs), shipped in ``medmvl/models/llm/templates``."""
SLICES = 32
"""Slices MedM-VL resizes a CT to when a 2D tower reads it (``lvlm/model/encoder/siglip.py``)."""

ENCODERS_2D = {"siglip": SiglipEncoder, "clip": ClipEncoder}
ENCODERS_3D: dict[str, type[VolumeEncoder]] = {"m3dclip": Vit3dEncoder, "medmclip": MedMClipEncoder}
_CONFIG_JUNK = ("architectures", "transformers_version", "torch_dtype", "dtype", "auto_map", "model_type")


def is_medmvl_checkpoint(path: str | Path) -> bool:
    """True for a folder whose ``config.json`` is a MedM-VL config (either schema)."""
    file = Path(path) / "config.json"
    if not file.is_file():
        return False
    try:
        cfg = json.loads(file.read_text())
    except (OSError, ValueError):
        return False
    return isinstance(cfg, dict) and ("llm_type" in cfg or "lvlm_llm_type" in cfg)


def read_medmvl_config(path: str | Path) -> dict[str, Any]:
    """``config.json`` with both schemas folded into one: unprefixed field names (``llm_type``, ...)."""
    file = Path(path) / "config.json"
    raw = json.loads(file.read_text())
    cfg = {k.removeprefix("lvlm_"): v for k, v in raw.items()}
    if not cfg.get("llm_type"):
        raise MedmvlImportError(f"{file}: not a MedM-VL config (no llm_type / lvlm_llm_type)")
    return cfg


def medmvl_prompt_settings(path: str | Path) -> dict[str, Any]:
    """The prompt settings of an imported checkpoint: MedM-VL's prompt (``format: medm_vl``), ``llm_max_length``."""
    cfg = read_medmvl_config(path)
    return {"format": "medm_vl", "system_prompt": None, "max_length": cfg.get("llm_max_length")}


def load_medmvl(
    path: str | Path, *, dtype: str = "float32", sources: Mapping[str, str] | None = None
) -> MedVLM:
    """Build the MedVLM of a MedM-VL checkpoint folder and load its weights (strictly).

    Args:
        path: the MedM-VL folder (``config.json``, safetensors, tokenizer files).
        dtype: parameter dtype.
        sources: local folders standing in for hub ids of the ``lvlm_*`` schema: ``llm`` (config, and the
            tokenizer if the checkpoint has none), ``encoder_image``, ``encoder_image3d`` (configs).

    Raises:
        MedmvlImportError: a field medmvl cannot reproduce, or weights that do not fit.
    """
    folder = Path(path)
    cfg = read_medmvl_config(folder)
    sources = dict(sources or {})
    parts: dict[str, Any] = {}
    has_2d, has_3d = bool(cfg.get("encoder_image_type")), bool(cfg.get("encoder_image3d_type"))
    if not (has_2d or has_3d):
        raise MedmvlImportError(f"{folder}/config.json: neither encoder_image_type nor encoder_image3d_type")
    names: dict[str, tuple[str, str]] = {}  # MedM-VL role -> (encoder attribute, connector attribute)
    if has_2d:
        encoder = _encoder_2d(folder, cfg, sources)
        parts["encoder"], parts["connector"] = encoder, _connector(folder, cfg, "image", encoder)
        names["image"] = ("encoder", "connector")
        if not has_3d and cfg.get("connector_image_type") == "attn_pooling":  # MedM-VL-CT-Chest
            parts["encoder3d"] = SliceEncoder(encoder, num_slices=SLICES, hu_window=(-1000.0, 1000.0))
            parts["connector3d"] = "shared"
    if has_3d:
        encoder = _encoder_3d(folder, cfg, sources)
        role = ("encoder3d", "connector3d") if has_2d else ("encoder", "connector")
        parts[role[0]], parts[role[1]] = encoder, _connector(folder, cfg, "image3d", encoder)
        names["image3d"] = role
    # the (large) LLM last: every field above is checked before it is built
    tokenizer = _tokenizer(folder, cfg, sources)
    parts["llm"] = load_llm(tokenizer=tokenizer, dtype=dtype, config=_llm_config(folder, cfg, sources))
    model = MedVLM(**parts)
    load_weights(model, folder, names)
    return model.to(getattr(torch, dtype)).eval()


# ---- config pieces ----------------------------------------------------------------------------------------


def _tokenizer(folder: Path, cfg: dict[str, Any], sources: dict[str, str]) -> Any:
    if (folder / "tokenizer_config.json").is_file():
        source = str(folder)
    else:
        source = sources.get("llm") or cfg.get("llm_name_or_path")
        if not source:
            raise MedmvlImportError(f"{folder}: no tokenizer files and no llm_name_or_path to read one from")
    eos = EOS_BY_LLM_TYPE.get(cfg["llm_type"])
    if eos is None:
        raise MedmvlImportError(
            f"{folder}/config.json: llm_type={cfg['llm_type']!r}; MedM-VL's templates: {sorted(EOS_BY_LLM_TYPE)}"
        )
    try:
        return load_tokenizer(source, chat_template=TEMPLATE, eos_token=eos)
    except OSError as err:
        raise MedmvlImportError(
            f"{folder} has no tokenizer files and {source!r} could not be read ({err}); pass "
            "sources={'llm': <local folder with the LLM's tokenizer>}"
        ) from err


def _llm_config(folder: Path, cfg: dict[str, Any], sources: dict[str, str]) -> dict[str, Any]:
    nested = cfg.get("llm_config")
    if isinstance(nested, dict) and nested.get("model_type"):
        raw = dict(nested)
    else:
        raw = _hub_config(folder, "llm", sources.get("llm") or cfg.get("llm_name_or_path")).to_dict()
    model_type = raw["model_type"]
    out = {k: v for k, v in raw.items() if not k.startswith("_") and k not in _CONFIG_JUNK}
    return {"model_type": model_type, **out}


def _hub_config(folder: Path, part: str, source: str | None) -> Any:
    if not source:
        raise MedmvlImportError(
            f"{folder}/config.json names no {part}_name_or_path and holds no {part}_config"
        )
    try:
        return AutoConfig.from_pretrained(source)
    except (OSError, ValueError) as err:
        raise MedmvlImportError(
            f"{folder}/config.json reads the {part} architecture from {source!r}, which could not be loaded "
            f"({err}); offline, pass sources={{'{part}': <local folder with its config.json>}}"
        ) from err


def _vision_config(folder: Path, cfg: dict[str, Any], sources: dict[str, str]) -> dict[str, Any]:
    nested = cfg.get("encoder_image_config")
    if isinstance(nested, dict) and (nested.get("hidden_size") or nested.get("vision_config")):
        raw = dict(nested)
    else:
        source = sources.get("encoder_image") or cfg.get("encoder_image_name_or_path")
        raw = _hub_config(folder, "encoder_image", source).to_dict()
    if isinstance(raw.get("vision_config"), dict):  # a full CLIP/SigLIP config: its vision part
        raw = raw["vision_config"]
    return {k: v for k, v in raw.items() if not k.startswith("_") and k not in _CONFIG_JUNK}


def _encoder_2d(folder: Path, cfg: dict[str, Any], sources: dict[str, str]) -> Any:
    kind = cfg["encoder_image_type"]
    cls = ENCODERS_2D.get(kind)
    if cls is None:
        raise MedmvlImportError(
            f"{folder}/config.json: encoder_image_type={kind!r}; medmvl reads {sorted(ENCODERS_2D)} 2D towers"
        )
    feature = cfg.get("encoder_image_select_feature") or "patch"
    if cls is SiglipEncoder:
        if feature == "patch":
            raise MedmvlImportError(
                f"{folder}/config.json: encoder_image_select_feature='patch' with SigLIP drops SigLIP's first "
                "patch token in MedM-VL (it has no CLS token); medmvl has no such mode"
            )
        feature = "patch"  # MedM-VL's cls_patch keeps every token: all SigLIP patches
    vision = _vision_config(folder, cfg, sources)
    source = sources.get("encoder_image") or cfg.get("encoder_image_name_or_path")
    spec = processor_spec(kind, vision, [source, folder])
    return cls(
        None,
        config=vision,
        select_layer=int(cfg.get("encoder_image_select_layer") or -1),
        select_feature=feature,
        image_mean=tuple(spec["image_mean"]),
        image_std=tuple(spec["image_std"]),
        resample=spec["resample"],
        rescale_factor=spec["rescale_factor"],
        medm_vl=spec,
    )


_DEFAULT_STATS = {"siglip": ((0.5,) * 3, (0.5,) * 3), "clip": (OPENAI_CLIP_MEAN, OPENAI_CLIP_STD)}


def processor_spec(kind: str, vision: dict[str, Any], folders: list[str | Path | None]) -> dict[str, Any]:
    """MedM-VL's image-processor settings for a ``siglip`` / ``clip`` tower (``pixels.MedmVlImageTransform``).

    Read from the first ``preprocessor_config.json`` of ``folders`` (the tower's hub folder, as MedM-VL's
    ``*ImageProcessor.from_pretrained``, then the checkpoint); without one, the family's processor defaults
    at the tower's image size (bicubic, 1/255), with a warning.
    """
    pre: dict[str, Any] = {}
    for candidate in folders:
        file = Path(candidate) / "preprocessor_config.json" if candidate else None
        if file is not None and file.is_file():
            pre = json.loads(file.read_text())
            break
    if not pre:
        log.warning("no preprocessor_config.json in %s: MedM-VL's %s processor defaults", folders, kind)
    side = int(vision.get("image_size") or 224)
    mean, std = _DEFAULT_STATS[kind]
    resample = PILImageResampling(int(pre.get("resample", 3))).name.lower()
    spec: dict[str, Any] = {
        "processor": kind,
        "resample": resample,
        "rescale_factor": float(pre.get("rescale_factor", 1 / 255)) if pre.get("do_rescale", True) else 1.0,
        "image_mean": list(pre.get("image_mean", mean)),
        "image_std": list(pre.get("image_std", std)),
    }
    size = pre.get("size", {})
    if kind == "clip":
        crop = pre.get("crop_size", side)
        crop = [crop, crop] if isinstance(crop, int) else [crop["height"], crop["width"]]
        spec.update(
            size=int(size.get("shortest_edge", side)) if isinstance(size, dict) else int(size), crop=crop
        )
    else:
        spec["size"] = (
            [size.get("height", side), size.get("width", side)] if isinstance(size, dict) else [side] * 2
        )
    return spec


def _encoder_3d(folder: Path, cfg: dict[str, Any], sources: dict[str, str]) -> VolumeEncoder:
    kind = cfg["encoder_image3d_type"]
    cls = ENCODERS_3D.get(kind)
    if cls is None:
        raise MedmvlImportError(
            f"{folder}/config.json: encoder_image3d_type={kind!r}; medmvl reads {sorted(ENCODERS_3D)} 3D towers"
        )
    raw = cfg.get("encoder_image3d_config")
    where = f"{folder}/config.json encoder_image3d_config"
    if not isinstance(raw, dict):
        source = sources.get("encoder_image3d") or cfg.get("encoder_image3d_name_or_path")
        file = Path(source) / "config.json" if source else None
        if file is None or not file.is_file():
            raise MedmvlImportError(
                f"{folder}/config.json holds no encoder_image3d_config and {source!r} is not a local folder "
                "with its config.json; pass sources={'encoder_image3d': <folder>}"
            )
        raw, where = json.loads(file.read_text()), str(file)
    arch = cls.config_from_checkpoint(cls.__new__(cls), raw, where)  # the family's own config reader
    return cls(
        None,
        config=arch,
        select_layer=int(cfg.get("encoder_image3d_select_layer") or -1),
        select_feature=cfg.get("encoder_image3d_select_feature") or "patch",
        medm_vl={"family": kind},
    )


def _connector(folder: Path, cfg: dict[str, Any], role: str, encoder: Any) -> functools.partial:
    kind = cfg.get(f"connector_{role}_type")
    name = cfg.get(f"connector_{role}_name") or ""
    nested = cfg.get(f"connector_{role}_config") or {}
    kind = kind or nested.get("connector_type")
    name = name or nested.get("connector_name") or ""
    where = f"{folder}/config.json connector_{role}"
    match = re.fullmatch(r"mlp(\d+)x_(\w+)", name)
    if not match or match.group(2) != "gelu":
        raise MedmvlImportError(f"{where}_name={name!r}: medmvl's MLP is 'mlp<depth>x_gelu'")
    depth = int(match.group(1))
    if kind == "mlp":
        return functools.partial(MlpConnector, depth=depth)
    if kind == "spatial_pooling" and role == "image3d":
        return functools.partial(SpatialPoolConnector, factor=2, depth=depth)
    if kind == "attn_pooling" and encoder.spatial_dims == 2:
        side = encoder.preprocess["image_size"][0] // encoder.model.config.patch_size
        return functools.partial(AttnPoolConnector, num_queries=side * side, num_heads=8, depth=depth)
    raise MedmvlImportError(
        f"{where}_type={kind!r} on a {encoder.spatial_dims}D tower: medmvl reads mlp (2D, 3D), "
        "spatial_pooling (3D) and attn_pooling (2D) connectors"
    )
