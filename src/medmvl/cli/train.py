"""``python train.py ...`` / ``medmvl-train ...``: compose the config, build the parts, fit, save."""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Any

import hydra
import lightning as L
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf

from medmvl.models.build import build_model
from medmvl.models.io import save_pretrained
from medmvl.training.module import MedVLMModule
from medmvl.training.stages import merge_lora

log = logging.getLogger("medmvl.train")


def _instantiate_all(node: DictConfig | None) -> list[Any]:
    """Instantiate every ``_target_`` child of a group node (callbacks, loggers); ``null`` entries skip."""
    if not node:
        return []
    return [instantiate(c) for c in node.values() if c is not None and "_target_" in c]


def _resolve_ckpt(ckpt_path: str | None, output_dir: Path) -> str | None:
    if ckpt_path != "last":
        return ckpt_path
    last = output_dir / "checkpoints" / "last.ckpt"
    if not last.exists():
        log.warning(
            "ckpt_path=last but %s does not exist: starting from scratch (resume a run by giving its "
            "folder: hydra.run.dir=<run folder> ckpt_path=last)",
            last,
        )
        return None
    log.info("resuming from %s", last)
    return str(last)


def train(cfg: DictConfig) -> dict[str, Any]:
    """Run one training job described by a composed ``train.yaml`` config; returns its metrics."""
    L.seed_everything(cfg.seed, workers=True)
    output_dir = Path(cfg.paths.output_dir)
    model = build_model(cfg)
    datamodule = instantiate(cfg.data)(
        tokenizer=model.tokenizer,
        image_token_counts=model.image_token_counts,
        image_config=model.encoder.preprocess,
    )
    module = MedVLMModule(
        model,
        optimizer=instantiate(cfg.optimizer),
        scheduler=instantiate(cfg.scheduler) if cfg.get("scheduler") else None,
        stage=OmegaConf.to_container(cfg.stage, resolve=True),
    )
    trainer: L.Trainer = instantiate(
        cfg.trainer,
        callbacks=_instantiate_all(cfg.get("callbacks")),
        logger=_instantiate_all(cfg.get("logger")),
    )
    if trainer.logger is not None:
        trainer.logger.log_hyperparams(OmegaConf.to_container(cfg, resolve=True))
    trainer.fit(module, datamodule=datamodule, ckpt_path=_resolve_ckpt(cfg.get("ckpt_path"), output_dir))
    metrics = {k: float(v) for k, v in trainer.callback_metrics.items()}
    if cfg.get("save_model") and trainer.is_global_zero and not trainer.fast_dev_run:
        hp = datamodule.hparams
        prompt = {k: hp.get(k) for k in ("format", "system_prompt", "max_length")}
        merge_lora(model)
        model_dir = save_pretrained(model, output_dir / "model", prompt=prompt)
        log.info("saved model to %s", model_dir)
        metrics["model_dir"] = str(model_dir)
    if cfg.get("post_train") and trainer.is_global_zero and not trainer.fast_dev_run:
        metrics.update(instantiate(cfg.post_train)(model=model, datamodule=datamodule, output_dir=output_dir))
    return metrics


@hydra.main(version_base="1.3", config_path="../conf", config_name="train")
def main(cfg: DictConfig) -> None:
    """Hydra entry point (console script ``medmvl-train`` and ``train.py``)."""
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    train(cfg)


if __name__ == "__main__":
    main()
