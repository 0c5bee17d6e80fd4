"""Compose a :class:`MedVLM` from the ``encoder``, ``connector`` and ``llm`` config nodes (and the optional
3D tower ``encoder3d`` + ``connector3d``)."""

from __future__ import annotations

import logging
from typing import Any

from hydra.utils import instantiate
from omegaconf import DictConfig

from medmvl.models.vlm import MedVLM

log = logging.getLogger(__name__)


def build_model(cfg: DictConfig) -> MedVLM:
    """Instantiate the parts and let MedVLM size the connectors from the built encoders and LLM.

    ``cfg.encoder3d`` / ``cfg.connector3d`` (optional, together) add a 3D tower next to a 2D ``encoder``.
    ``cfg.init_from`` (optional) names a trained model to start from instead: a saved model folder, a
    Lightning checkpoint, a run folder or a MedM-VL folder (:mod:`medmvl.inference.loading`); LoRA
    adapters it holds are merged, so the new stage starts from plain weights.
    """
    if cfg.get("init_from"):
        from medmvl.inference.loading import load_model

        loaded = load_model(cfg.init_from, merge_lora=True)
        log.info("initialising from %s (%s)", loaded.source, loaded.kind)
        return loaded.model.train()
    encoder = instantiate(cfg.encoder)
    llm = instantiate(cfg.llm)
    connector = instantiate(cfg.connector)
    tower3d: dict[str, Any] = {}
    if cfg.get("encoder3d") is not None or cfg.get("connector3d") is not None:
        if cfg.get("encoder3d") is None or cfg.get("connector3d") is None:
            raise ValueError(
                "encoder3d and connector3d come together: choose both (e.g. encoder3d=m3d_clip "
                "connector3d=spatial_pool) or neither"
            )
        tower3d = {"encoder3d": instantiate(cfg.encoder3d), "connector3d": instantiate(cfg.connector3d)}
    return MedVLM(encoder=encoder, connector=connector, llm=llm, **tower3d)
