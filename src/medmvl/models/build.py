"""Compose a :class:`MedVLM` from the ``encoder``, ``connector`` and ``llm`` config nodes (and the optional
3D tower ``encoder3d`` + ``connector3d``).

A part whose weights cannot be found (an offline hub id, a missing folder) fails as
:class:`ModelSourceError`, naming the config key, the id and the override that points it at a local folder;
:func:`random_weight_parts` says which parts a config builds with random weights (no checkpoint at all).
"""

from __future__ import annotations

import logging
import re
from typing import Any

from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf

from medmvl.interop.safe_weights import PickleWeightsError
from medmvl.models.vlm import MedVLM

log = logging.getLogger(__name__)


class ModelSourceError(OSError):
    """A model part's weights or tokenizer could not be loaded from its ``name_or_path``; the message names
    the config key, the id and the ``<key>.name_or_path=<folder>`` override."""


def build_model(cfg: DictConfig, tokenizer: Any | None = None) -> MedVLM:
    """Instantiate the parts and let MedVLM size the connectors from the built encoders and LLM.

    ``cfg.encoder3d`` / ``cfg.connector3d`` (optional, together) add a 3D tower next to a 2D ``encoder``.
    ``cfg.init_from`` (optional) names a trained model to start from instead: a saved model folder, a
    Lightning checkpoint, a run folder or a MedM-VL folder (:mod:`medmvl.inference.loading`); LoRA
    adapters it holds are merged, so the new stage starts from plain weights. ``tokenizer``: the built
    ``llm.tokenizer`` (the training CLI builds it first, to check the data); ``None`` builds it here.

    Raises:
        ModelSourceError: A part's ``name_or_path`` could not be loaded (e.g. a hub id offline).
    """
    if cfg.get("init_from"):
        from medmvl.inference.loading import load_model

        loaded = load_model(cfg.init_from, merge_lora=True)
        log.info("initialising from %s (%s)", loaded.source, loaded.kind)
        return loaded.model.train()
    encoder = build_part(cfg, "encoder")
    llm = build_part(cfg, "llm", **({"tokenizer": tokenizer} if tokenizer is not None else {}))
    connector = instantiate(cfg.connector)
    tower3d: dict[str, Any] = {}
    if cfg.get("encoder3d") is not None or cfg.get("connector3d") is not None:
        if cfg.get("encoder3d") is None or cfg.get("connector3d") is None:
            raise ValueError(
                "encoder3d and connector3d come together: choose both (e.g. encoder3d=m3d_clip "
                "connector3d=spatial_pool) or neither"
            )
        tower3d = {"encoder3d": build_part(cfg, "encoder3d"), "connector3d": instantiate(cfg.connector3d)}
    return MedVLM(encoder=encoder, connector=connector, llm=llm, **tower3d)


def build_part(cfg: DictConfig, key: str, **kwargs: Any) -> Any:
    """``instantiate(cfg.<key>)`` (``key`` dotted, e.g. ``llm.tokenizer``); a load failure of a
    ``name_or_path`` becomes a :class:`ModelSourceError` naming ``key``, the id and the override."""
    node = OmegaConf.select(cfg, key)
    try:
        return instantiate(node, **kwargs)
    except Exception as err:  # Hydra wraps the part's own error in an InstantiationException
        cause = _os_error(err)
        if cause is None or isinstance(cause, PickleWeightsError):  # that one says how to convert already
            raise
        sources = _sources(cfg, key)
        named = [(k, v) for k, v in sources if v and v in str(cause)] or [(k, v) for k, v in sources if v]
        if not named:
            raise
        override, model_id = named[0]
        raise ModelSourceError(
            f"{key}: could not load {model_id!r}: {str(cause).strip()}\n"
            f"Point it at a local folder holding that model: {override}=<folder> (download it where the hub "
            f"is reachable, e.g. huggingface-cli download {model_id} --local-dir <folder>)"
        ) from err


def _os_error(err: BaseException) -> OSError | None:
    """The first ``OSError`` in ``err``'s cause chain (a hub or file failure), else None."""
    seen: set[int] = set()
    while err is not None and id(err) not in seen:
        if isinstance(err, OSError):
            return err
        seen.add(id(err))
        err = err.__cause__ or err.__context__
    return None


def _sources(cfg: DictConfig, key: str) -> list[tuple[str, str | None]]:
    """``(override key, value)`` of every ``name_or_path`` under ``cfg.<key>``; a value interpolated from
    another key (the tokenizer's ``${..name_or_path}``) is named by that key, the one to override."""
    node = OmegaConf.select(cfg, key)
    raw = OmegaConf.to_container(node, resolve=False)
    out: list[tuple[str, str | None]] = []

    def walk(value: Any, path: list[str]) -> None:
        if not isinstance(value, dict):
            return
        for name, child in value.items():
            if name == "name_or_path":
                out.append((_override_key(child, path), OmegaConf.select(cfg, ".".join([*path, name]))))
            walk(child, [*path, str(name)])

    walk(raw, key.split("."))
    return out


def _override_key(raw: Any, path: list[str]) -> str:
    """The key a user sets for the ``name_or_path`` at ``path``: itself, or the key it interpolates
    (``${..name_or_path}`` inside ``llm.tokenizer`` -> ``llm.name_or_path``)."""
    match = re.fullmatch(r"\$\{(\.*)([\w.]+)\}", raw) if isinstance(raw, str) else None
    if match is None:
        return ".".join([*path, "name_or_path"])
    dots, ref = len(match[1]), match[2]
    base = (
        path[: len(path) - dots + 1] if dots else []
    )  # ${.x}: this node, ${..x}: its parent, ${x}: absolute
    return ".".join([*base, ref])


def random_weight_parts(cfg: DictConfig) -> dict[str, str]:
    """The parts ``build_model(cfg)`` builds with random weights, each with the reason, e.g.
    ``{"encoder": "encoder.name_or_path is null: built from its config"}``; ``{}`` under ``init_from``.

    A part is random when its node has ``name_or_path: null`` (and no ``gguf_file``), or is a from-scratch
    ``PatchEncoder``; a slice-wise tower follows its 2D ``slice_encoder``. Other sources (the demos'
    caption-pre-trained encoders) bring weights of their own. The connectors are new in every build.
    """
    if cfg.get("init_from"):
        return {}
    out = {}
    for name in ("encoder", "encoder3d", "llm"):
        node = cfg.get(name)
        why = _random_reason(node, name) if node is not None else None
        if why:
            out[name] = why
    return out


def _random_reason(node: DictConfig, key: str) -> str | None:
    if "name_or_path" in node:
        if node.get("name_or_path") or node.get("gguf_file"):
            return None
        return f"{key}.name_or_path is null: built from its config"
    if str(node.get("_target_", "")).endswith(".PatchEncoder"):
        return f"{key} is a from-scratch PatchEncoder"
    inner = node.get("slice_encoder")  # SliceEncoder: a 2D tower run slice by slice
    return _random_reason(inner, f"{key}.slice_encoder") if inner is not None else None
