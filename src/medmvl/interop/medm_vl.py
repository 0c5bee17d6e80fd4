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
the MLP, ``attn_pooling`` ``(image_size // patch_size)**2`` learned queries with 8 heads. MedM-VL's prompt
(the Vicuna-style template of TinyLLaVA, for every LLM) becomes the tokenizer's chat template
(``medmvl_vicuna.jinja``), so imported models answer as trained.

Not reproduced: MedM-VL code versions that run a 2D ``encoder_image`` slice by slice over a volume and
average the pooled slices; imported, such a checkpoint is the 2D model it holds (exact on 2D images).
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
from safetensors import safe_open
from transformers import AutoConfig

from medmvl.models.connectors.mlp import MlpConnector
from medmvl.models.connectors.pooling import AttnPoolConnector, SpatialPoolConnector
from medmvl.models.encoders.checkpoints import weight_files
from medmvl.models.encoders.clip import ClipEncoder
from medmvl.models.encoders.medm_clip import MedMClipEncoder
from medmvl.models.encoders.siglip import SiglipEncoder
from medmvl.models.encoders.vit3d import Vit3dEncoder, VolumeEncoder
from medmvl.models.llm.loader import load_llm
from medmvl.models.llm.tokenizer import load_tokenizer
from medmvl.models.vlm import MedVLM

log = logging.getLogger(__name__)

TEMPLATE = "medmvl_vicuna.jinja"
"""MedM-VL's prompt, shipped in ``medmvl/models/templates``."""

ENCODERS_2D = {"siglip": SiglipEncoder, "clip": ClipEncoder}
ENCODERS_3D: dict[str, type[VolumeEncoder]] = {"m3dclip": Vit3dEncoder, "medmclip": MedMClipEncoder}
_CONFIG_JUNK = ("architectures", "transformers_version", "torch_dtype", "dtype", "auto_map", "model_type")


class MedmvlImportError(ValueError):
    """A MedM-VL checkpoint medmvl cannot read exactly; the message names the field and the reason."""


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
    """The prompt settings of an imported checkpoint: its chat template and ``llm_max_length``."""
    cfg = read_medmvl_config(path)
    return {"format": "chat", "system_prompt": None, "max_length": cfg.get("llm_max_length")}


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
    if has_3d:
        encoder = _encoder_3d(folder, cfg, sources)
        role = ("encoder3d", "connector3d") if has_2d else ("encoder", "connector")
        parts[role[0]], parts[role[1]] = encoder, _connector(folder, cfg, "image3d", encoder)
        names["image3d"] = role
    # the (large) LLM last: every field above is checked before it is built
    tokenizer = _tokenizer(folder, cfg, sources)
    parts["llm"] = load_llm(tokenizer=tokenizer, dtype=dtype, config=_llm_config(folder, cfg, sources))
    model = MedVLM(**parts)
    _load_weights(model, folder, names)
    return model.to(getattr(torch, dtype)).eval()


# ---- config pieces ----------------------------------------------------------------------------------------


def _tokenizer(folder: Path, cfg: dict[str, Any], sources: dict[str, str]) -> Any:
    if (folder / "tokenizer_config.json").is_file():
        source = str(folder)
    else:
        source = sources.get("llm") or cfg.get("llm_name_or_path")
        if not source:
            raise MedmvlImportError(f"{folder}: no tokenizer files and no llm_name_or_path to read one from")
    try:
        return load_tokenizer(source, chat_template=TEMPLATE)
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
    mean, std = _image_stats(sources.get("encoder_image"), folder)
    return cls(
        None,
        config=_vision_config(folder, cfg, sources),
        select_layer=int(cfg.get("encoder_image_select_layer") or -1),
        select_feature=feature,
        image_mean=mean,
        image_std=std,
    )


def _image_stats(*folders: str | Path | None) -> tuple[Any, Any]:
    """Mean/std of the first ``preprocessor_config.json`` found, else ``(None, None)`` (family default)."""
    for folder in folders:
        file = Path(folder) / "preprocessor_config.json" if folder else None
        if file is not None and file.is_file():
            pre = json.loads(file.read_text())
            if "image_mean" in pre and "image_std" in pre:
                return tuple(pre["image_mean"]), tuple(pre["image_std"])
    return None, None


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


# ---- weights ----------------------------------------------------------------------------------------------


def _load_weights(model: MedVLM, folder: Path, names: dict[str, tuple[str, str]]) -> None:
    state: dict[str, torch.Tensor] = {}
    ignored: list[str] = []
    tower3d: dict[str, torch.Tensor] = {}
    unknown: list[str] = []
    for file in weight_files(folder):
        with safe_open(str(file), framework="pt") as f:
            for key in f.keys():
                target = _rename(key, model, names)
                if target == "3d":
                    tower3d[key.removeprefix("encoder_image3d.encoder.vision_encoder.")] = f.get_tensor(key)
                elif target == "ignore":
                    ignored.append(key)
                elif target is None:
                    unknown.append(key)
                else:
                    state[target] = f.get_tensor(key)
    if unknown:
        raise MedmvlImportError(f"{folder}: unexpected MedM-VL weights {sorted(unknown)[:8]}")
    if tower3d:
        encoder_name = names["image3d"][0]
        mapped, dropped = getattr(model, encoder_name).map_checkpoint(tower3d)
        state.update({f"{encoder_name}.tower.{k}": v for k, v in mapped.items()})
        ignored += [f"encoder_image3d.encoder.vision_encoder.{k}" for k in dropped]
    _fit_vocabulary(model, state)
    missing, unexpected = model.load_state_dict(state, strict=False)
    tied = {"llm.lm_head.weight"} if model.llm.config.tie_word_embeddings else set()
    missing = [k for k in missing if k not in tied]
    if missing or unexpected:
        raise MedmvlImportError(
            f"{folder}: the weights do not fit the architecture in config.json: missing {sorted(missing)[:8]}, "
            f"unexpected {sorted(unexpected)[:8]}"
        )
    if ignored:
        log.info(
            "%s: %d MedM-VL tensors not used (CLIP text side, unused blocks): %s",
            folder,
            len(ignored),
            ignored[:4],
        )


def _fit_vocabulary(model: MedVLM, state: dict[str, torch.Tensor]) -> None:
    """Pad the checkpoint's embedding rows when medmvl's image tokens grew the vocabulary past them.

    The new rows (``<image>``, ``<image3d>``) are the mean of the trained rows (HF's ``mean_resizing``):
    their input embedding is never used (features replace it), their output logit stays ordinary.
    """
    current = model.state_dict()
    for key in [k for k in state if k.startswith("llm.")]:
        have, want = state[key], current.get(key)
        if (
            want is None
            or have.ndim != 2
            or have.shape[1:] != want.shape[1:]
            or have.shape[0] >= want.shape[0]
        ):
            continue
        extra = have.float().mean(0, keepdim=True).to(have.dtype).expand(want.shape[0] - have.shape[0], -1)
        state[key] = torch.cat([have, extra])  # [v_model, d]
        log.info("%s: %d rows added for medmvl's image tokens", key, want.shape[0] - have.shape[0])


def _rename(key: str, model: MedVLM, names: dict[str, tuple[str, str]]) -> str | None:
    """The medmvl name of a MedM-VL tensor; ``"3d"`` for a 3D tower tensor, ``"ignore"``, or ``None``."""
    if key.startswith("llm."):
        return key
    if key.startswith("encoder_image.encoder.") and "image" in names:
        return f"{names['image'][0]}.model." + key.removeprefix("encoder_image.encoder.")
    if key.startswith("encoder_image3d.encoder.") and "image3d" in names:
        return "3d" if key.startswith("encoder_image3d.encoder.vision_encoder.") else "ignore"
    for role in ("image", "image3d"):
        prefix = f"connector_{role}."
        if not key.startswith(prefix) or role not in names:
            continue
        connector_name = names[role][1]
        rest = key.removeprefix(prefix)
        connector = getattr(model, connector_name)
        if rest.startswith("connector."):
            mlp = "proj." if isinstance(connector, MlpConnector) else "mlp.proj."
            return f"{connector_name}.{mlp}{rest.removeprefix('connector.')}"
        if isinstance(connector, AttnPoolConnector) and (rest == "query" or rest.startswith("attn.")):
            return f"{connector_name}.{rest}"
    return None
