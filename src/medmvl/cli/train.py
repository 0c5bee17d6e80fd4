"""``python train.py ...`` / ``medmvl-train ...``: compose the config, build the parts, fit, save."""

from __future__ import annotations

import logging
import os
import signal
import sys
from pathlib import Path
from typing import Any

import hydra
import lightning as L
from hydra.utils import instantiate
from lightning.pytorch.utilities.exceptions import SIGTERMException
from omegaconf import DictConfig, OmegaConf

from medmvl.interop.serialization import save_pretrained
from medmvl.models.build import build_model
from medmvl.training.distributed import unsharded_copy
from medmvl.training.module import MedVLMModule
from medmvl.training.preemption import PreemptionCheckpoint
from medmvl.training.stages import apply_stage, merge_lora

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
    # plain dicts/lists (not DictConfig) in the data module's hparams keep checkpoints weights_only-loadable
    datamodule = instantiate(cfg.data, _convert_="all")(
        tokenizer=model.tokenizer,
        image_token_counts=model.image_token_counts,
        image_config=model.image_config,  # None without a 2D tower
        volume_config=model.volume_config,  # None without a 3D tower
    )
    module = MedVLMModule(
        model,
        optimizer=instantiate(cfg.optimizer),
        scheduler=instantiate(cfg.scheduler) if cfg.get("scheduler") else None,
        stage=OmegaConf.to_container(cfg.stage, resolve=True),
        nonfinite_loss=cfg.get("nonfinite_loss", "raise"),
        compile=bool(cfg.get("compile", False)),
    )
    trainer: L.Trainer = instantiate(
        cfg.trainer,
        callbacks=_instantiate_all(cfg.get("callbacks")),
        logger=_instantiate_all(cfg.get("logger")),
    )
    for logger in trainer.loggers:  # every logger, e.g. logger=[csv,wandb]
        logger.log_hyperparams(OmegaConf.to_container(cfg, resolve=True))
    ckpt_path = _resolve_ckpt(cfg.get("ckpt_path"), output_dir)
    try:
        trainer.fit(module, datamodule=datamodule, ckpt_path=ckpt_path, weights_only=True)
    except SIGTERMException as stop:  # SIGTERM/SIGUSR1: PreemptionCheckpoint wrote last.ckpt; no model export
        return _preempted(trainer, stop)
    metrics = {k: float(v) for k, v in trainer.callback_metrics.items()}
    if (cfg.get("save_model") or cfg.get("post_train")) and not trainer.fast_dev_run:
        # trainer=fsdp: gather the sharded weights into one plain model on rank 0 (every rank takes part)
        model = unsharded_copy(
            module.model,
            rebuild=lambda: _with_stage(build_model(cfg), module.stage),
            rank=trainer.global_rank,
        )
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


def _preempted(trainer: L.Trainer, stop: SIGTERMException) -> dict[str, Any]:
    """``{"stopped_by_signal": signum, "checkpoint": path}`` of a run a signal stopped (re-raise if unsaved)."""
    stopper = next((c for c in trainer.callbacks if isinstance(c, PreemptionCheckpoint)), None)
    if stopper is None or stopper.saved_to is None:
        raise stop
    return {"stopped_by_signal": int(stopper.received or signal.SIGTERM), "checkpoint": stopper.saved_to}


def _with_stage(model: Any, stage: dict[str, Any]) -> Any:
    """``model`` with the training stage applied (LoRA wrappers), so a trained state dict loads into it."""
    apply_stage(model, stage)
    return model


# what to say for a required value the command line did not give (``???`` in the composed config)
HINTS = {
    "data.annotations": "data.annotations=<train.json> (MedM-VL / LLaVA annotation JSON; relative image paths "
    "resolve against data.image_dir=<folder>, volumes against data.image3d_dir=<folder>)",
    "init_from": "init_from=<model folder> (a run's <run>/model, a Lightning checkpoint or a MedM-VL folder)",
}


def _required_keys(node: Any, path: str = "") -> list[str]:
    """Keys still ``???`` or ``${medmvl.required:...}`` (an experiment's required command-line value)."""
    if isinstance(node, dict):
        return [k for key, value in node.items() for k in _required_keys(value, f"{path}{key}.")]
    unset = isinstance(node, str) and (node == "???" or node.startswith("${medmvl.required:"))
    return [path[:-1]] if unset else []


def missing_settings(cfg: DictConfig) -> str | None:
    """A message naming every required value ``cfg`` leaves unset (``???``), and how to go on; else None."""
    unresolved = OmegaConf.to_container(cfg, resolve=False)
    missing = sorted(_required_keys(unresolved))
    if not missing:
        return None
    lines = [f"  {key}: give {HINTS.get(key, key + '=<value>')}" for key in missing]
    return "\n".join(
        ["train.py: missing required setting(s):", *lines]
        + ["Or run the embedded offline demo: make train (python train.py experiment=demo)."]
    )


@hydra.main(version_base="1.3", config_path="../conf", config_name="train")
def main(cfg: DictConfig) -> None:
    """Hydra entry point (console script ``medmvl-train`` and ``train.py``)."""
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    problem = missing_settings(cfg)
    if problem:  # before anything is built or downloaded
        print(problem, file=sys.stderr)
        sys.exit(2)
    metrics = train(cfg)
    if "stopped_by_signal" in metrics:  # preempted: not finished, so not 0 (a job chain must not go on)
        sys.exit(128 + metrics["stopped_by_signal"])


if __name__ == "__main__":
    main()
