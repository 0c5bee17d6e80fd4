"""``python train.py ...`` / ``medmvl-train ...``: compose the config, check the data, build the parts, fit, save.

Errors come first and short: a required value left unset stops before anything is built (exit 2); the
tokenizer is built and every annotation file checked (schema, media paths, token lengths) before the
encoder and the LLM load, and a data error prints its problems (file, sample index, id, field, reason) as
the last lines, without a traceback (exit 1; ``HYDRA_FULL_ERROR=1`` shows it); a model part that cannot be
loaded names its id and the ``<key>.name_or_path=<folder>`` override; an unknown key (``data.batchsize=2``)
adds the node's valid keys and the closest one to Hydra's message. torch, Lightning and transformers are
imported only when a run starts, so ``--help`` and ``--cfg job`` return in about a second.
"""

from __future__ import annotations

import difflib
import logging
import os
import signal
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any

import hydra
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf

if TYPE_CHECKING:
    import lightning as L
    from lightning.pytorch.utilities.exceptions import SIGTERMException

log = logging.getLogger("medmvl.train")

CONF_DIR = Path(__file__).resolve().parent.parent / "conf"


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
    """Run one training job described by a composed ``train.yaml`` config; returns its metrics.

    Raises:
        medmvl.data.schema.AnnotationError: the data has problems (found before any weights load).
        medmvl.models.build.ModelSourceError: a part's ``name_or_path`` could not be loaded.
    """
    from lightning.pytorch.utilities.exceptions import SIGTERMException

    from medmvl.models.build import build_part, random_weight_parts
    from medmvl.training.data_check import check_data
    from medmvl.training.stages import random_weight_warnings

    tokenizer = None
    if not cfg.get("init_from"):  # the tokenizer first: the data is checked before any weights load
        tokenizer = build_part(cfg, "llm.tokenizer")
        check_data(cfg.data, tokenizer)
    module, datamodule, trainer = _fit_parts(cfg, tokenizer)
    default_lr = cfg.optimizer.get("lr") if cfg.get("optimizer") else None
    for message in random_weight_warnings(module.stage, random_weight_parts(cfg), default_lr):
        log.warning("%s", message)  # last before training, so it is not scrolled away by the model build
    try:
        ckpt_path = _resolve_ckpt(cfg.get("ckpt_path"), Path(cfg.paths.output_dir))
        trainer.fit(module, datamodule=datamodule, ckpt_path=ckpt_path, weights_only=True)
    except SIGTERMException as stop:  # SIGTERM/SIGUSR1: PreemptionCheckpoint wrote last.ckpt; no model export
        return _preempted(trainer, stop)
    metrics = {k: float(v) for k, v in trainer.callback_metrics.items()}
    if not trainer.fast_dev_run:
        metrics.update(_after_fit(cfg, module, datamodule, trainer))
    return metrics


def _fit_parts(cfg: DictConfig, tokenizer: Any) -> tuple[Any, Any, L.Trainer]:
    """The LightningModule (around the built model), the data module and the trainer of ``cfg``."""
    import lightning as L

    from medmvl.models.build import build_model
    from medmvl.training.module import MedVLMModule

    L.seed_everything(cfg.seed, workers=True)  # neither the tokenizer nor the check draws random numbers
    model = build_model(cfg, tokenizer=tokenizer)
    # plain dicts/lists (not DictConfig) in the data module's hparams keep checkpoints weights_only-loadable
    datamodule = instantiate(cfg.data, _convert_="all")(**model.data_parts())
    module = MedVLMModule(
        model,
        optimizer=instantiate(cfg.optimizer),
        scheduler=instantiate(cfg.scheduler) if cfg.get("scheduler") else None,
        stage=OmegaConf.to_container(cfg.stage, resolve=True),
        nonfinite_loss=cfg.get("nonfinite_loss", "raise"),
        compile=bool(cfg.get("compile", False)),
    )
    resolved = resolve_trainer_precision(cfg, width=model.llm.config.hidden_size)
    trainer: L.Trainer = instantiate(
        cfg.trainer,
        callbacks=_instantiate_all(cfg.get("callbacks")),
        logger=_instantiate_all(cfg.get("logger")),
    )
    hparams = OmegaConf.to_container(cfg, resolve=True)
    if resolved.requested != resolved.precision:  # what auto measured, next to what it chose
        hparams["precision_auto"] = resolved.measurements
    for logger in trainer.loggers:  # every logger, e.g. logger=[csv,wandb]
        logger.log_hyperparams(hparams)
    return module, datamodule, trainer


def resolve_trainer_precision(cfg: DictConfig, width: int | None = None) -> Any:
    """Replace ``trainer.precision=auto`` in ``cfg`` by the precision this machine trains fastest in
    (:func:`medmvl.training.precision.resolve_precision`; ``width``: the probed block's, the LLM's hidden
    size) and log what was measured; other values stay. Returns the ``Resolved`` record."""
    from medmvl.training.precision import resolve_precision

    strategy = cfg.trainer.get("strategy")
    policy = strategy.get("param_dtype") if isinstance(strategy, DictConfig) else None  # trainer=fsdp
    resolved = resolve_precision(
        cfg.trainer.get("precision"), cfg.trainer.get("accelerator"), width=width, policy_dtype=policy
    )
    if resolved.requested != resolved.precision:
        cfg.trainer.precision = resolved.precision
        log.info("%s", resolved.describe())
    return resolved


def _after_fit(cfg: DictConfig, module: Any, datamodule: Any, trainer: L.Trainer) -> dict[str, Any]:
    """Save the trained model (``save_model``) and run ``post_train``; returns what they report."""
    from medmvl.interop.serialization import save_pretrained
    from medmvl.models.build import build_model
    from medmvl.training.distributed import unsharded_copy
    from medmvl.training.stages import merge_lora

    if not (cfg.get("save_model") or cfg.get("post_train")):
        return {}
    output_dir, metrics = Path(cfg.paths.output_dir), {}
    # trainer=fsdp: gather the sharded weights into one plain model on rank 0 (every rank takes part)
    model = unsharded_copy(
        module.model, rebuild=lambda: _with_stage(build_model(cfg), module.stage), rank=trainer.global_rank
    )
    if not trainer.is_global_zero:
        return metrics
    if cfg.get("save_model"):
        hp = datamodule.hparams
        prompt = {k: hp.get(k) for k in ("format", "system_prompt", "max_length")}
        merge_lora(model)
        model_dir = save_pretrained(model, output_dir / "model", prompt=prompt)
        log.info("saved model to %s", model_dir)
        metrics["model_dir"] = str(model_dir)
    if cfg.get("post_train"):
        metrics.update(instantiate(cfg.post_train)(model=model, datamodule=datamodule, output_dir=output_dir))
    return metrics


def _preempted(trainer: L.Trainer, stop: SIGTERMException) -> dict[str, Any]:
    """``{"stopped_by_signal": signum, "checkpoint": path}`` of a run a signal stopped (re-raise if unsaved)."""
    from medmvl.training.preemption import PreemptionCheckpoint

    stopper = next((c for c in trainer.callbacks if isinstance(c, PreemptionCheckpoint)), None)
    if stopper is None or stopper.saved_to is None:
        raise stop
    return {"stopped_by_signal": int(stopper.received or signal.SIGTERM), "checkpoint": stopper.saved_to}


def _with_stage(model: Any, stage: dict[str, Any]) -> Any:
    """``model`` with the training stage applied (LoRA wrappers), so a trained state dict loads into it."""
    from medmvl.training.stages import apply_stage

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


# at most this many of a data error's problems are printed (medmvl-data check lists every one)
SHOWN_PROBLEMS = 20


def short_error(err: BaseException) -> str | None:
    """The few lines to print for a data error or a model part that could not be loaded, else None."""
    from medmvl.data.schema import AnnotationError
    from medmvl.models.build import ModelSourceError

    cause: BaseException | None = err
    while cause is not None and not isinstance(cause, (AnnotationError, ModelSourceError)):
        cause = cause.__cause__
    if isinstance(cause, ModelSourceError):
        return f"train.py: {cause}"
    if not isinstance(cause, AnnotationError):
        return None
    problems = [p for p in cause.problems if getattr(p, "severity", "error") == "error"]
    if not problems:
        return f"train.py: data error: {cause}"
    shown = problems[:SHOWN_PROBLEMS]
    count = f"{len(problems)} problem(s)" + (
        f", the first {len(shown)}" if len(shown) < len(problems) else ""
    )
    return "\n".join(
        [
            f"train.py: the data has {count} (nothing was trained; data.on_error=skip drops such samples, "
            "medmvl-data check <file> lists every problem):",
            *(f"  {p}" for p in shown),
        ]
    )


_task_started = False  # set once the Hydra task runs: a failure before it is Hydra's (composition)


@hydra.main(version_base="1.3", config_path="../conf", config_name="train")
def _hydra_main(cfg: DictConfig) -> None:
    """The Hydra task: check the required settings, train, turn known errors into short messages."""
    global _task_started
    _task_started = True
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    problem = missing_settings(cfg)
    if problem:  # before anything is built or downloaded
        print(problem, file=sys.stderr)
        sys.exit(2)
    try:
        metrics = train(cfg)
    except Exception as err:
        message = None if os.environ.get("HYDRA_FULL_ERROR") == "1" else short_error(err)
        if message is None:
            raise
        print(message, file=sys.stderr)
        sys.exit(1)
    if "stopped_by_signal" in metrics:  # preempted: not finished, so not 0 (a job chain must not go on)
        sys.exit(128 + metrics["stopped_by_signal"])


def main() -> None:
    """Entry point (console script ``medmvl-train`` and ``train.py``): the Hydra main, and after a
    composition error about an unknown key, that node's valid keys and the closest one."""
    try:
        _hydra_main()
    except SystemExit as stop:
        if stop.code not in (None, 0) and not _task_started:
            hint = unknown_key_hint(sys.argv[1:])
            if hint:
                print(hint, file=sys.stderr)
        raise


def unknown_key_hint(argv: list[str]) -> str | None:
    """For command-line overrides that set a key the config does not have: which key, the closest valid
    one, and the valid keys of its node (last line); None when every key exists (or composition fails for
    another reason)."""
    from hydra import compose, initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra
    from hydra.errors import ConfigCompositionException

    overrides = [a for a in argv if "=" in a and not a.startswith("-")]
    unknown: str | None = None
    for _ in range(len(overrides) + 1):  # drop failing overrides until the rest composes
        GlobalHydra.instance().clear()
        try:
            with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
                cfg = compose("train", overrides=overrides)
            break
        except ConfigCompositionException as err:
            key = getattr(err.__cause__, "full_key", None)
            bad = [o for o in overrides if o.lstrip("+~").split("=", 1)[0] == key]
            if not key or not bad or key.startswith("hydra."):
                return None
            unknown = unknown or key
            overrides = [o for o in overrides if o not in bad]
        except Exception:  # noqa: BLE001 - a hint is best effort; Hydra already said what failed
            return None
    else:
        return None
    GlobalHydra.instance().clear()
    if unknown is None:
        return None
    parent, _, leaf = unknown.rpartition(".")
    node = OmegaConf.select(cfg, parent) if parent else cfg
    if not isinstance(node, DictConfig):
        return None
    keys = [str(k) for k in node.keys() if not str(k).startswith("_")]  # not _target_, _partial_
    close = difflib.get_close_matches(leaf, keys, n=1, cutoff=0.5)
    name = parent or "the config"
    first = f"{name} has no key {leaf!r}"
    if close:
        first += f": did you mean {(parent + '.' if parent else '') + close[0]}?"
    first += f" (a new key on purpose: +{unknown}=...)"
    return "\n".join([first, f"valid keys of {name}: {', '.join(keys)}"])


if __name__ == "__main__":
    main()
