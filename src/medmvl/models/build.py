"""Compose a :class:`MedVLM` from the ``encoder``, ``connector`` and ``llm`` config nodes."""

from __future__ import annotations

import logging

from hydra.utils import instantiate
from omegaconf import DictConfig

from medmvl.models.vlm import MedVLM

log = logging.getLogger(__name__)


def build_model(cfg: DictConfig) -> MedVLM:
    """Instantiate the three parts and let MedVLM size the connector from the built encoder and LLM.

    ``cfg.init_from`` (optional) names a saved medmvl folder to start from instead.
    """
    if cfg.get("init_from"):
        from medmvl.models.io import from_pretrained

        log.info("initialising from %s", cfg.init_from)
        return from_pretrained(cfg.init_from)
    encoder = instantiate(cfg.encoder)
    llm = instantiate(cfg.llm)
    connector = instantiate(cfg.connector)
    return MedVLM(encoder=encoder, connector=connector, llm=llm)
