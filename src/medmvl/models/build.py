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
    ``cfg.init_from`` (optional) names a saved medmvl folder to start from instead.
    """
    if cfg.get("init_from"):
        from medmvl.interop.serialization import from_pretrained

        log.info("initialising from %s", cfg.init_from)
        return from_pretrained(cfg.init_from)
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
